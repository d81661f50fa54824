"""Ed25519 host keys (docs/host-keys.md): parse a public key, its fingerprint, sign and verify. Pure.

Every primitive comes from ``cryptography``. The server only ever holds public keys; a key host's
private key stays on the host (a 0600 file, or a TPM through PKCS#11).
"""
from __future__ import annotations

import base64
import binascii
import re

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vvolguard.errors import HostKeyError  # noqa: F401 - defined in errors.py, imported from here too

MAX_KEY_FILE = 16 * 1024
RAW_LEN = 32
SIG_LEN = 64
# The header value a key host sends: t=UNIX_SECONDS,ed25519=<standard base64 of 64 bytes, with padding>.
ED25519_SIG_RE = re.compile(r"^t=(\d{1,12}),ed25519=([A-Za-z0-9+/]{86}==)\Z")


def _text(data: bytes | str) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_KEY_FILE:
        raise HostKeyError(f"the key is over {MAX_KEY_FILE} bytes")
    return raw.strip()


def parse_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or one OpenSSH ``ssh-ed25519 AAAA… [comment]`` line."""
    raw = _text(data)
    if not raw:
        raise HostKeyError("the public key is empty")
    if b"PRIVATE KEY" in raw:
        raise HostKeyError("that is a private key: give the public key (the private key never leaves the host)")
    try:
        if raw.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        elif raw.startswith(b"ssh-"):
            if b"\n" in raw:
                raise HostKeyError("an OpenSSH public key is one line")
            key = serialization.load_ssh_public_key(raw)
        else:
            raise HostKeyError("the public key must be PEM (-----BEGIN PUBLIC KEY-----) or an OpenSSH 'ssh-ed25519 …' line")
    except HostKeyError:
        raise
    except (ValueError, TypeError, UnsupportedAlgorithm, binascii.Error):
        raise HostKeyError("the public key could not be read (PEM or an OpenSSH 'ssh-ed25519 …' line)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise HostKeyError("the public key must be an Ed25519 key (ssh-keygen -t ed25519, or openssl genpkey -algorithm ed25519)")
    return key


def public_raw(key: Ed25519PublicKey) -> bytes:
    """The key's 32 raw bytes."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_raw(raw_b64: str) -> Ed25519PublicKey:
    """The stored form (base64 of the 32 raw bytes) back to a key."""
    raw = base64.b64decode(raw_b64, validate=True)
    if len(raw) != RAW_LEN:
        raise HostKeyError("a stored public key must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def openssh_line(key: Ed25519PublicKey) -> str:
    """``ssh-ed25519 AAAA…`` (no comment)."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode("ascii")


def fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:…`` exactly as ``ssh-keygen -lf`` prints it (unpadded base64 of the SHA-256 of the key blob)."""
    blob = base64.b64decode(openssh_line(key).split()[1])
    return "SHA256:" + base64.b64encode(_sha256(blob)).decode("ascii").rstrip("=")


def _sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def binding(fp: str, mac: str, serial: str, hardware: str) -> str:
    """SHA-256 over the key's fingerprint and the hardware credentials given with it at enrolment: which
    machine a key belongs to (recorded with the key and in the audit chain)."""
    material = "\x1f".join(("vvg-host-binding-v1", fp, mac, serial, hardware)).encode("utf-8")
    return _sha256(material).hex()


def load_private_key(data: bytes | str, password: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM or an OpenSSH private key file."""
    raw = _text(data)
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in raw:
            key = serialization.load_ssh_private_key(raw, password=password)
        elif raw.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(raw, password=password)
        else:
            raise HostKeyError("the private key must be PKCS#8 PEM or an OpenSSH private key")
    except HostKeyError:
        raise
    except TypeError:
        raise HostKeyError("the private key is encrypted: give an unencrypted key file of mode 0600") from None
    except (ValueError, UnsupportedAlgorithm, binascii.Error):
        raise HostKeyError("the private key could not be read (PKCS#8 PEM or OpenSSH)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HostKeyError("the private key must be an Ed25519 key")
    return key


def sign_ed25519(key: Ed25519PrivateKey, timestamp: int, body: bytes) -> str:
    """The ``X-VVG-Signature`` value of a key host: ``t=…,ed25519=BASE64`` over ``"{t}." + body``."""
    sig = key.sign(f"{timestamp}.".encode("ascii") + body)
    return f"t={timestamp},ed25519={base64.b64encode(sig).decode('ascii')}"


def decode_signature(b64: str) -> bytes | None:
    """The 64 signature bytes of a canonical standard-base64 value, or None."""
    try:
        sig = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(sig) != SIG_LEN or base64.b64encode(sig).decode("ascii") != b64:
        return None
    return sig


def verify(key: Ed25519PublicKey, timestamp: int, body: bytes, sig: bytes) -> bool:
    """Whether ``sig`` is the key's signature over ``"{t}." + body``."""
    try:
        key.verify(sig, f"{timestamp}.".encode("ascii") + body)
        return True
    except InvalidSignature:
        return False
