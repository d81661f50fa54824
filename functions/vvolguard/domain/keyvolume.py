"""The key volume format VVGKEY1 (docs/key-volume.md): build and parse an image, no I/O.

Layout: bytes 0-4095 are the header (the line ``VVGKEY1\\n``, then one UTF-8 JSON object, NUL-padded);
every entry's bytes start at a multiple of 4096; the entry ``luks`` always starts at byte 4096, so that
``cryptsetup --keyfile-offset 4096 --keyfile-size 64`` reads the VM's disk key straight from the device.
Entry bytes never appear in a repr, an error or a description: only names, kinds, sizes and digests.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from vvolguard.errors import KeyVolumeError  # noqa: F401 - defined in errors.py, imported from here too

MAGIC = b"VVGKEY1\n"
FORMAT = 1
HEADER_SIZE = 4096
ALIGN = 4096
LUKS = "luks"
LUKS_OFFSET = 4096
LUKS_DEFAULT_BYTES = 64
KINDS = ("luks-key", "license", "certificate", "secret")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_GENERATE = 1024 * 1024  # --generate NAME:BYTES at most 1 MiB of random bytes
MAX_ENTRIES = 32
HEADER_KEYS = ("format", "vm_id", "volume_id", "created_at", "entries")
ENTRY_KEYS = ("name", "kind", "offset", "size", "sha256")


@dataclass(frozen=True)
class Entry:
    """One entry to write: its bytes are never shown (repr=False)."""

    name: str
    kind: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class EntryInfo:
    """What the header says of one entry."""

    name: str
    kind: str
    offset: int
    size: int
    sha256: str

    def public(self) -> dict[str, Any]:
        """The entry as the CLI and the dashboard show it (never its bytes)."""
        return {"name": self.name, "kind": self.kind, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Header:
    """The parsed header of an image."""

    vm_id: str
    volume_id: str
    created_at: str
    entries: tuple[EntryInfo, ...]

    def entry(self, name: str) -> EntryInfo:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyVolumeError(f"the key volume has no entry {name!r}")


def default_kind(name: str) -> str:
    """``luks-key`` for ``luks``, ``secret`` otherwise."""
    return "luks-key" if name == LUKS else "secret"


def _check_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise KeyVolumeError(f"entry name {name[:70]!r} does not match [A-Za-z0-9._-]{{1,64}}")


def _check_kind(name: str, kind: str) -> None:
    if kind not in KINDS:
        raise KeyVolumeError(f"entry {name}: kind {kind[:40]!r} is not one of {', '.join(KINDS)}")
    if name == LUKS and kind != "luks-key":
        raise KeyVolumeError(f"entry {LUKS}: its kind is always luks-key, not {kind}")


def parse_generate(spec: str) -> tuple[str, int]:
    """``NAME[:BYTES]`` of ``--generate``: the name and how many random bytes (64 by default)."""
    name, sep, count = spec.partition(":")
    _check_name(name)
    if not sep:
        return name, LUKS_DEFAULT_BYTES
    if not count.isdigit() or not 1 <= int(count) <= MAX_GENERATE:
        raise KeyVolumeError(f"--generate {name}: BYTES must be an integer from 1 to {MAX_GENERATE}, got {count[:20]!r}")
    return name, int(count)


def parse_file(spec: str) -> tuple[str, str, str]:
    """``NAME=PATH[:KIND]`` of ``--file``: the name, the path and the kind (the default when not given).

    A last ``:word`` of lower-case letters and dashes is a kind (and must be a known one); a path with
    another colon in it stays whole."""
    name, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise KeyVolumeError(f"--file {spec[:80]!r}: expected NAME=PATH[:KIND]")
    _check_name(name)
    path, kind = rest, default_kind(name)
    head, colon, tail = rest.rpartition(":")
    if colon and head and re.fullmatch(r"[a-z][a-z-]*", tail):
        path, kind = head, tail
    _check_kind(name, kind)
    return name, path, kind


def validate_entries(entries: Iterable[Entry], capacity: int | None = None) -> list[Entry]:
    """Names unique and well formed, kinds known, no empty entry, ``luks`` first; the image fits ``capacity``."""
    out: list[Entry] = []
    seen: set[str] = set()
    for e in entries:
        _check_name(e.name)
        _check_kind(e.name, e.kind)
        if e.name in seen:
            raise KeyVolumeError(f"entry {e.name} is given twice")
        if not e.data:
            raise KeyVolumeError(f"entry {e.name} is empty")
        seen.add(e.name)
        out.append(e)
    if LUKS not in seen:
        raise KeyVolumeError(f"a key volume needs a {LUKS} entry")
    if len(out) > MAX_ENTRIES:
        raise KeyVolumeError(f"at most {MAX_ENTRIES} entries fit a header, got {len(out)}")
    out.sort(key=lambda e: e.name != LUKS)  # luks first (stable: the others keep their order)
    need = image_size(len(e.data) for e in out)
    if capacity is not None and need > capacity:
        raise KeyVolumeError(f"the entries need {need} bytes, over the volume's {capacity} bytes")
    return out


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def image_size(sizes: Iterable[int]) -> int:
    """Bytes an image with entries of these sizes takes (header plus each entry rounded up to 4096)."""
    return HEADER_SIZE + sum(_aligned(s) for s in sizes)


def header_bytes(vm_id: str, volume_id: str, created_at: str, infos: Iterable[EntryInfo]) -> bytes:
    """The 4096-byte header: magic line, compact JSON (keys in the documented order), NUL padding."""
    for what, value in (("vm_id", vm_id), ("volume_id", volume_id)):
        if not ID_RE.match(value or ""):
            raise KeyVolumeError(f"{what} {value[:70]!r} does not match [A-Za-z0-9._-]{{1,64}}")
    obj = {"format": FORMAT, "vm_id": vm_id, "volume_id": volume_id, "created_at": created_at,
           "entries": [{"name": i.name, "kind": i.kind, "offset": i.offset, "size": i.size, "sha256": i.sha256}
                       for i in infos]}
    text = MAGIC + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > HEADER_SIZE:
        raise KeyVolumeError(f"the header needs {len(text)} bytes, over {HEADER_SIZE}: fewer or shorter entries")
    return text + b"\0" * (HEADER_SIZE - len(text))


def build(vm_id: str, volume_id: str, entries: Iterable[Entry], created_at: str,
          capacity: int | None = None) -> tuple[bytes, Header]:
    """The image (header and entries, no trailing padding) and its header."""
    ordered = validate_entries(entries, capacity)
    infos, offset = [], HEADER_SIZE
    for e in ordered:
        infos.append(EntryInfo(e.name, e.kind, offset, len(e.data), hashlib.sha256(e.data).hexdigest()))
        offset += _aligned(len(e.data))
    assert infos[0].name == LUKS and infos[0].offset == LUKS_OFFSET
    parts = [header_bytes(vm_id, volume_id, created_at, infos)]
    for e in ordered:
        parts.append(e.data + b"\0" * (_aligned(len(e.data)) - len(e.data)))
    return b"".join(parts), Header(vm_id, volume_id, created_at, tuple(infos))


def parse_header(head: bytes) -> Header:
    """The header of an image (its first 4096 bytes, or more), every field checked."""
    if not head.startswith(MAGIC):
        raise KeyVolumeError("not a key volume: the magic VVGKEY1 is missing")
    raw = head[len(MAGIC):HEADER_SIZE].rstrip(b"\0")
    if b"\0" in raw:
        raise KeyVolumeError("the header holds a NUL inside its JSON")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KeyVolumeError("the header's JSON does not parse") from None
    if not isinstance(obj, dict) or set(obj) != set(HEADER_KEYS):
        raise KeyVolumeError(f"the header must have exactly the keys {', '.join(HEADER_KEYS)}")
    if obj["format"] != FORMAT or isinstance(obj["format"], bool):
        raise KeyVolumeError(f"unsupported key volume format {str(obj['format'])[:20]!r} (this reader knows {FORMAT})")
    for key in ("vm_id", "volume_id"):
        if not isinstance(obj[key], str) or not ID_RE.match(obj[key]):
            raise KeyVolumeError(f"the header's {key} is malformed")
    if not isinstance(obj["created_at"], str) or len(obj["created_at"]) > 40:
        raise KeyVolumeError("the header's created_at is malformed")
    if not isinstance(obj["entries"], list) or not obj["entries"]:
        raise KeyVolumeError("the header lists no entries")
    infos: list[EntryInfo] = []
    names: set[str] = set()
    end = HEADER_SIZE
    for i, e in enumerate(obj["entries"]):
        if not isinstance(e, dict) or set(e) != set(ENTRY_KEYS):
            raise KeyVolumeError(f"entry {i} must have exactly the keys {', '.join(ENTRY_KEYS)}")
        name, kind = e["name"], e["kind"]
        if not isinstance(name, str) or not isinstance(kind, str):
            raise KeyVolumeError(f"entry {i}: name and kind must be strings")
        _check_name(name)
        _check_kind(name, kind)
        if name in names:
            raise KeyVolumeError(f"entry {name} is listed twice")
        names.add(name)
        off, size, digest = e["offset"], e["size"], e["sha256"]
        if any(not isinstance(v, int) or isinstance(v, bool) for v in (off, size)) or size < 1:
            raise KeyVolumeError(f"entry {name}: offset and size must be positive integers")
        if off % ALIGN or off < end:
            raise KeyVolumeError(f"entry {name}: offset {off} is not 4096-aligned after the previous entry")
        if name == LUKS and off != LUKS_OFFSET:
            raise KeyVolumeError(f"entry {LUKS} must start at byte {LUKS_OFFSET}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise KeyVolumeError(f"entry {name}: sha256 must be 64 lower-case hex digits")
        end = off + size
        infos.append(EntryInfo(name, kind, off, size, digest))
    if LUKS not in names:
        raise KeyVolumeError(f"the key volume has no {LUKS} entry")
    return Header(obj["vm_id"], obj["volume_id"], obj["created_at"], tuple(infos))


def read_entry(image: bytes, name: str = LUKS, vm_id: str | None = None) -> bytes:
    """An entry's bytes, after checking the magic, the vm_id (when given) and the entry's digest."""
    header = parse_header(image[:HEADER_SIZE])
    if vm_id is not None and header.vm_id != vm_id:
        raise KeyVolumeError(f"the key volume is for {header.vm_id}, not {vm_id}")
    info = header.entry(name)
    data = image[info.offset:info.offset + info.size]
    if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
        raise KeyVolumeError(f"entry {name}: its bytes do not match the header's sha256")
    return data


def public_entries(header: Header) -> list[dict[str, Any]]:
    """Name, kind, size and digest of each entry (what answers, the audit and the dashboard may show)."""
    return [e.public() for e in header.entries]
