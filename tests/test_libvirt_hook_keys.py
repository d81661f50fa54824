"""infra/host/qemu-hook on a key host (docs/host-keys.md): with ``key_file`` in host.conf it signs
t=…,ed25519=… with the host's Ed25519 key, accepted by the real events handler; an open or bad key file
is refused and sends nothing."""
from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.test_libvirt_hook import Api, Host

POLICY = """volumes:
  - {volume_id: hvol-1, vm_id: vm-h, host_id: hv-key, storage_array: S1, size_mb: 10, attach_on: preboot, detach_on: shutdown}
"""


def _key_file(tmp_path, key, fmt=serialization.PrivateFormat.OpenSSH, mode=0o600):
    p = tmp_path / "host.key"
    p.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    p.chmod(mode)
    return p


def test_key_file__signs_ed25519_over_the_body(tmp_path):
    key = Ed25519PrivateKey.generate()
    h = Host(tmp_path, key_file=str(_key_file(tmp_path, key, serialization.PrivateFormat.PKCS8)))
    h.secret_file.unlink()  # a key host has no secret file at all
    r = h.hook("vm-1", "prepare", "begin", "-")
    assert r.code == 0 and r.types == ["vm.created", "vm.preboot"], r
    for sent in r.sent:
        t, sig = sent["headers"]["X-VVG-Signature"].split(",")
        assert sig.startswith("ed25519=")
        key.public_key().verify(base64.b64decode(sig[8:]), f"{t[2:]}.".encode() + sent["body"].encode())


def test_key_file__open_or_bad_key_is_refused_and_nothing_is_sent(tmp_path):
    key = Ed25519PrivateKey.generate()
    h = Host(tmp_path, key_file=str(_key_file(tmp_path, key, mode=0o644)))
    r = h.hook("vm-1", "prepare", "begin", "-")
    assert r.code == 0 and r.types == [] and "chmod 600" in r.err
    (tmp_path / "host.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nzzzz\n-----END PRIVATE KEY-----\n")
    (tmp_path / "host.key").chmod(0o600)
    r = h.hook("vm-1", "prepare", "begin", "-")
    assert r.code == 0 and r.types == [] and "not an unencrypted Ed25519" in r.err and "zzzz" not in r.err


def test_key_file__the_webhook_accepts_the_hooks_signed_events(webhook, vvg, tmp_path):
    from infra.bootstrap import ensure_instance
    from tests.conftest import attached_volume_ids

    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "host.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    assert vvg("host", "enroll", "hv-key", "--mac", "02:00:00:00:0c:01", "--serial", "SN-HV", "--public-key",
               str(pub)).code == 0
    ensure_instance(webhook.settings, "vm-h")
    (tmp_path / "p.yaml").write_text(POLICY)
    assert vvg("policy", "apply", str(tmp_path / "p.yaml")).code == 0
    api = Api(lambda raw, headers: webhook.raw(raw, headers))
    try:
        h = Host(tmp_path, url=api.url, host_id="hv-key", key_file=str(_key_file(tmp_path, key)))
        assert h.hook("vm-h", "prepare", "begin", "-", dry_run=False).code == 0
        assert "hvol-1" in attached_volume_ids()
        assert h.hook("vm-h", "stopped", "end", "-", dry_run=False).code == 0
        assert "hvol-1" not in attached_volume_ids()
    finally:
        api.close()
    assert len(api.requests) == 3 and all(json.loads(raw)["vm_id"] == "vm-h" for _, raw in api.requests)
