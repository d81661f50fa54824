"""The layers hold (docs/architecture.md): no module imports a layer above it, read from the source with ``ast``.

Every ``import`` counts, wherever it is written: at module level, inside a function (the lazy imports that
keep cold starts short), under ``if TYPE_CHECKING:``; relative imports are resolved first. A failure names
``file:line`` and the forbidden edge.

The layers, from the outside in, and what each may NOT import:

- ``infra/`` (local stack, gateway, bootstrap, OpenAPI) wires everything, as a deployment does: it may
  import any layer, but nothing in ``functions/`` or ``dashboard/`` imports ``infra``.
- ``dashboard/`` and the CLI (``vvolguard/cli.py``) are transports: they reach the system only through
  ``vvolguard.services`` (the composition root ``services/root.py`` and the service modules). They may
  also use ``vvolguard.settings``, ``vvolguard.errors`` and ``vvolguard.domain``: the domain is pure (no
  I/O, no AWS), so its constants, parsers and signing functions cannot bypass a service; they repeat no
  check a service makes. Never ``vvolguard.adapters``, never boto3, botocore or PynamoDB (an AWS failure
  is told through ``services/diagnostics.py``), never a Lambda handler. The CLI never imports Flask.
- ``vvolguard/handlers/`` are transports too: services (and settings, errors, domain), never adapters or
  an AWS library, never the CLI or the dashboard.
- ``vvolguard/services/`` never import handlers, the CLI, the dashboard or ``infra``, and never boto3
  (clients are built in ``adapters/``). They do catch botocore's and PynamoDB's exception classes in a few
  places: those edges are listed in ``SERVICE_LIBRARY_DEBTS`` below, a list that may shrink (an entry no
  longer true fails, so it is removed) but never grow (a new edge fails).
- ``vvolguard/adapters/`` (the only layer that talks to AWS) never import services, handlers, the CLI,
  the dashboard or ``infra``. They may use the domain's values (e.g. ``RESERVED_HOSTS``): the domain is
  below them, it never calls them.
- ``vvolguard/domain/`` is pure: only itself and ``vvolguard.errors`` -- no adapters, services, handlers,
  CLI, settings (the environment), and no boto3, botocore, PynamoDB or Flask.
- ``vvolguard/settings.py`` and ``vvolguard/errors.py`` are the base: ``settings`` imports ``errors``,
  ``errors`` nothing of ours.
- Nothing in ``functions/`` imports Flask, Jinja2, Werkzeug or the dashboard (the Lambda import path stays
  light).
- The host's and the guest's Python scripts (``infra/host/``, ``infra/guest/``) run on hypervisors and
  guests: at most the pure domain (``domain/secrets.sign``), never anything that reaches AWS.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

AWS_LIBS = ("boto3", "botocore", "pynamodb")
WEB_LIBS = ("flask", "flask_wtf", "jinja2", "werkzeug", "markupsafe")
OUTER = ("dashboard", "infra", "bench", "tests")
VVG = "vvolguard"

# layer -> the import prefixes it must not use (a prefix matches itself and its submodules)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "base": (f"{VVG}.domain", f"{VVG}.adapters", f"{VVG}.services", f"{VVG}.handlers", f"{VVG}.cli", *AWS_LIBS,
             *WEB_LIBS, *OUTER),
    "domain": (f"{VVG}.adapters", f"{VVG}.services", f"{VVG}.handlers", f"{VVG}.cli", f"{VVG}.settings", *AWS_LIBS,
               *WEB_LIBS, *OUTER),
    "adapters": (f"{VVG}.services", f"{VVG}.handlers", f"{VVG}.cli", *WEB_LIBS, *OUTER),
    "services": (f"{VVG}.handlers", f"{VVG}.cli", *AWS_LIBS, *WEB_LIBS, *OUTER),
    "handlers": (f"{VVG}.adapters", f"{VVG}.cli", *AWS_LIBS, *WEB_LIBS, *OUTER),
    "cli": (f"{VVG}.adapters", f"{VVG}.handlers", *AWS_LIBS, *WEB_LIBS, *OUTER),
    "dashboard": (f"{VVG}.adapters", f"{VVG}.handlers", f"{VVG}.cli", *AWS_LIBS, "infra", "bench", "tests"),
    "infra": ("bench", "tests"),
    "host": (f"{VVG}.adapters", f"{VVG}.services", f"{VVG}.handlers", f"{VVG}.cli", f"{VVG}.settings", *AWS_LIBS,
             *WEB_LIBS, *OUTER),
}
# errors.py imports nothing of ours; settings.py only errors.py
BASE_ALLOWED = {VVG: (), f"{VVG}.settings": (f"{VVG}.errors",), f"{VVG}.errors": ()}

# Known edges from services to an AWS library's exception classes (the GUIDE wants them wrapped in the
# adapters). May shrink, never grow: (module, imported module).
SERVICE_LIBRARY_DEBTS = {
    ("vvolguard.services.events", "pynamodb.exceptions"),
    ("vvolguard.services.event_refusals", "pynamodb.exceptions"),
    ("vvolguard.services.keys", "botocore.exceptions"),
    ("vvolguard.services.listing_pages", "pynamodb.exceptions"),
    ("vvolguard.services.listing_pages", "pynamodb.models"),
    ("vvolguard.services.preflight", "botocore.exceptions"),
    ("vvolguard.services.tamper", "pynamodb.exceptions"),
    ("vvolguard.services.users", "pynamodb.exceptions"),
    ("vvolguard.services.vms", "botocore.exceptions"),
}


def layer_of(module: str) -> str | None:
    """The layer of a module of ours by its dotted name, or None for a module outside every layer."""
    parts = module.split(".")
    if parts[0] == VVG:
        if len(parts) == 1 or (len(parts) == 2 and parts[1] in ("settings", "errors")):
            return "base"
        if len(parts) == 2 and parts[1] == "cli":
            return "cli"
        if len(parts) >= 2 and parts[1] in ("domain", "adapters", "services", "handlers"):
            return parts[1]
        return None
    if parts[0] == "infra" and len(parts) > 1 and parts[1] in ("host", "guest"):
        return "host"
    return parts[0] if parts[0] in ("dashboard", "infra") else None


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported name) of every import in ``source``, anywhere in it. ``from a.b import c`` yields
    ``a.b.c`` (c may be a submodule or a name; prefixes decide either way); relative imports are resolved
    against ``module``."""
    out: list[tuple[int, str]] = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.extend((node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base) for alias in node.names)
    return out


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check_source(source: str, module: str, path: str = "<source>", is_package: bool = False) -> list[str]:
    """The forbidden edges of one module, each as ``path:line: layer module imports name (rule)``."""
    layer = layer_of(module)
    if layer is None:
        return [f"{path}:1: {module} belongs to no layer (add it to tests/test_layers.py's layer_of)"]
    problems = []
    for line, name in imports_of(source, module, is_package):
        if layer == "base" and _matches(name, VVG) and not any(_matches(name, a) for a in BASE_ALLOWED[module]):
            problems.append(f"{path}:{line}: {module} (base) imports {name}: the base imports nothing of ours "
                            f"but errors")
            continue
        hit = next((p for p in FORBIDDEN[layer] if _matches(name, p)), None)
        if hit is None:
            continue
        if layer == "services" and (module, ".".join(name.split(".")[:2])) in SERVICE_LIBRARY_DEBTS:
            continue
        problems.append(f"{path}:{line}: {layer} {module} imports {name}: {layer} -> {hit} is forbidden")
    return problems


def our_modules() -> list[tuple[Path, str, bool]]:
    """(path, dotted module name, is a package's __init__) of every module the layers cover."""
    found = []
    for folder, prefix in (("functions/vvolguard", VVG), ("dashboard", "dashboard"), ("infra", "infra")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found.append((path, ".".join([prefix, *parts]), path.name == "__init__.py"))
    for folder in ("infra/host", "infra/guest"):  # the scripts installed on hypervisors and guests
        for path in sorted((ROOT / folder).iterdir()):
            if path.is_file() and path.suffix == "" and path.read_bytes()[:40].startswith(b"#!/usr/bin/env python"):
                found.append((path, f"infra.{path.parent.name}.{path.name.replace('-', '_')}", False))
    return found


def test_no_module_imports_a_layer_above_it():
    problems = []
    for path, module, is_package in our_modules():
        problems += check_source(path.read_text(), module, str(path.relative_to(ROOT)), is_package)
    assert not problems, "forbidden imports (docs/architecture.md, tests/test_layers.py):\n" + "\n".join(problems)


def test_the_walk_covers_every_layer():
    """A guard that reads nothing cannot fail: every layer has modules, the host scripts included."""
    seen = {layer_of(m) for _, m, _ in our_modules()}
    assert seen >= set(FORBIDDEN), set(FORBIDDEN) - seen
    assert len(our_modules()) > 60


def test_the_service_library_debts_are_still_true():
    """An entry of SERVICE_LIBRARY_DEBTS that no longer holds is removed, so the list only shrinks."""
    actual = set()
    for path, module, is_package in our_modules():
        if layer_of(module) == "services":
            for _, name in imports_of(path.read_text(), module, is_package):
                if name.split(".")[0] in AWS_LIBS:
                    actual.add((module, ".".join(name.split(".")[:2])))
    assert SERVICE_LIBRARY_DEBTS - actual == set(), "no longer true: remove them from SERVICE_LIBRARY_DEBTS"


# ---- the checker catches what it should (planted violations in synthetic sources)

def test_checker__catches_a_planted_function_level_import_with_file_line_and_edge():
    src = "import json\n\n\ndef page():\n    from vvolguard.adapters.models import PolicyItem\n    return PolicyItem\n"
    assert check_source(src, "dashboard.pages", "dashboard/pages.py") == [
        "dashboard/pages.py:5: dashboard dashboard.pages imports vvolguard.adapters.models.PolicyItem: "
        "dashboard -> vvolguard.adapters is forbidden"]


def test_checker__catches_each_forbidden_edge_and_passes_the_allowed_ones():
    cases = [
        # (module, source, forbidden?)
        ("vvolguard.domain.engine", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import boto3\n", True),
        ("vvolguard.domain.engine", "from vvolguard.settings import Settings\n", True),
        ("vvolguard.domain.engine", "from vvolguard.adapters import models\n", True),
        ("vvolguard.domain.engine", "from vvolguard.domain.constants import Action\nfrom vvolguard.errors import X\n",
         False),
        ("vvolguard.services.policies", "from ..handlers import events\n", True),  # relative, resolved
        ("vvolguard.services.policies", "from . import users\nfrom vvolguard.adapters.tx import Tx\n", False),
        ("vvolguard.services.policies", "import dashboard.auth\n", True),
        ("vvolguard.services.policies", "def f():\n    from vvolguard import cli\n", True),
        ("vvolguard.services.policies", "import boto3\n", True),
        ("vvolguard.services.policies", "from botocore.exceptions import ClientError\n", True),  # not a listed debt
        ("vvolguard.services.keys", "from botocore.exceptions import ClientError\n", False),  # a listed debt
        ("vvolguard.handlers.events", "from vvolguard.adapters.audit import AuditLog\n", True),
        ("vvolguard.handlers.events", "from vvolguard.services.root import Services\n", False),
        ("vvolguard.adapters.provider", "from vvolguard.services.vms import internal_host\n", True),
        ("vvolguard.adapters.provider", "from vvolguard.domain.policy_diff import RESERVED_HOSTS\n", False),
        ("vvolguard.adapters.audit", "import flask\n", True),
        ("vvolguard.cli", "from botocore.exceptions import ClientError\n", True),
        ("vvolguard.cli", "from vvolguard.adapters import target\n", True),
        ("vvolguard.cli", "from vvolguard.domain.secrets import sign\nfrom vvolguard.services import diagnostics\n",
         False),
        ("dashboard.vms", "from botocore.exceptions import ClientError\n", True),
        ("dashboard.vms", "from vvolguard.handlers.ec2_lifecycle import process\n", True),
        ("dashboard.vms", "from flask import Blueprint\nfrom vvolguard.services.vms import is_ec2_vm\n", False),
        ("vvolguard.errors", "from vvolguard.settings import Settings\n", True),
        ("vvolguard.settings", "from vvolguard.errors import SettingsError\n", False),
        ("vvolguard.settings", "from vvolguard.domain.constants import ROLES\n", True),
        ("infra.local", "from dashboard import create_app\nfrom vvolguard.adapters import aws\n", False),
        ("infra.local", "from tests.conftest import ROOT\n", True),
        ("infra.host.qemu_hook", "from vvolguard.domain.secrets import sign\n", False),
        ("infra.host.qemu_hook", "from vvolguard.services.hosts import HostService\n", True),
    ]
    for module, src, forbidden in cases:
        assert bool(check_source(src, module)) is forbidden, (module, src)


def test_checker__a_module_outside_every_layer_fails():
    assert check_source("", "vvolguard.newlayer.thing") == [
        "<source>:1: vvolguard.newlayer.thing belongs to no layer (add it to tests/test_layers.py's layer_of)"]


# ---- the picture and the table of docs/architecture.md name what exists

ARCH = ROOT / "docs" / "architecture.md"


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_architecture_doc__the_picture_names_every_module_of_the_four_layers():
    """A module added to handlers/, services/, domain/ or adapters/ is drawn in docs/architecture.md's picture."""
    picture = _section(ARCH.read_text(), "The shape").split("```")[1]
    missing = [f"{layer}/{path.name}" for layer in ("handlers", "services", "domain", "adapters")
               for path in sorted((ROOT / "functions" / "vvolguard" / layer).glob("*.py"))
               if path.name != "__init__.py" and not re.search(rf"(?<![\w/]){re.escape(path.stem)}\b", picture)]
    assert missing == [], f"docs/architecture.md's picture does not name: {missing}"


def test_architecture_doc__every_module_and_page_of_the_table_exists():
    text = ARCH.read_text()
    table = _section(text, "Where each behaviour lives")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]
    assert len(rows) >= 30, len(rows)
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", text, re.M)}
    problems = []
    for row in rows:
        behaviour, where, docs = [c.strip() for c in row.strip("|").split(" | ")]
        for token in re.findall(r"`([^`]+)`", where):
            if "/" not in token and "." not in token:
                continue  # a class or constant named beside its module
            if not any((base / token).exists() for base in (ROOT, ROOT / "functions" / "vvolguard")):
                problems.append(f"{behaviour}: no such module {token}")
        links = re.findall(r"\]\(([^)]+)\)", docs)
        if not links:
            problems.append(f"{behaviour}: no user doc")
        for link in links:
            page, _, anchor = link.partition("#")
            if page and not (ARCH.parent / page).exists():
                problems.append(f"{behaviour}: no such page {page}")
            if not page and anchor not in anchors:
                problems.append(f"{behaviour}: no heading #{anchor} in docs/architecture.md")
        if "contract" in row.lower():
            problems.append(f"{behaviour}: users never see the contract; cite docs/")
    assert problems == []
