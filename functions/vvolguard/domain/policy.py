"""The policy file (docs/policy-file.md): one validator shared by the CLI and the dashboard."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vvolguard.domain.constants import DEFAULT_LEASE_S, ID_RE, KEY_BITS, PASSWORD_LEN
from vvolguard.domain.constants import no_duplicate_keys  # noqa: F401 - imported from here too
from vvolguard.errors import PolicyValidationError
ATTACH_ON = ("preboot", "app_start", "license_check", "request")
DETACH_ON = ("postboot", "shutdown", "app_stop", "license_verified", "request")
APP_TRIGGERS = {"app_start", "app_stop", "license_check", "license_verified"}
MAX_SIZE_MB = 1048576
MAX_LEASE = 86400
DEFAULT_LEASE = DEFAULT_LEASE_S
MAX_PASSWORD_LEN = PASSWORD_LEN[1]
MAX_KEY_BITS = KEY_BITS[1]
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_VOLUMES = 10000
ATTACH_TO = ("vm", "host")  # where the provider attaches a volume (docs/deployment-modes.md)

REQUIRED = ("volume_id", "vm_id", "host_id", "storage_array", "size_mb", "attach_on", "detach_on")
OPTIONAL = ("app", "authorized_apps", "os_disk_encryption", "password", "max_attach_seconds", "min_key_bits",
            "attach_to")
KEYS = REQUIRED + OPTIONAL
# What export writes, in this order (never the password).

_UNSET = object()
# The one rule for optional keys an entry leaves out (docs/policy-apply.md): an entry describes the whole
# volume, so an absent key takes its default, as written here; the exception is ``password``, which export
# can never write out: absent keeps the stored hash, null removes it.
DEFAULTS: dict[str, Any] = {"app": None, "authorized_apps": [], "os_disk_encryption": False,
                            "max_attach_seconds": DEFAULT_LEASE, "min_key_bits": None, "attach_to": "vm"}


@dataclass(frozen=True)
class PolicySpec:
    """One validated policy entry; ``password`` is _UNSET (keep), None (remove) or the new plaintext."""

    volume_id: str
    vm_id: str
    host_id: str
    storage_array: str
    size_mb: int
    attach_on: str
    detach_on: str
    app: str | None = None
    authorized_apps: tuple[str, ...] = ()
    os_disk_encryption: bool = False
    max_attach_seconds: int = DEFAULT_LEASE
    min_key_bits: int | None = None
    attach_to: str = "vm"
    password: Any = field(default=_UNSET, repr=False, compare=False)
    # The optional keys the entry left out (they took their defaults; docs/policy-apply.md).
    absent: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def password_given(self) -> bool:
        """True when the entry sets or removes the password."""
        return self.password is not _UNSET

    def to_file_entry(self) -> dict[str, Any]:
        """The entry as export writes it: required keys, then optional ones that are set."""
        out: dict[str, Any] = {k: getattr(self, k) for k in REQUIRED}
        if self.app is not None:
            out["app"] = self.app
        if self.authorized_apps:
            out["authorized_apps"] = list(self.authorized_apps)
        out["os_disk_encryption"] = self.os_disk_encryption
        out["max_attach_seconds"] = self.max_attach_seconds
        if self.min_key_bits is not None:
            out["min_key_bits"] = self.min_key_bits
        if self.attach_to != "vm":  # the default is not written, so older files round-trip unchanged
            out["attach_to"] = self.attach_to
        return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_entry(entry: Any, where: str) -> tuple[PolicySpec | None, list[str]]:
    """Validate one entry; ``where`` names it in messages (e.g. ``volumes[2] (vvol-3)``)."""
    errors: list[str] = []
    if not isinstance(entry, dict):
        return None, [f"{where}: must be a mapping of policy keys"]
    vid = entry.get("volume_id")
    if isinstance(vid, str) and ID_RE.match(vid):
        where = f"{where} ({vid})"

    def err(key: str, msg: str) -> None:
        errors.append(f"{where}: {key}: {msg}")

    for key in entry:
        if key not in KEYS:
            name = key if isinstance(key, str) and len(key) <= 64 and key.isprintable() else _short(key)
            err(str(name), f"unknown key (allowed: {', '.join(KEYS)})")
    for key in REQUIRED:
        if key not in entry or entry[key] is None:
            err(key, "is required")
    for key in ("volume_id", "vm_id", "host_id", "storage_array"):
        v = entry.get(key)
        if v is not None and not (isinstance(v, str) and ID_RE.match(v)):
            err(key, f"must match [A-Za-z0-9._-]{{1,64}}, got {_short(v)}")
    size = entry.get("size_mb")
    if size is not None and not (_is_int(size) and 1 <= size <= MAX_SIZE_MB):
        err("size_mb", f"must be an integer from 1 to {MAX_SIZE_MB}, got {_short(size)}")
    attach_on, detach_on = entry.get("attach_on"), entry.get("detach_on")
    if attach_on is not None and attach_on not in ATTACH_ON:
        err("attach_on", f"must be one of {', '.join(ATTACH_ON)}, got {_short(attach_on)}")
        attach_on = None
    if detach_on is not None and detach_on not in DETACH_ON:
        err("detach_on", f"must be one of {', '.join(DETACH_ON)}, got {_short(detach_on)}")
        detach_on = None
    if detach_on == "app_stop" and attach_on and attach_on != "app_start":
        err("detach_on", "app_stop needs attach_on: app_start")
    if detach_on == "license_verified" and attach_on and attach_on != "license_check":
        err("detach_on", "license_verified needs attach_on: license_check")
    app = entry.get("app")
    needs_app = bool({attach_on, detach_on} & APP_TRIGGERS)
    if needs_app and app is None:
        err("app", f"is required when a trigger is {' or '.join(sorted({attach_on, detach_on} & APP_TRIGGERS))}")
    elif not needs_app and "app" in entry and attach_on and detach_on:
        err("app", "must be absent unless a trigger is app_start, app_stop, license_check or license_verified")
    if app is not None and not (isinstance(app, str) and ID_RE.match(app)):
        err("app", f"must match [A-Za-z0-9._-]{{1,64}}, got {_short(app)}")
    apps = entry.get("authorized_apps", [])
    if apps is None:
        apps = []
    if not isinstance(apps, list) or len(apps) > 64 or not all(isinstance(a, str) and ID_RE.match(a) for a in apps):
        err("authorized_apps", "must be a list of at most 64 application names matching [A-Za-z0-9._-]{1,64}")
        apps = []
    elif len(set(apps)) != len(apps):
        err("authorized_apps", "lists an application twice")
    ode = entry.get("os_disk_encryption", False)
    if ode is None:
        ode = False
    if not isinstance(ode, bool):
        err("os_disk_encryption", f"must be true or false, got {_short(ode)}")
    lease = entry.get("max_attach_seconds", DEFAULT_LEASE)
    if lease is None:
        lease = DEFAULT_LEASE
    if not (_is_int(lease) and 1 <= lease <= MAX_LEASE):
        err("max_attach_seconds", f"must be an integer from 1 to {MAX_LEASE}, got {_short(lease)}")
    bits = entry.get("min_key_bits")
    if bits is not None and not (_is_int(bits) and 1 <= bits <= MAX_KEY_BITS):
        err("min_key_bits", f"must be an integer from 1 to {MAX_KEY_BITS}, got {_short(bits)}")
    attach_to = entry.get("attach_to", "vm")
    if attach_to is None:
        attach_to = "vm"
    if attach_to not in ATTACH_TO:
        err("attach_to", f"must be one of {', '.join(ATTACH_TO)}, got {_short(attach_to)}")
    password: Any = _UNSET
    if "password" in entry:
        password = entry["password"]
        if password is not None and not (isinstance(password, str) and 1 <= len(password) <= MAX_PASSWORD_LEN):
            # Never echo the value: it is a secret.
            err("password", f"must be a string of 1 to {MAX_PASSWORD_LEN} characters, or null to remove it")
    if errors:
        return None, errors
    return PolicySpec(
        volume_id=entry["volume_id"], vm_id=entry["vm_id"], host_id=entry["host_id"],
        storage_array=entry["storage_array"], size_mb=size, attach_on=attach_on, detach_on=detach_on,
        app=app, authorized_apps=tuple(apps), os_disk_encryption=ode, max_attach_seconds=lease,
        min_key_bits=bits, attach_to=attach_to, password=password, absent=tuple(k for k in OPTIONAL if k not in entry),
    ), []


def validate_document(doc: Any) -> list[PolicySpec]:
    """Validate a whole policy document; raise PolicyValidationError listing every problem."""
    if not isinstance(doc, dict):
        raise PolicyValidationError(["policy file: the top level must be a mapping with the key 'volumes'"])
    extra = [k for k in doc if k != "volumes"]
    if extra:
        raise PolicyValidationError([f"policy file: unknown top-level key {_short(extra[0])} (only 'volumes' is allowed)"])
    vols = doc.get("volumes")
    if not isinstance(vols, list):
        raise PolicyValidationError(["policy file: 'volumes' must be a list"])
    if len(vols) > MAX_VOLUMES:
        raise PolicyValidationError([f"policy file: at most {MAX_VOLUMES} volumes per file, got {len(vols)}"])
    errors: list[str] = []
    specs: list[PolicySpec] = []
    seen: dict[str, int] = {}
    index: dict[int, int] = {}
    for i, entry in enumerate(vols):
        spec, errs = validate_entry(entry, f"volumes[{i}]")
        errors.extend(errs)
        if spec:
            if spec.volume_id in seen:
                errors.append(f"volumes[{i}] ({spec.volume_id}): volume_id: duplicates volumes[{seen[spec.volume_id]}]")
            seen.setdefault(spec.volume_id, i)
            specs.append(spec)
            index[id(spec)] = i
    errors.extend(mixed_attach_to(specs, lambda s: f"volumes[{index[id(s)]}] ({s.volume_id})"))
    if errors:
        raise PolicyValidationError(errors)
    return specs


def mixed_attach_to(specs: list[PolicySpec], where=lambda s: s.volume_id) -> list[str]:
    """One problem per volume whose ``attach_to`` differs from the first volume of its VM: every volume of
    one VM attaches to the same place (docs/deployment-modes.md)."""
    first: dict[str, PolicySpec] = {}
    out = []
    for spec in specs:
        ref = first.setdefault(spec.vm_id, spec)
        if spec.attach_to != ref.attach_to:
            out.append(f"{where(spec)}: attach_to: every volume of {spec.vm_id} must have the same value; "
                       f"{ref.volume_id} has {ref.attach_to}, this one {spec.attach_to}")
    return out


def _utf8_problem(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where the first byte that is not UTF-8 is (line and column, counted in characters before it)."""
    head = data[: exc.start]
    line = head.count(b"\n") + 1
    column = len(head[head.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
    return f"not UTF-8 text (line {line}, column {column}: byte 0x{data[exc.start]:02x})"


def parse_policy_text(data: bytes, name: str = "policy file") -> list[PolicySpec]:
    """Parse YAML or JSON bytes and validate them; nothing is written here.

    Every problem found is raised at once (PolicyValidationError.errors, one per line): a syntax error
    stops the parser, so it comes alone, with its line and column; keys given twice are reported with
    theirs, together with whatever the entries' own checks find."""
    if len(data) > MAX_FILE_BYTES:
        raise PolicyValidationError([f"{name}: larger than {MAX_FILE_BYTES} bytes"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyValidationError([f"{name}: {_utf8_problem(data, exc)}"]) from None
    problems: list[str] = []
    try:
        if name.endswith(".json"):
            doc = json.loads(text, object_pairs_hook=no_duplicate_keys)
        else:  # YAML, which also reads JSON documents; PyYAML is imported here, never on the event path
            from vvolguard.domain.policy_yaml import load_strict

            doc, duplicates = load_strict(text, name)
            problems = [f"{name}: {d}" for d in duplicates]
    except json.JSONDecodeError as exc:
        raise PolicyValidationError([f"{name}: not valid YAML or JSON: line {exc.lineno}, column {exc.colno}: "
                                     f"{exc.msg}"]) from None
    except (ValueError, RecursionError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, RecursionError):
            detail = "nested too deeply"
        raise PolicyValidationError([f"{name}: not valid YAML or JSON: {detail[:200]}"]) from None
    try:
        specs = validate_document(doc)
    except PolicyValidationError as exc:
        raise PolicyValidationError(problems + list(exc.errors)) from None
    if problems:
        raise PolicyValidationError(problems)
    return specs


def dump_policy_file(specs: list[PolicySpec]) -> str:
    """The policy file export writes (YAML, with the top-level key volumes)."""
    import yaml

    from vvolguard.domain.natural import natural_key

    doc = {"volumes": [s.to_file_entry() for s in sorted(specs, key=lambda s: natural_key(s.volume_id))]}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
