"""Ed25519 key hosts (docs/host-keys.md): enrol by public key, sign t=…,ed25519=…, each host only its own
scheme, rotation kills the old key at once, nothing stored lets anyone sign as a key host; `vvg host list`."""
from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import serve_in_thread
from tests.statecheck import snapshot
from vvolguard.domain import hostkeys
from vvolguard.domain.secrets import sign

KEY_POLICY = """volumes:
  - {volume_id: kvol-1, vm_id: vm-k, host_id: key-1, storage_array: S1, size_mb: 10, attach_on: preboot, detach_on: shutdown}
  - {volume_id: kvol-2, vm_id: vm-k, host_id: key-1, storage_array: S1, size_mb: 10, attach_on: request, detach_on: shutdown, password: open-sesame-1}
"""


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def pub_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pub_ssh(key: Ed25519PrivateKey, comment: str = "root@hv-7") -> bytes:
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + b" " + comment.encode() + b"\n"


def priv_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def priv_ssh(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())


def write(tmp_path, name: str, data: bytes, mode: int = 0o600):
    p = tmp_path / name
    p.write_bytes(data)
    p.chmod(mode)
    return str(p)


def send_key(webhook, key, type_: str, vm_id: str = "vm-k", host_id: str = "key-1", t: int | None = None, **fields):
    body = {"event_id": fields.pop("event_id", None) or webhook.event_id(), "type": type_, "vm_id": vm_id, **fields}
    raw = json.dumps(body).encode()
    hdr = {"content-type": "application/json", "x-vvg-host": host_id,
           "x-vvg-signature": hostkeys.sign_ed25519(key, int(time.time()) if t is None else t, raw)}
    return webhook.raw(raw, hdr)


@pytest.fixture
def keyhost(webhook, vvg, tmp_path):
    """A key host key-1 enrolled by its public key, owning vm-k (with an instance); yields (webhook, key)."""
    from infra.bootstrap import ensure_instance

    key = new_key()
    ensure_instance(webhook.settings, "vm-k")
    pol = tmp_path / "k.yaml"
    pol.write_text(KEY_POLICY)
    assert vvg("policy", "apply", str(pol)).code == 0
    r = vvg("host", "enroll", "key-1", "--mac", "02:00:00:00:07:01", "--serial", "SN-K1", "--hardware", "rack 7",
            "--public-key", write(tmp_path, "key-1.pub", pub_ssh(key)))
    assert r.code == 0, r
    return webhook, key


# ---- pure


def test_fingerprint__matches_ssh_keygen_format_and_both_encodings_agree():
    key = new_key()
    a = hostkeys.parse_public_key(pub_pem(key))
    b = hostkeys.parse_public_key(pub_ssh(key))
    fp = hostkeys.fingerprint(a)
    assert fp == hostkeys.fingerprint(b) and fp.startswith("SHA256:") and not fp.endswith("=") and len(fp) == 50


def test_fingerprint__equals_ssh_keygen_when_available(tmp_path):
    import shutil
    import subprocess

    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen not installed")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    out = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True).stdout
    key = hostkeys.parse_public_key((tmp_path / "k.pub").read_bytes())
    assert out.split()[1] == hostkeys.fingerprint(key)
    priv = hostkeys.load_private_key((tmp_path / "k").read_bytes())
    assert hostkeys.fingerprint(priv.public_key()) == hostkeys.fingerprint(key)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x", "could not be read"),
    (b"ssh-ed25519 AAAA!!!", "could not be read"),
    (b"hello", "PEM"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "could not be read"),
    (b"A" * 20000, "over"),
])
def test_parse_public_key__refuses_garbage_without_echoing_it(data, message):
    with pytest.raises(hostkeys.HostKeyError) as e:
        hostkeys.parse_public_key(data)
    assert message in str(e.value) and "AAAA!!!" not in str(e.value)


def test_parse_public_key__refuses_a_private_key_and_other_algorithms():
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(hostkeys.HostKeyError, match="private key"):
        hostkeys.parse_public_key(priv_pem(new_key()))
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(hostkeys.HostKeyError, match="Ed25519"):
        hostkeys.parse_public_key(p256)


def test_signature_encoding__non_canonical_or_short_base64_is_refused():
    key = new_key()
    v = hostkeys.sign_ed25519(key, 100, b"{}")
    b64 = v.split("ed25519=")[1]
    assert hostkeys.decode_signature(b64) is not None
    assert hostkeys.decode_signature(b64[:-3] + "B==") is None or b64[-3] == "B"  # non-canonical last bits
    assert hostkeys.decode_signature(base64.b64encode(b"x" * 63).decode()) is None


# ---- CLI enrolment


def test_enroll__stores_only_the_public_key_and_answers_its_fingerprint(aws, vvg, tmp_path):
    from vvolguard.adapters.audit import AuditLog
    from vvolguard.adapters.models import HostItem

    key = new_key()
    r = vvg("host", "enroll", "key-1", "--mac", "02-00-00-00-07-01", "--serial", "SN-K1", "--hardware", "rack 7",
            "--public-key", write(tmp_path, "k.pem", pub_pem(key)))
    assert r.code == 0, r
    out = r.json()
    assert out == {"host_id": "key-1", "auth": "ed25519", "fingerprint": hostkeys.fingerprint(key.public_key())}
    item = HostItem.get("key-1")
    assert item.secret_enc is None and item.auth == "ed25519" and item.hw_mac == "02:00:00:00:07:01"
    assert item.key_binding == hostkeys.binding(out["fingerprint"], "02:00:00:00:07:01", "SN-K1", "rack 7")
    raw_priv = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    stored = json.dumps(item.attribute_values, default=str)
    assert "secret" not in out and base64.b64encode(raw_priv).decode() not in stored and raw_priv.hex() not in stored
    rec = next(r for r in AuditLog(aws).recent(limit=10) if r.action == "host_enroll")
    assert rec.detail["fingerprint"] == out["fingerprint"] and rec.detail["binding"] == item.key_binding


def test_enroll__a_bad_key_file_is_refused_and_enrolls_nothing(aws, vvg, tmp_path):
    from vvolguard.adapters.audit import AuditLog
    from vvolguard.adapters.models import HostItem

    key = new_key()
    for data, message in ((b"not a key", "PEM"), (priv_pem(key), "private key"), (b"x" * 17000, "over")):
        path = write(tmp_path, "bad", data, 0o644)
        r = vvg("host", "enroll", "key-1", "--mac", "02:00:00:00:07:01", "--serial", "SN-K1", "--public-key", path)
        assert r.code != 0 and message in r.err and r.out == "", r
        assert "PRIVATE" not in r.err
    r = vvg("host", "enroll", "key-1", "--mac", "02:00:00:00:07:01", "--serial", "SN-K1", "--public-key",
            str(tmp_path / "missing"))
    assert r.code != 0 and "cannot read" in r.err
    r = vvg("host", "enroll", "key-1", "--mac", "not-a-mac", "--serial", "SN-K1", "--public-key",
            write(tmp_path, "ok.pub", pub_ssh(key)))
    assert r.code != 0 and "--mac" in r.err
    assert list(HostItem.scan()) == [] and list(AuditLog(aws).recent(limit=5)) == []


def test_list__json_lines_with_auth_status_and_last_seen(keyhost, vvg):
    webhook, key = keyhost
    assert vvg("host", "revoke", "host-1").code == 0
    status, body = send_key(webhook, key, "vm.created")
    assert status == 200, body
    r = vvg("host", "list")
    assert r.code == 0, r
    rows = {row["host_id"]: row for row in map(json.loads, r.out.splitlines())}
    assert rows["host-1"] == {"host_id": "host-1", "status": "revoked", "auth": "hmac", "last_seen": None}
    assert rows["key-1"]["auth"] == "ed25519" and rows["key-1"]["status"] == "active"
    assert rows["key-1"]["last_seen"] and rows["key-1"]["last_seen"].endswith("Z")


# ---- the webhook


def test_key_host__attaches_with_ed25519_and_each_host_only_its_own_scheme(keyhost):
    from tests.conftest import attached_volume_ids

    webhook, key = keyhost
    status, body = send_key(webhook, key, "vm.preboot")
    assert status == 200 and body["decisions"][0]["outcome"] == "done", body
    assert "kvol-1" in attached_volume_ids()
    before = snapshot()
    # v1= from the key host (whatever secret it tries), ed25519= from the secret host: bad_signature
    raw = json.dumps({"event_id": "x-1", "type": "vm.shutdown", "vm_id": "vm-k"}).encode()
    for hdr in ({"x-vvg-host": "key-1", "x-vvg-signature": sign("anything", int(time.time()), raw)},
                {"x-vvg-host": "host-1", "x-vvg-signature": hostkeys.sign_ed25519(key, int(time.time()), raw)},
                {"x-vvg-host": "host-1", "x-vvg-signature": hostkeys.sign_ed25519(new_key(), int(time.time()), raw)}):
        status, body = webhook.raw(raw, {"content-type": "application/json", **hdr})
        assert (status, body["error"]["code"]) == (401, "bad_signature"), body
    assert "kvol-1" in attached_volume_ids()  # nothing detached
    # another key, a stale one, a malformed one
    for sig, code in ((hostkeys.sign_ed25519(new_key(), int(time.time()), raw), "bad_signature"),
                      (hostkeys.sign_ed25519(key, int(time.time()) - 1000, raw), "stale_signature"),
                      ("t=1,ed25519=abc", "bad_signature"),
                      (hostkeys.sign_ed25519(key, int(time.time()), raw).replace("=", "", 1)[:-2], "bad_signature")):
        status, body = webhook.raw(raw, {"content-type": "application/json", "x-vvg-host": "key-1",
                                         "x-vvg-signature": sig})
        assert (status, body["error"]["code"]) == (401, code), (sig, body)
    # a body signed for another body
    sig = hostkeys.sign_ed25519(key, int(time.time()), raw + b" ")
    status, body = webhook.raw(raw, {"content-type": "application/json", "x-vvg-host": "key-1", "x-vvg-signature": sig})
    assert status == 401
    assert snapshot() == before  # nothing written, no event_id used up
    # the secret host still works unchanged
    status, body = webhook.send("vm.preboot", "vm-1")
    assert status == 200 and body["decisions"][0]["outcome"] == "done", body


def test_rotate__old_key_gets_401_at_once_even_replayed_and_warm(keyhost, vvg, tmp_path):
    from vvolguard.adapters.models import HostItem

    webhook, key = keyhost
    status, body = send_key(webhook, key, "vm.created", event_id="e-rot")
    assert status == 200
    new = new_key()
    r = vvg("host", "rotate", "key-1", "--public-key", write(tmp_path, "new.pem", pub_pem(new)))
    assert r.code == 0 and r.json()["fingerprint"] == hostkeys.fingerprint(new.public_key()), r
    # the container still caches the old key: the claim's re-check and the fresh read refuse it
    status, body = send_key(webhook, key, "vm.created", event_id="e-new")
    assert status == 401 and body["error"]["code"] in ("bad_signature", "unknown_host"), body
    status, body = send_key(webhook, new, "vm.preboot")
    assert status == 200 and body["decisions"][0]["outcome"] == "done", body
    assert int(HostItem.get("key-1").secret_version) == 2


def test_rotate__a_replay_with_the_old_key_gets_401_not_the_stored_answer(keyhost, vvg, tmp_path):
    webhook, key = keyhost
    assert send_key(webhook, key, "vm.created", event_id="e-rot")[0] == 200
    assert vvg("host", "rotate", "key-1", "--public-key", write(tmp_path, "new.pem", pub_pem(new_key()))).code == 0
    status, body = send_key(webhook, key, "vm.created", event_id="e-rot")
    assert status == 401, body


def test_rotate__key_host_without_key_and_secret_host_with_key_are_errors_changing_nothing(keyhost, vvg, tmp_path):
    from vvolguard.adapters.models import HostItem

    webhook, key = keyhost
    before = {h.host_id: h.attribute_values.copy() for h in HostItem.scan()}
    path = write(tmp_path, "n.pub", pub_ssh(new_key()))
    for argv, message in ((("host", "rotate", "key-1"), "--public-key"),
                          (("host", "rotate", "host-1", "--public-key", path), "secret"),
                          (("host", "rotate", "key-1", "--public-key", write(tmp_path, "same.pub", pub_ssh(key))), "already"),
                          (("host", "rotate", "nope-1", "--public-key", path), "not enrolled")):
        r = vvg(*argv)
        assert r.code != 0 and message in r.err and r.out == "", r
    assert {h.host_id: h.attribute_values for h in HostItem.scan()} == before
    status, body = send_key(webhook, key, "vm.created")
    assert status == 200


def test_event_send__signs_with_a_key_file_and_refuses_an_open_or_bad_one(keyhost, vvg, tmp_path, monkeypatch):
    """`vvg event send --key` against the in-process handler, through a tiny HTTP server."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    webhook, key = keyhost

    class H(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            status, body = webhook.raw(raw, {k.lower(): v for k, v in self.headers.items()})
            out = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    serve_in_thread(srv)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        for path in (write(tmp_path, "k.pem", priv_pem(key)), write(tmp_path, "id_ed25519", priv_ssh(key))):
            r = vvg("event", "send", "vm.created", "--vm", "vm-k", "--host", "key-1", "--key", path, "--url", url)
            assert r.code == 0, r
        open_key = write(tmp_path, "open.pem", priv_pem(key), 0o644)
        r = vvg("event", "send", "vm.created", "--vm", "vm-k", "--host", "key-1", "--key", open_key, "--url", url)
        assert r.code != 0 and "chmod 600" in r.err and r.out == ""
        bad = write(tmp_path, "bad.pem", b"-----BEGIN PRIVATE KEY-----\nzzzz\n-----END PRIVATE KEY-----\n")
        r = vvg("event", "send", "vm.created", "--vm", "vm-k", "--host", "key-1", "--key", bad, "--url", url)
        assert r.code == 2 and "could not be read" in r.err and "zzzz" not in r.err
        other = write(tmp_path, "other.pem", priv_pem(new_key()))
        r = vvg("event", "send", "vm.created", "--vm", "vm-k", "--host", "key-1", "--key", other, "--url", url)
        assert r.code == 1 and "bad_signature" in r.err
    finally:
        srv.shutdown()


def test_nothing_stored_lets_anyone_sign_as_a_key_host(keyhost):
    """Every table item, read raw: no private key bytes, and the public key cannot produce a signature."""
    import boto3

    webhook, key = keyhost
    send_key(webhook, key, "vm.preboot")
    raw_priv = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    needles = [raw_priv.hex(), base64.b64encode(raw_priv).decode(), base64.b64encode(raw_priv).decode().rstrip("=")]
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    s = webhook.settings
    dump = ""
    for table in (s.state_table, s.hosts_table, s.users_table, s.events_table, s.audit_table):
        dump += json.dumps(ddb.scan(TableName=table)["Items"])
    assert not any(n in dump for n in needles)
    host = ddb.get_item(TableName=s.hosts_table, Key={"host_id": {"S": "key-1"}})["Item"]
    assert "secret_enc" not in host and set(host) >= {"public_key", "fingerprint", "auth"}


def test_signature_pattern__the_auth_copy_matches_the_domain_one():
    from vvolguard.services import auth

    assert auth.ED25519_SIG_RE.pattern == hostkeys.ED25519_SIG_RE.pattern
    assert auth.ED25519_SIG_RE.match(hostkeys.sign_ed25519(new_key(), 1764220500, b"{}"))


def test_key_host__a_warm_preboot_costs_three_dynamodb_round_trips_and_no_kms(keyhost):
    """The public key comes from the cached host item and is re-checked in the claim: no extra round trip."""
    from collections import Counter

    from vvolguard.adapters import aws

    webhook, key = keyhost
    assert send_key(webhook, key, "vm.preboot")[0] == 200  # cold: creates the volumes, caches the host
    assert send_key(webhook, key, "vm.shutdown")[0] == 200
    seen: Counter = Counter()

    def count(model, **_):
        seen[(model.service_model.service_name, model.name)] += 1

    aws.add_hook("before-call", count)
    try:
        status, body = send_key(webhook, key, "vm.preboot")
    finally:
        aws.remove_hook("before-call", count)
    assert status == 200 and body["decisions"][0]["outcome"] == "done", body
    ddb = {op: n for (svc, op), n in seen.items() if svc == "dynamodb"}
    assert sum(ddb.values()) == 3 and ddb == {"Query": 1, "TransactWriteItems": 2}, seen
    assert not [op for (svc, op) in seen if svc == "kms"]
