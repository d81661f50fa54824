"""The VVGKEY1 format (domain/keyvolume.py), `vvg key build`, and the guest's reader under busybox sh
against a real LUKS2 container (docs/key-volume.md)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from vvolguard.domain import keyvolume as kv

ROOT = Path(__file__).resolve().parent.parent
READER = ROOT / "infra" / "guest" / "vvg-keyread"
ENROLL = ROOT / "infra" / "guest" / "vvg-luks-enroll"
BUSYBOX = shutil.which("busybox")
CRYPTSETUP = shutil.which("cryptsetup")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (.ci/run installs it)")
needs_cryptsetup = pytest.mark.skipif(CRYPTSETUP is None, reason="cryptsetup is not installed (.ci/run installs it)")
FAST_LUKS = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def E(name: str, data: bytes, kind: str | None = None) -> kv.Entry:
    return kv.Entry(name, kind or kv.default_kind(name), data)


# ---------------------------------------------------------------- the format


def test_build__header_magic_json_padding_and_luks_at_4096():
    image, header = kv.build("vm-1", "vvol-1", [E("lic", b"L" * 5000, "license"), E("luks", b"k" * 64)],
                             "2026-01-01T00:00:00Z")
    assert image[:8] == b"VVGKEY1\n"
    text = image[8:4096].rstrip(b"\0")
    obj = json.loads(text)
    assert list(obj) == ["format", "vm_id", "volume_id", "created_at", "entries"]
    assert obj["format"] == 1 and obj["vm_id"] == "vm-1" and obj["volume_id"] == "vvol-1"
    assert [e["name"] for e in obj["entries"]] == ["luks", "lic"]  # luks first, always at 4096
    luks, lic = obj["entries"]
    assert luks == {"name": "luks", "kind": "luks-key", "offset": 4096, "size": 64,
                    "sha256": hashlib.sha256(b"k" * 64).hexdigest()}
    assert lic["offset"] == 8192 and lic["offset"] % 4096 == 0 and lic["kind"] == "license"
    assert image[4096:4160] == b"k" * 64 and image[8192:8192 + 5000] == b"L" * 5000
    assert len(image) == 8192 + 8192 and set(image[8:4096][len(text):]) == {0}
    assert [e.public() for e in header.entries] == [{k: v for k, v in e.items() if k != "offset"} for e in obj["entries"]]


def test_parse_and_read__round_trip_and_checks():
    image, _ = kv.build("vm-1", "vvol-1", [E("luks", b"\x00\x01" * 32), E("c", b"cert", "certificate")], "t")
    assert kv.read_entry(image, "luks", "vm-1") == b"\x00\x01" * 32
    assert kv.read_entry(image, "c") == b"cert"
    with pytest.raises(kv.KeyVolumeError, match="not vm-2"):
        kv.read_entry(image, "luks", "vm-2")
    with pytest.raises(kv.KeyVolumeError, match="no entry"):
        kv.read_entry(image, "nope")
    bad = bytearray(image)
    bad[4096] ^= 1
    with pytest.raises(kv.KeyVolumeError, match="sha256"):
        kv.read_entry(bytes(bad), "luks")
    with pytest.raises(kv.KeyVolumeError, match="magic"):
        kv.parse_header(b"VVGKEY2\n" + image[8:])


@pytest.mark.parametrize("entries, message", [
    ([E("luks", b"a"), E("luks", b"b")], "given twice"),
    ([E("luks", b"a"), E("x", b"b", "password")], "kind 'password'"),
    ([E("luks", b"a", "secret")], "always luks-key"),
    ([E("x", b"b")], "needs a luks entry"),
    ([E("luks", b"a"), E("bad name", b"b")], "does not match"),
    ([E("luks", b"a"), E("../x", b"b")], "does not match"),
    ([E("luks", b"a"), E("n" * 65, b"b")], "does not match"),
    ([E("luks", b"")], "empty"),
])
def test_validate__refusals_are_clear(entries, message):
    with pytest.raises(kv.KeyVolumeError, match=message):
        kv.build("vm-1", "vvol-1", entries, "t")


def test_validate__capacity_counts_the_header_and_alignment():
    kv.build("vm-1", "v", [E("luks", b"a" * 64), E("x", b"b" * 4096)], "t", capacity=3 * 4096)
    with pytest.raises(kv.KeyVolumeError, match="over the volume's 12288 bytes"):
        kv.build("vm-1", "v", [E("luks", b"a" * 64), E("x", b"b" * 4097)], "t", capacity=3 * 4096)


def test_header__too_many_entries_to_fit_is_refused():
    many = [E("luks", b"a")] + [E(f"entry-{i:02d}-" + "n" * 40, b"b") for i in range(31)]
    with pytest.raises(kv.KeyVolumeError, match="header needs"):
        kv.build("vm-1", "v", many, "t")


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.update(format=2), "unsupported"),
    (lambda o: o.update(extra=1), "exactly the keys"),
    (lambda o: o["entries"][0].update(offset=4097), "offset|must start"),
    (lambda o: o["entries"][0].update(offset=8192), "must start at byte 4096"),
    (lambda o: o["entries"][0].update(size=-1), "positive"),
    (lambda o: o["entries"][0].update(size=True), "positive"),
    (lambda o: o["entries"][0].update(sha256="X" * 64), "hex"),
    (lambda o: o["entries"].append(dict(o["entries"][0])), "listed twice"),
    (lambda o: o.update(vm_id="vm 1"), "vm_id"),
    (lambda o: o.update(entries=[]), "no entries"),
])
def test_parse_header__hostile_headers_are_refused(mutate, message):
    image, _ = kv.build("vm-1", "vvol-1", [E("luks", b"k" * 64)], "t")
    obj = json.loads(image[8:4096].rstrip(b"\0"))
    mutate(obj)
    raw = kv.MAGIC + json.dumps(obj).encode()
    with pytest.raises(kv.KeyVolumeError, match=message):
        kv.parse_header(raw + b"\0" * (4096 - len(raw)))


def test_parse_header__garbage_is_refused():
    for head in (b"", b"VVGKEY1\n", b"VVGKEY1\n{", b"VVGKEY1\n\xff\xfe", b"VVGKEY1\n[]", b"VVGKEY1\n{}\0x"):
        with pytest.raises(kv.KeyVolumeError):
            kv.parse_header(head)


def test_specs__generate_and_file():
    assert kv.parse_generate("luks") == ("luks", 64)
    assert kv.parse_generate("lic:100") == ("lic", 100)
    for bad in ("lic:0", "lic:x", "lic:-1", f"lic:{kv.MAX_GENERATE + 1}", "a b:3", ":3"):
        with pytest.raises(kv.KeyVolumeError):
            kv.parse_generate(bad)
    assert kv.parse_file("luks=/k") == ("luks", "/k", "luks-key")
    assert kv.parse_file("c=/x/c.pem:certificate") == ("c", "/x/c.pem", "certificate")
    assert kv.parse_file("s=/x/a:b/c") == ("s", "/x/a:b/c", "secret")  # a colon inside a path stays
    for bad in ("c=/x:password", "luks=/k:license", "noequals", "=x", "n="):
        with pytest.raises(kv.KeyVolumeError):
            kv.parse_file(bad)


def test_entry_repr_never_shows_bytes():
    assert "s3cret" not in repr(kv.Entry("luks", "luks-key", b"s3cret-bytes"))


# ---------------------------------------------------------------- vvg key build


def test_cli_build__writes_a_0600_image_and_answers_no_bytes(vvg, tmp_path):
    key = tmp_path / "K"
    key.write_bytes(os.urandom(64))
    out = tmp_path / "img"
    r = vvg("key", "build", "--vm", "vm-1", "--volume", "vvol-1", "--file", f"luks={key}", "--generate", "lic:100",
            "--out", str(out))
    assert r.code == 0, r
    body = r.json()
    assert [e["name"] for e in body["entries"]] == ["luks", "lic"] and body["entries"][0]["kind"] == "luks-key"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert kv.read_entry(out.read_bytes(), "luks", "vm-1") == key.read_bytes()
    assert key.read_bytes().hex() not in r.out + r.err


def test_cli_build__a_luks_entry_is_generated_when_none_is_given(vvg, tmp_path):
    r = vvg("key", "build", "--vm", "vm-1", "--volume", "vvol-1", "--out", str(tmp_path / "img"))
    assert r.code == 0, r
    assert r.json()["entries"] == [{"name": "luks", "kind": "luks-key", "size": 64,
                                    "sha256": hashlib.sha256(kv.read_entry((tmp_path / "img").read_bytes())).hexdigest()}]


@pytest.mark.parametrize("args, message", [
    (["--file", "luks=K", "--file", "luks=K"], "given twice"),
    (["--file", "x=K:password"], "kind 'password'"),
    (["--file", "luks=MISSING"], "cannot read"),
    (["--generate", "bad/name"], "does not match"),
    (["--file", "big=BIG", "--size-mb", "1"], "over the volume"),
    (["--vm", "vm 1"], "vm_id"),
])
def test_cli_build__refusals_are_one_line_and_write_nothing(vvg, tmp_path, args, message):
    (tmp_path / "K").write_bytes(b"k" * 64)
    (tmp_path / "BIG").write_bytes(b"b" * (1024 * 1024))
    args = [a.replace("=K", f"={tmp_path}/K").replace("=BIG", f"={tmp_path}/BIG").replace("=MISSING", f"={tmp_path}/M")
            for a in args]
    base = ["--vm", "vm-1"] if "--vm" not in args else []
    out = tmp_path / "img"
    r = vvg("key", "build", *base, "--volume", "vvol-1", *args, "--out", str(out))
    assert r.code != 0 and r.err.count("\n") == 1 and message in r.err, r
    assert not out.exists()


def test_cli_build__never_overwrites_a_file(vvg, tmp_path):
    out = tmp_path / "img"
    out.write_text("keep")
    r = vvg("key", "build", "--vm", "vm-1", "--volume", "vvol-1", "--out", str(out))
    assert r.code == 1 and "already exists" in r.err and out.read_text() == "keep"


# ---------------------------------------------------------------- the guest reader, under busybox sh


@pytest.fixture(scope="module")
def bb_path(tmp_path_factory) -> str:
    """A PATH of busybox applets only: the reader must not need anything an initramfs lacks."""
    if BUSYBOX is None:
        pytest.skip("busybox is not installed")
    d = tmp_path_factory.mktemp("bb")
    for tool in ("sh", "head", "dd", "od", "tr", "sed", "awk", "sha256sum", "cut", "grep", "sleep", "tail", "cat"):
        (d / tool).symlink_to(BUSYBOX)
    return str(d)


def keyread(bb_path: str, *args: str, wait: str = "0", by_id: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": bb_path, "VVG_KEYREAD_WAIT": wait}
    if by_id:
        env["VVG_KEYREAD_BY_ID"] = by_id
    return subprocess.run([BUSYBOX, "sh", str(READER), *args], capture_output=True, env=env, timeout=30)


@pytest.fixture(scope="module")
def luks(tmp_path_factory):
    """A LUKS2 container file formatted with key file K, and an image of `vvg key build` holding K."""
    if CRYPTSETUP is None:
        pytest.skip("cryptsetup is not installed")
    d = tmp_path_factory.mktemp("luks")
    key, container = d / "K", d / "container"
    key.write_bytes(os.urandom(64))
    with open(container, "wb") as fh:
        fh.truncate(20 * 1024 * 1024)  # sparse: the LUKS2 header and a little data
    subprocess.run([CRYPTSETUP, "luksFormat", "--batch-mode", "--type", "luks2", *FAST_LUKS, "--key-file", str(key),
                    str(container)], check=True, capture_output=True, timeout=60)
    image, _ = kv.build("vm-1", "vvol-1", [E("luks", key.read_bytes()), E("lic", b"LICENSE" * 1000, "license")], "t")
    (d / "img").write_bytes(image)
    return d


def unlocks(container: Path, key_file: Path, *extra: str) -> bool:
    p = subprocess.run([CRYPTSETUP, "open", "--test-passphrase", "--key-file", str(key_file), *extra, str(container)],
                       capture_output=True, timeout=60)
    return p.returncode == 0


@needs_busybox
@needs_cryptsetup
def test_reader__outputs_the_luks_key_that_unlocks_the_container(bb_path, luks):
    r = keyread(bb_path, str(luks / "img"), "vm-1")
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert r.stdout == (luks / "K").read_bytes()
    (luks / "out").write_bytes(r.stdout)
    assert unlocks(luks / "container", luks / "out")
    # crypttab's keyfile-offset / keyfile-size read it straight from the image, no vvolguard code at all
    assert unlocks(luks / "container", luks / "img", "--keyfile-offset", "4096", "--keyfile-size", "64")
    assert not unlocks(luks / "container", luks / "img", "--keyfile-offset", "0", "--keyfile-size", "64")


@needs_busybox
def test_reader__other_entries_and_the_keyscript_form(bb_path, luks):
    assert keyread(bb_path, str(luks / "img"), "vm-1", "lic").stdout == b"LICENSE" * 1000
    r = keyread(bb_path, f"{luks / 'img'},vm-1")  # crypttab passes its key field as the one argument
    assert r.returncode == 0 and r.stdout == (luks / "K").read_bytes()


@needs_busybox
def test_reader__finds_a_volume_id_under_by_id_by_its_serial(bb_path, luks, tmp_path):
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0").symlink_to(luks / "img")
    (by_id / "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0-part1").symlink_to(luks / "K")
    (by_id / "virtio-vvol-1").symlink_to(luks / "img")
    (by_id / "virtio-vvol-10").symlink_to(luks / "K")
    assert keyread(bb_path, "vol-0123456789abcdef0", "vm-1", by_id=str(by_id)).stdout == (luks / "K").read_bytes()
    assert keyread(bb_path, "vvol-1", "vm-1", by_id=str(by_id)).stdout == (luks / "K").read_bytes()
    r = keyread(bb_path, "vol-0123456789abcdef", "vm-1", by_id=str(by_id))  # a prefix is not the serial
    assert r.returncode == 1 and b"not found" in r.stderr


@needs_busybox
def test_reader__waits_for_the_device_then_refuses(bb_path, luks, tmp_path):
    t0 = time.monotonic()
    r = keyread(bb_path, "vol-0fff", "vm-1", wait="1", by_id=str(tmp_path))
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr == b"vvg-keyread: device vol-0fff not found after 1s\n"
    assert 0.9 < time.monotonic() - t0 < 10


@needs_busybox
def test_reader__a_device_that_appears_while_waiting_is_read(bb_path, luks, tmp_path):
    by_id = tmp_path / "late"
    by_id.mkdir()
    proc = subprocess.Popen([BUSYBOX, "sh", str(READER), "vol-0late", "vm-1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={"PATH": bb_path, "VVG_KEYREAD_WAIT": "5",
                                                         "VVG_KEYREAD_BY_ID": str(by_id)})
    time.sleep(0.5)
    (by_id / "virtio-vol-0late").symlink_to(luks / "img")
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and out == (luks / "K").read_bytes(), err


@needs_busybox
@pytest.mark.parametrize("case, message", [
    ("wrong_vm", b"is the key volume of vm-1, not of vm-2"),
    ("corrupted", b"does not match its sha256"),
    ("truncated", b"does not match its sha256"),
    ("not_a_key_volume", b"no VVGKEY1 magic"),
    ("no_entry", b"has no entry nope"),
    ("bad_vm_arg", b"VM_ID must match"),
    ("format_2", b"unsupported key volume format"),
    ("usage", b"usage:"),
])
def test_reader__refusals_are_one_line_on_stderr_and_exit_1(bb_path, luks, tmp_path, case, message):
    img = (luks / "img").read_bytes()
    target, args = tmp_path / "dev", ["vm-1"]
    if case == "wrong_vm":
        args = ["vm-2"]
    elif case == "corrupted":
        img = img[:4100] + bytes([img[4100] ^ 0x40]) + img[4101:]
    elif case == "truncated":
        img = img[:4096 + 32]
    elif case == "not_a_key_volume":
        img = b"\0" * 8192
    elif case == "no_entry":
        args = ["vm-1", "nope"]
    elif case == "bad_vm_arg":
        args = ["vm 1; reboot"]
    elif case == "format_2":
        img = img.replace(b'"format":1', b'"format":2', 1)
    elif case == "usage":
        args = []
    target.write_bytes(img)
    r = keyread(bb_path, str(target), *args)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.count(b"\n") == 1 and message in r.stderr, r.stderr


@needs_busybox
@needs_cryptsetup
def test_first_boot_enroll__adds_the_luks_key_to_the_disk_once(luks, tmp_path):
    disk, passphrase = tmp_path / "disk", tmp_path / "P"
    passphrase.write_bytes(b"install-time passphrase")
    with open(disk, "wb") as fh:
        fh.truncate(20 * 1024 * 1024)
    subprocess.run([CRYPTSETUP, "luksFormat", "--batch-mode", "--type", "luks2", *FAST_LUKS, "--key-file",
                    str(passphrase), str(disk)], check=True, capture_output=True, timeout=60)
    env = {**os.environ, "VVG_KEYREAD_WAIT": "0", "VVG_LUKS_ADDKEY_OPTS": " ".join(FAST_LUKS)}
    assert not unlocks(disk, luks / "K")
    for expect in (b"added", b"already unlocks"):
        p = subprocess.run([BUSYBOX, "sh", str(ENROLL), str(luks / "img"), "vm-1", str(disk), str(passphrase)],
                           capture_output=True, env=env, timeout=60)
        assert p.returncode == 0 and expect in p.stderr, p.stderr
    assert unlocks(disk, luks / "K") and unlocks(disk, passphrase)
    p = subprocess.run([BUSYBOX, "sh", str(ENROLL), str(luks / "img"), "vm-9", str(disk), str(passphrase)],
                       capture_output=True, env=env, timeout=60)
    assert p.returncode == 1 and b"not of vm-9" in p.stderr


def test_reader__is_posix_sh_without_bashisms():
    text = READER.read_text()
    assert text.startswith("#!/bin/sh\n")
    for bashism in ("[[", "function ", "<<<", "local ", "pipefail", "python"):
        assert bashism not in text, bashism


def test_cli_build__a_file_over_the_image_limit_is_refused_not_truncated(vvg, tmp_path, monkeypatch):
    from vvolguard.services import keys

    monkeypatch.setattr(keys, "MAX_IMAGE_FILE", 1000)
    (tmp_path / "F").write_bytes(b"f" * 1001)
    r = vvg("key", "build", "--vm", "vm-1", "--volume", "vvol-1", "--file", f"x={tmp_path}/F", "--out", str(tmp_path / "i"))
    assert r.code == 1 and "over the image's limit of 1000 bytes" in r.err and not (tmp_path / "i").exists()


@needs_busybox
@pytest.mark.parametrize("script", ["vvg-keyread", "vvg-luks-enroll", "initramfs-hook"])
def test_guest_scripts__parse_under_busybox_sh(script):
    p = subprocess.run([BUSYBOX, "sh", "-n", str(ROOT / "infra" / "guest" / script)], capture_output=True, timeout=10)
    assert p.returncode == 0, p.stderr
    assert os.access(ROOT / "infra" / "guest" / script, os.X_OK)
