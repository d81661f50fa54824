"""template.yaml is valid SAM, and it is the single source of truth for tables and routes."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from infra.template import Template
from vvolguard.adapters import models

ROOT = Path(__file__).resolve().parent.parent


# cfn-lint (no errors, no warnings, and that it catches a broken template) runs once, in
# tests/test_deploy_template.py.


def _model_schema(model) -> tuple[list[dict], dict[str, list[dict]]]:
    schema = model._get_schema()
    def norm(ks):  # HASH before RANGE, as the template writes them
        return sorted(({"AttributeName": k["AttributeName"], "KeyType": k["KeyType"]} for k in ks), key=lambda k: k["KeyType"])

    keys = norm(schema["key_schema"])
    gsis = {g["index_name"]: norm(g["key_schema"]) for g in schema.get("global_secondary_indexes", [])}
    return keys, gsis


@pytest.mark.parametrize("setting,model", list(models.MODELS_BY_SETTING.items()))
def test_models__key_schemas_match_template(setting, model):
    from vvolguard.settings import Settings

    tables = {t["TableName"]: t for t in Template().tables()}
    name = getattr(Settings(), setting)
    assert name in tables, f"{name} is not declared in template.yaml"
    keys, gsis = _model_schema(model)
    assert keys == tables[name]["KeySchema"]
    if model is models.StateItem:
        gsis.update(_model_schema(models.PolicyItem)[1])
        gsis.update(_model_schema(models.GrantItem)[1])
    template_gsis = {g["IndexName"]: g["KeySchema"] for g in tables[name].get("GlobalSecondaryIndexes", [])}
    for index, key_schema in gsis.items():
        assert template_gsis.get(index) == key_schema, f"index {index} of {name} differs from template.yaml"


def test_settings_defaults__match_the_template_environment():
    from vvolguard.settings import Settings

    env = Template().environment()
    assert Settings.from_env(env) == Settings(), "the CLI's defaults must be the local stack's names"


def test_no_key_schema_in_code_outside_the_template():
    """Tables are only created from the template: no CreateTable / create_table with a KeySchema in code."""
    offenders = []
    for path in list((ROOT / "functions").rglob("*.py")) + list((ROOT / "infra").rglob("*.py")) + list((ROOT / "dashboard").rglob("*.py")):
        text = path.read_text()
        if "KeySchema" in text and path.name != "template.py" or ".create_table(" in text and "params" not in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_routes__health_is_served_by_a_function():
    routes = {(r.method, r.path): r for r in Template().routes()}
    assert ("GET", "/v1/health") in routes
    assert routes[("GET", "/v1/health")].handler.startswith("vvolguard.handlers.")


HANDLERS = sorted((ROOT / "functions" / "vvolguard").rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("path", HANDLERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_lambda_code__imports_neither_flask_nor_jinja(path):
    assert not _imports(path) & {"flask", "jinja2", "flask_wtf", "werkzeug", "dashboard"}


def test_lambda_handlers__import_path_stays_light():
    """Importing every handler in a fresh interpreter loads no Flask or Jinja module at all."""
    handlers = sorted({r.handler.rpartition(".")[0] for r in Template().routes()})
    code = ("import sys; sys.path.insert(0, 'functions');" + "".join(f"import {m};" for m in handlers) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'jinja2', 'werkzeug'));"
            "print(','.join(bad))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ""
