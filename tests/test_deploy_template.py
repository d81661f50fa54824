"""template.yaml deploys what the code needs, and no more: lint-clean, transformable offline, least
privilege, every table protected, every environment variable the code reads set where the code runs, and
the dashboard's packaging importable as Lambda lays it out."""
from __future__ import annotations

import ast
import fnmatch
import json
import re
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pytest

from infra.template import Template, load

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
CFN_LINT = Path(sys.executable).with_name("cfn-lint")
DASHBOARD_DEPS = ROOT / "infra" / "lambda" / "dashboard-deps" / "requirements.txt"
FUNCTION_DEPS = ROOT / "functions" / "requirements.txt"

# Variables the code reads that must never be set in AWS (each with the reason).
LOCAL_ONLY = {
    "VVG_DASHBOARD_INSECURE_COOKIES": "session cookies without Secure, for plain http on loopback (make run)",
    "VVG_EC2_POLL_SECONDS": "the local stack's poller of EC2 instance states; in AWS an EventBridge rule (docs/ec2-vms.md)",
}
# Variables read only by the `vvg` CLI on an operator's machine, never by a function.
CLI_ONLY_MODULES = {"vvolguard.cli"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load(TEMPLATE)


@pytest.fixture(scope="module")
def resources(doc) -> dict[str, dict[str, Any]]:
    return doc["Resources"]


# ---------------------------------------------------------------- cfn-lint


@pytest.fixture(scope="module")
def linted(tmp_path_factory, transformed) -> dict[str, list[str]]:
    """One cfn-lint run over the template and the variants the tests below need (each start of cfn-lint
    costs seconds): file name -> its finding lines (parseable format: path:line:col:line:col:RULE:message)."""
    d = tmp_path_factory.mktemp("lint")
    # a DependsOn that a GetAtt already enforces is a warning (W3005)
    head = "  EventsRole:\n    Type: AWS::IAM::Role\n"
    text = TEMPLATE.read_text()
    assert head in text
    (d / "warning.yaml").write_text(text.replace(head, head + "    DependsOn: StateTable\n", 1))
    # a table without a key schema is an error
    key = "      KeySchema:\n        - {AttributeName: host_id, KeyType: HASH}\n"
    assert key in text
    (d / "broken.yaml").write_text(text.replace(key, "", 1))
    (d / "transformed.json").write_text(json.dumps(transformed))
    files = {"template": TEMPLATE, "warning": d / "warning.yaml", "broken": d / "broken.yaml",
             "transformed": d / "transformed.json"}
    p = subprocess.run([str(CFN_LINT), "--format", "parseable", "--", *map(str, files.values())],
                       capture_output=True, text=True)
    assert p.returncode in (0, 2, 4, 6, 8, 10, 12, 14), p.stdout + p.stderr  # 1 would be a crash of cfn-lint
    out: dict[str, list[str]] = {name: [] for name in files}
    for line in p.stdout.splitlines():
        for name, path in files.items():
            if line.startswith(str(path) + ":"):
                out[name].append(line)
    assert sum(map(len, out.values())) == len([ln for ln in p.stdout.splitlines() if ln.strip()]), p.stdout
    return out


def rule_of(line: str) -> str:
    return line.split(":")[5] if line.count(":") >= 6 else ""


def test_cfn_lint__no_errors_and_no_warnings(linted):
    assert linted["template"] == [], "\n".join(linted["template"])


def test_cfn_lint__a_warning_fails_the_lint_test(linted):
    """The strict test above can fail: a DependsOn that a GetAtt already enforces is a warning (W3005)."""
    assert "W3005" in {rule_of(line) for line in linted["warning"]}, linted["warning"]


def test_cfn_lint__catches_a_broken_template(linted):
    """The lint test can fail: a table without a key schema is an error."""
    assert any(rule_of(line).startswith("E") for line in linted["broken"]), linted["broken"]


# ---------------------------------------------------------------- the SAM transform, offline


def packaged(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as `sam package` hands it to CloudFormation: local code paths become S3 objects."""
    from samtranslator.yaml_helper import yaml_parse

    d = yaml_parse(path.read_text())
    d["Globals"]["Function"]["CodeUri"] = "s3://vvolguard-artifacts/functions.zip"
    for name, res in d["Resources"].items():
        props = res.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = f"s3://vvolguard-artifacts/{name}.zip"
    return d


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    return sam_transform({})


def sam_transform(params: dict[str, str]) -> dict[str, Any]:
    """samtranslator's transform with no AWS account: no network, no managed-policy lookups."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            raise AssertionError("the template names no AWS managed policy: nothing to look up")

    real_connect = socket.socket.connect

    def offline(self, address):  # any connection attempt during the transform fails the test
        raise AssertionError(f"the SAM transform tried to connect to {address}")

    socket.socket.connect = offline
    try:
        return transform(packaged(), params, NoManagedPolicies())
    finally:
        socket.socket.connect = real_connect


def test_sam_transform__runs_offline_and_makes_the_expected_resources(transformed):
    kinds: dict[str, list[str]] = {}
    for name, res in transformed["Resources"].items():
        kinds.setdefault(res["Type"], []).append(name)
    assert sorted(kinds["AWS::Lambda::Function"]) == ["DashboardFunction", "Ec2LifecycleFunction", "EventsFunction",
                                                     "HealthFunction", "ReconcileFunction"]
    assert len(kinds["AWS::Lambda::LayerVersion"]) == 2
    assert len(kinds["AWS::ApiGatewayV2::Api"]) == 1 and len(kinds["AWS::ApiGatewayV2::Stage"]) == 1
    rules = [transformed["Resources"][r]["Properties"] for r in kinds["AWS::Events::Rule"]]
    assert [r["ScheduleExpression"] for r in rules if "ScheduleExpression" in r] == ["rate(1 minute)"]
    (ec2_rule,) = [r for r in rules if "EventPattern" in r]  # docs/ec2-vms.md
    assert ec2_rule["EventPattern"]["detail-type"] == ["EC2 Instance State-change Notification"]
    assert all(t["DeadLetterConfig"]["Arn"] for t in ec2_rule["Targets"])
    assert len(kinds["AWS::DynamoDB::Table"]) == 5
    # SAM made no role of its own: every function runs with the role written here.
    assert sorted(kinds["AWS::IAM::Role"]) == ["DashboardRole", "Ec2LifecycleRole", "EventsRole", "HealthRole",
                                              "ProviderRole", "ReconcileRole"]


def test_sam_transform__routes_webhook_and_dashboard_on_one_api(transformed):
    api = next(r for r in transformed["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Api")
    paths = api["Properties"]["Body"]["paths"]
    routes = {(p, m) for p, ops in paths.items() for m in ops}
    assert {("/v1/events", "post"), ("/v1/health", "get"), ("/", "x-amazon-apigateway-any-method"),
            ("/{proxy+}", "x-amazon-apigateway-any-method")} <= routes
    uri = lambda p, m: json.dumps(paths[p][m]["x-amazon-apigateway-integration"]["uri"])  # noqa: E731
    assert "EventsFunction" in uri("/v1/events", "post") and "HealthFunction" in uri("/v1/health", "get")
    assert "DashboardFunction" in uri("/{proxy+}", "x-amazon-apigateway-any-method")
    # API Gateway picks the most specific route: the greedy dashboard route never takes /v1/events or /v1/health.


def test_sam_transform__other_parameter_values_too():
    out = sam_transform({"Prefix": "acme", "Stage": "dev", "DeletionProtection": "false", "AlarmEmail": "ops@example.com"})
    assert "AlarmEmailSubscription" in out["Resources"]


def test_sam_transform__its_output_lints_without_errors(linted):
    # W1020: SAM itself writes layer names as Fn::Sub after substituting the parameters.
    other = [line for line in linted["transformed"] if rule_of(line) != "W1020"]
    assert other == [], "\n".join(other)


# ---------------------------------------------------------------- IAM: least privilege


def _walk(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def statements(template: dict[str, Any]) -> Iterator[tuple[str, tuple, dict[str, Any]]]:
    """Every policy statement of every resource: (resource, path, statement)."""
    for name, res in template["Resources"].items():
        for path, node in _walk(res.get("Properties", {})):
            if isinstance(node, dict) and "Statement" in node:
                for st in node["Statement"] if isinstance(node["Statement"], list) else [node["Statement"]]:
                    yield name, path, st


def _actions(st: dict[str, Any]) -> list[str]:
    a = st.get("Action", [])
    return [a] if isinstance(a, str) else list(a)


@pytest.mark.parametrize("which", ["template", "transformed"])
def test_iam__no_wildcard_in_any_action(which, doc, transformed):
    template = doc if which == "template" else transformed
    found = 0
    for path, node in _walk(template["Resources"]):
        if path and path[-1] in ("Action", "NotAction") and isinstance(node, (str, list)):
            for action in [node] if isinstance(node, str) else node:
                found += 1
                assert isinstance(action, str) and "*" not in action, f"{path}: {action}"
    assert found > 50
    for name, path, st in statements(template):
        assert "NotAction" not in st and "NotResource" not in st and "NotPrincipal" not in st, (name, path)
        assert st.get("Effect") == "Allow" or st.get("Sid") == SNAPSHOT_DENY, (name, st)


SNAPSHOT_DENY = "NoSnapshotsOfKeyVolumes"


def test_iam__every_role_of_the_stack_is_denied_snapshots_of_managed_volumes(doc):
    """docs/key-volume.md: no copy of a key volume outlives its provisioning, whatever else a role is given."""
    holders = [n for n, r in doc["Resources"].items() if r["Type"] in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy")]
    assert len(holders) >= 6
    for name in holders:
        denies = [st for n, path, st in statements(doc) if n == name and st.get("Effect") == "Deny"]
        assert len(denies) == 1, name
        (st,) = denies
        assert st["Sid"] == SNAPSHOT_DENY and set(_actions(st)) == {"ec2:CreateSnapshot", "ec2:CreateSnapshots",
                                                                   "ec2:CopySnapshot"}, name
        assert st["Resource"] == "*" and st["Condition"] == {"Null": {"ec2:ResourceTag/vvg:volume-id": "false"}}, name
    granted_anywhere = {a for _, _, st in statements(doc) if st.get("Effect") == "Allow" for a in _actions(st)}
    assert not granted_anywhere & {"ec2:CreateSnapshot", "ec2:CreateSnapshots", "ec2:CopySnapshot"}


def test_keys__key_volumes_key_is_used_only_by_the_provider_role(resources):
    key = resources["KeyVolumesKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    use = {"kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey",
           "kms:GenerateDataKeyWithoutPlaintext", "kms:CreateGrant"}
    for st in key["KeyPolicy"]["Statement"]:
        if set(_actions(st)) & use:
            assert st["Principal"] == {"AWS": {"Fn::GetAtt": ["ProviderRole", "Arn"]}}, st["Sid"]
    (grant,) = [st for st in key["KeyPolicy"]["Statement"] if "kms:CreateGrant" in _actions(st)]
    assert grant["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}
    assert resources["KeyVolumesKeyAlias"]["Properties"]["AliasName"] == {"Fn::Sub": "alias/${Prefix}-key-volumes"}


def test_iam__every_action_is_a_real_one():
    """Each action exists in cfn-lint's IAM data (a typo would silently grant nothing)."""
    import cfnlint

    data = json.loads((Path(cfnlint.__file__).parent / "data" / "AdditionalSpecs" / "Policies.json").read_text())
    for name, path, st in statements(load(TEMPLATE)):
        for action in _actions(st):
            service, _, op = action.partition(":")
            assert op.lower() in data[service]["Actions"], f"{name}: {action}"


def test_iam__resource_star_only_where_aws_requires_it(doc):
    describe_only = {"ec2:DescribeVolumes", "ec2:DescribeInstances", "ec2:DescribeTags", "ec2:DescribeSnapshots",
                     "ec2:DescribeInstanceStatus"}
    for name, path, st in statements(doc):
        if st.get("Effect") == "Deny":
            continue
        res = st.get("Resource")
        if res == "*" or (isinstance(res, list) and "*" in res):
            in_key_policy = doc["Resources"][name]["Type"] == "AWS::KMS::Key"  # "*" there means the key itself
            assert in_key_policy or set(_actions(st)) <= describe_only, (name, st)


def test_iam__function_roles_reach_only_this_stacks_tables_keys_and_secret(doc):
    own = {n for n, r in doc["Resources"].items()
           if r["Type"] in ("AWS::DynamoDB::Table", "AWS::KMS::Key", "AWS::SecretsManager::Secret",
                            "AWS::Logs::LogGroup")}
    for name, path, st in statements(doc):
        if doc["Resources"][name]["Type"] not in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy") or \
                path[0] == "AssumeRolePolicyDocument" or name == "ProviderRole":
            continue
        services = {a.split(":")[0] for a in _actions(st)}
        if services & {"dynamodb", "kms", "secretsmanager", "logs"}:
            refs = {json.dumps(r) for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])}
            for r in refs:
                assert any(f'"{o}"' in r or "${" + o + "." in r for o in own), f"{name}: {st.get('Sid')} -> {r}"


def test_iam__functions_get_only_what_their_code_calls(doc):
    def granted(role: str) -> set[str]:
        return {a for name, _, st in statements(doc) if name == role and st.get("Principal") is None
                and st.get("Effect") == "Allow" for a in _actions(st)}

    assert granted("HealthRole") == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert "dynamodb:Scan" not in granted("EventsRole") and "kms:Encrypt" not in granted("EventsRole")
    assert "kms:Decrypt" in granted("EventsRole")  # host secrets, to check signatures
    assert "kms:Encrypt" in granted("DashboardRole") and not {"ec2:DescribeVolumes"} & granted("DashboardRole")
    assert "ec2:DescribeVolumes" in granted("ReconcileRole")
    for role in ("EventsRole", "ReconcileRole", "DashboardRole", "HealthRole", "Ec2LifecycleRole"):
        assert not {a for a in granted(role) if a.startswith("ec2:")
                    and a not in ("ec2:DescribeVolumes", "ec2:DescribeSnapshots")}, role
        assert "iam:PassRole" not in granted(role)


# ---------------------------------------------------------------- the provider role


def test_provider_role__trust_requires_an_external_id_and_the_host_tag(resources):
    trust = resources["ProviderRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assume = [st for st in trust if "sts:AssumeRole" in _actions(st)]
    assert assume and all(st["Condition"]["Null"] == {"sts:ExternalId": "false", "aws:RequestTag/vvg:host-id": "false"}
                          for st in assume)
    tag = [st for st in trust if "sts:TagSession" in _actions(st)]
    assert tag and all(st["Condition"]["ForAllValues:StringEquals"] == {"aws:TagKeys": ["vvg:host-id"]} for st in tag)


def _provider_statements(resources, action: str) -> list[dict[str, Any]]:
    doc = resources["ProviderRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    return [st for st in doc["Statement"] if action in _actions(st)]


@pytest.mark.parametrize("action", ["ec2:AttachVolume", "ec2:DetachVolume"])
def test_provider_role__attach_and_detach_only_volumes_whose_hosts_tag_lists_the_session_host(resources, action):
    on_volumes = [st for st in _provider_statements(resources, action) if "volume/" in json.dumps(st["Resource"])]
    assert len(on_volumes) == 1
    patterns = on_volumes[0]["Condition"]["StringLike"]["ec2:ResourceTag/vvg:hosts"]

    def allowed(host: str, tag: str) -> bool:  # IAM StringLike: * is any run of characters
        return any(fnmatch.fnmatchcase(tag, p.replace("${aws:PrincipalTag/vvg:host-id}", host)) for p in patterns)

    for tag in ("h1", "h1,h2", "h0,h1", "h0,h1,h2"):
        assert allowed("h1", tag), tag
    for tag in ("h10", "xh1", "h10,h2", "h0,h11", "", "h0,h2", "h1x,h2"):
        assert not allowed("h1", tag), tag
    on_instances = [st for st in _provider_statements(resources, action) if "instance/" in json.dumps(st["Resource"])]
    assert on_instances and on_instances[0]["Condition"] == {"Null": {"ec2:ResourceTag/vvg:vm-id": "false"}}


def test_provider_role__creates_encrypted_volumes_for_the_session_host_only(resources):
    (st,) = _provider_statements(resources, "ec2:CreateVolume")
    assert st["Condition"]["StringEquals"] == {"aws:RequestTag/vvg:hosts": "${aws:PrincipalTag/vvg:host-id}"}
    assert st["Condition"]["Bool"] == {"ec2:Encrypted": "true"}


# ---------------------------------------------------------------- tables, keys, logs, alarms


def tables(resources) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in resources.items() if r["Type"] == "AWS::DynamoDB::Table"}


def test_tables__every_one_has_pitr_sse_and_deletion_protection_from_the_parameter(resources):
    assert len(tables(resources)) == 5
    for name, res in tables(resources).items():
        p = res["Properties"]
        assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}, name
        # Encrypted under the stack's own key, not an AWS-owned one (checkov CKV_AWS_119).
        assert p["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": {"Ref": "DataKey"}}, name
        assert p["DeletionProtectionEnabled"] == {"Fn::If": ["Protect", True, False]}, name
        assert p["BillingMode"] == "PAY_PER_REQUEST", name


def test_tables__deletion_protection_parameter_resolves(doc):
    assert doc["Parameters"]["DeletionProtection"]["Default"] == "true"
    for value, want in (("true", True), ("false", False)):
        t = Template(parameters={"DeletionProtection": value})
        for res in tables(t.resources).values():
            assert t.resolve(res["Properties"])["DeletionProtectionEnabled"] is want


def test_tables__records_that_expire_have_ttl_on_their_expiry_attribute(resources):
    from vvolguard.adapters.models import EventItem, LimitItem, UserItem

    ttl = {n: r["Properties"].get("TimeToLiveSpecification") for n, r in tables(resources).items()}
    assert ttl.pop("EventsTable") == {"AttributeName": "expires_at", "Enabled": True}
    assert EventItem.expires_at.attr_type == "N"  # epoch seconds, as DynamoDB's TTL needs
    # the users table's sign-in limit counters expire; its users carry no expires_at, so they never do
    assert ttl.pop("UsersTable") == {"AttributeName": "expires_at", "Enabled": True}
    assert LimitItem.expires_at.attr_type == "N" and "expires_at" not in UserItem.get_attributes()
    # the state table: only alerts and their short-lived counters carry purge_at (docs/alerts.md)
    from vvolguard.adapters.models import AlertItem, AlertKeyItem, PolicyItem, SigFailItem

    assert ttl.pop("StateTable") == {"AttributeName": "purge_at", "Enabled": True}
    assert all(m.purge_at.attr_type == "N" for m in (AlertItem, AlertKeyItem, SigFailItem))
    assert "purge_at" not in PolicyItem.get_attributes()
    assert set(ttl.values()) == {None}  # hosts and the audit history never expire


def test_keys__host_secrets_and_audit_key_use_the_stacks_keys_with_rotation(resources):
    env = load(TEMPLATE)["Globals"]["Function"]["Environment"]["Variables"]
    assert env["VVG_HOST_SECRETS_KEY_ID"] == {"Ref": "HostSecretsKeyAlias"}
    assert resources["HostSecretsKeyAlias"]["Properties"]["TargetKeyId"] == {"Ref": "HostSecretsKey"}
    assert env["VVG_AUDIT_KEY_SECRET_ID"] == {"Ref": "AuditKeySecret"}
    assert resources["AuditKeySecret"]["Properties"]["KmsKeyId"] == {"Ref": "DataKey"}
    for key in ("HostSecretsKey", "DataKey"):
        assert resources[key]["Properties"]["EnableKeyRotation"] is True
    # The audit history, and what verifies and decrypts it, outlive the stack.
    for name in ("AuditTable", "AuditKeySecret", "HostSecretsKey", "DataKey"):
        assert resources[name]["DeletionPolicy"] == "Retain" and resources[name]["UpdateReplacePolicy"] == "Retain"


def test_logs__every_function_logs_to_its_own_group_with_retention(resources):
    t = Template()
    for name in t.of_type("AWS::Serverless::Function"):
        group = t.function(name)["LoggingConfig"]["LogGroup"]["Ref"]
        props = resources[group]["Properties"]
        assert props["RetentionInDays"] == {"Ref": "LogRetentionDays"} and props["KmsKeyId"], name
    assert resources["ApiAccessLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_alarms__errors_of_every_function_throttles_of_every_table_all_to_the_topic(resources):
    alarms = {n: r["Properties"] for n, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    errors = {a["Dimensions"][0]["Value"]["Ref"] for a in alarms.values() if a.get("MetricName") == "Errors"}
    functions = {n for n, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    assert errors == functions
    throttled = set()
    for a in alarms.values():
        for m in a.get("Metrics", []):
            stat = m.get("MetricStat", {}).get("Metric", {})
            if stat.get("MetricName") in ("ReadThrottleEvents", "WriteThrottleEvents"):
                throttled.add(stat["Dimensions"][0]["Value"]["Ref"])
    assert throttled == set(tables(resources))
    for name, a in alarms.items():
        assert a["AlarmActions"] == [{"Ref": "AlarmTopic"}] and a["TreatMissingData"] == "notBreaching", name


def test_parameters_and_outputs(doc):
    assert {"Stage", "Prefix", "DeletionProtection"} <= set(doc["Parameters"])
    assert {"ApiUrl", "DashboardUrl"} <= set(doc["Outputs"])
    cli = doc["Outputs"]["CliEnvironment"]["Value"]["Fn::Sub"]
    for var in Template().environment():
        if var != "VVG_MIGRATION_GRANT_SECONDS":  # the reconciler's setting; the CLI's default is the same
            assert f"{var}=" in cli, var  # everything else `vvg` needs against real AWS
    assert "AWS_ENDPOINT_URL" not in cli  # real AWS: no endpoint override


# ---------------------------------------------------------------- environment: every variable the code reads


def _module_path(module: str) -> Path | None:
    top, *rest = module.split(".")
    base = {"vvolguard": ROOT / "functions" / "vvolguard", "dashboard": ROOT / "dashboard"}.get(top)
    if base is None:
        return None
    path = base.joinpath(*rest)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_closure(module: str) -> set[str]:
    """Every vvolguard / dashboard module ``module`` can import, lazily imported ones included."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        path = _module_path(mod)
        if mod in seen or path is None:
            continue
        seen.add(mod)
        parts = mod.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(".".join(parts[:i]))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]
    return seen


def env_reads(path: Path) -> set[str]:
    """VVG_* names read from the environment: os.environ.get / [] / os.getenv, or a name bound to os.environ."""
    tree = ast.parse(path.read_text())
    env_names = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and "environ" in ast.unparse(node.value)
                 for t in node.targets if isinstance(t, ast.Name)}

    def is_env(expr: ast.AST) -> bool:
        text = ast.unparse(expr)
        return text.endswith("environ") or (isinstance(expr, ast.Name) and expr.id in env_names)

    out = set()
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            if isinstance(f, ast.Attribute) and ((f.attr == "get" and is_env(f.value)) or f.attr == "getenv"):
                key = node.args[0].value
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_env(node.value) and \
                isinstance(node.slice, ast.Constant):
            key = node.slice.value
        if isinstance(key, str) and key.startswith("VVG_"):
            out.add(key)
    return out


def test_env_reads__finds_what_settings_and_the_dashboard_read():
    """The scanner itself: it sees Settings' `e.get(...)` and the dashboard's os.environ reads."""
    settings = env_reads(ROOT / "functions" / "vvolguard" / "settings.py")
    assert {"VVG_STATE_TABLE", "VVG_PROVIDER_ROLE_ARN", "VVG_MIGRATION_GRANT_SECONDS"} <= settings
    assert {"VVG_DASHBOARD_SECRET_KEY", "VVG_DASHBOARD_INSECURE_COOKIES"} <= env_reads(ROOT / "dashboard" / "__init__.py")
    assert "VVG_LOGIN_FAIL_DELAY" not in env_reads(ROOT / "dashboard" / "auth.py")  # a Flask config key, not env


def _function_env(name: str) -> dict[str, Any]:
    return Template().function(name).get("Environment", {}).get("Variables", {})


FUNCTIONS = sorted(Template().of_type("AWS::Serverless::Function"))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_env__every_variable_the_functions_code_reads_is_set_on_it(function):
    handler_module = Template().function(function)["Handler"].rpartition(".")[0]
    modules = imported_closure(handler_module) - CLI_ONLY_MODULES
    assert handler_module in modules
    reads = set().union(*(env_reads(_module_path(m)) for m in modules))
    env = _function_env(function)
    missing = sorted(reads - set(env) - set(LOCAL_ONLY))
    assert missing == [], f"{function} runs code that reads {missing}; set them in template.yaml"
    assert not set(env) & set(LOCAL_ONLY), f"{function} must not set {set(env) & set(LOCAL_ONLY)} in AWS"


def test_env__every_variable_read_anywhere_is_set_on_some_function_or_local_only():
    files = [p for p in (ROOT / "functions" / "vvolguard").rglob("*.py") if p.name != "cli.py"]
    files += list((ROOT / "dashboard").rglob("*.py"))
    reads = set().union(*(env_reads(p) for p in files))
    set_somewhere = set().union(*(set(_function_env(f)) for f in FUNCTIONS))
    assert sorted(reads - set_somewhere - set(LOCAL_ONLY)) == []


def test_env__the_dashboard_session_key_is_the_same_in_every_container(resources):
    value = _function_env("DashboardFunction")["VVG_DASHBOARD_SECRET_KEY"]
    assert value == {"Fn::Sub": "{{resolve:secretsmanager:${DashboardSessionSecret}:SecretString}}"}
    assert resources["DashboardSessionSecret"]["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32


# ---------------------------------------------------------------- packaging


def _requirements(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return out


def test_packaging__lambda_pins_are_the_repositorys_pins():
    root = _requirements(ROOT / "requirements.txt")
    for path in (FUNCTION_DEPS, DASHBOARD_DEPS):
        for name, version in _requirements(path).items():
            assert version, f"{path.name}: {name} is not pinned"
            want = root.get(name) or metadata.version(name)  # a transitive one: the version the tests run with
            assert version == want, f"{path.relative_to(ROOT)}: {name}=={version}, the tests run {want}"


def test_packaging__aws_sam_translator_is_pinned_to_the_installed_version():
    assert _requirements(ROOT / "requirements-dev.txt")["aws-sam-translator"] == metadata.version("aws-sam-translator")


def _closure(names: set[str]) -> set[str]:
    """Distributions ``names`` bring in (their requirements, transitively, without extras)."""
    from packaging.requirements import Requirement

    out, todo = set(), list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in out:
            continue
        out.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def test_packaging__every_third_party_import_of_the_dashboard_is_in_its_layers():
    modules = imported_closure("dashboard.lambda_handler") - CLI_ONLY_MODULES
    third_party = set()
    for m in modules:
        for node in ast.walk(ast.parse(_module_path(m).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            third_party |= {n.split(".")[0] for n in names}
    third_party -= set(sys.stdlib_module_names) | {"vvolguard", "dashboard", "__future__"}
    packaged_dists = _closure(set(_requirements(DASHBOARD_DEPS)) | set(_requirements(FUNCTION_DEPS)))
    dists = metadata.packages_distributions()
    for module in sorted(third_party):
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [])}
        assert names & packaged_dists, f"the dashboard imports {module} ({names}), which no layer packages"


def test_packaging__the_dashboard_runs_from_the_layout_sam_build_makes(tmp_path):
    """Like `sam build`: the function's code is dashboard/ as the package `dashboard` (/var/task), the
    vvolguard package comes from VvolguardLayer (/opt/python), third-party packages from the layers.
    Run with -I -S so nothing of this checkout (editable installs, cwd) is importable by accident."""
    task, opt = tmp_path / "task", tmp_path / "opt" / "python"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "dashboard", task / "dashboard", ignore=ignore)
    shutil.copytree(ROOT / "functions" / "vvolguard", opt / "vvolguard", ignore=ignore)
    site = [p for p in sys.path if p.endswith("site-packages")]
    code = f"""
import json, sys
sys.path[:0] = {[str(task), str(opt)]!r} + {site!r}
import dashboard, vvolguard
assert dashboard.__file__.startswith({str(task)!r}) and vvolguard.__file__.startswith({str(opt)!r})
from dashboard.lambda_handler import handler
def call(path):
    ev = {{"version": "2.0", "routeKey": "ANY /{{proxy+}}", "rawPath": path, "rawQueryString": "",
          "headers": {{"host": "abc.execute-api.eu-west-1.amazonaws.com", "x-forwarded-proto": "https"}},
          "requestContext": {{"http": {{"method": "GET", "path": path, "protocol": "HTTP/1.1",
                                       "sourceIp": "192.0.2.1", "userAgent": "t"}}, "stage": "$default"}},
          "isBase64Encoded": False}}
    return handler(ev, None)
health, login = call("/healthz"), call("/login")
print(json.dumps([health["statusCode"], login["statusCode"], login.get("cookies", [])]))
"""
    env = {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "VVG_DASHBOARD_SECRET_KEY": "k" * 64, "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    health, login, cookies = json.loads(p.stdout.strip().splitlines()[-1])
    assert (health, login) == (200, 200)
    assert cookies and all("Secure" in c and "HttpOnly" in c for c in cookies)  # no local-only insecure cookies


def test_packaging__the_local_gateway_serves_only_the_webhook_functions():
    local = {(r.method, r.path) for r in Template().routes()}
    everything = {(r.method, r.path) for r in Template().routes(None)}
    assert local == {("GET", "/v1/health"), ("POST", "/v1/events")}
    assert everything - local == {("ANY", "/"), ("ANY", "/{proxy+}")}
    assert all(r.handler == "dashboard.lambda_handler.handler" for r in Template().routes(None)
               if (r.method, r.path) not in local)


# ---------------------------------------------------------------- IAM: every call the code makes is granted
#
# The real code runs under moto (which checks no IAM) with a botocore hook recording every AWS call; each
# call is then checked against the role the template gives the code that made it: the function's role,
# or ProviderRole for the calls made with a host's assumed-role session. An AccessDenied in AWS that the
# local stack can never show is caught here. (Conditions are checked by the provider-role tests above.)


class Calls:
    """(service, operation, params, access key) of every call of every vvolguard client, while on."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict, str]] = []
        self.assumed: set[str] = set()  # access keys of the STS sessions handed out (the provider role's)
        self.on = False

    def assumed_role(self, parsed=None, **_: Any) -> None:
        """after-call.sts.AssumeRole: remember the session's key, to tell its calls apart."""
        key = ((parsed or {}).get("Credentials") or {}).get("AccessKeyId")
        if key:
            self.assumed.add(key)

    def api_params(self, params, context=None, **_: Any) -> None:
        """before-parameter-build: the call's API parameters, kept in the call's context."""
        if self.on and context is not None:
            context["vvg_api_params"] = json.loads(json.dumps(params, default=str))

    def hook(self, model, request_signer=None, context=None, **_: Any) -> None:
        """before-call: the same call, now with the credentials that sign it."""
        if self.on:
            creds = getattr(request_signer, "_credentials", None)
            self.items.append((model.service_model.service_name, model.name, (context or {}).get("vvg_api_params", {}),
                               getattr(creds, "access_key", "") or ""))

    def __enter__(self) -> "Calls":
        """Start recording, from cold: no cached key or host secret hides a call."""
        from vvolguard.adapters import aws as aws_adapter
        from vvolguard.handlers import events as events_handler

        aws_adapter.audit_key.cache_clear()
        aws_adapter._secret_cache.clear()
        events_handler.reset()
        self.on = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.on = False


@pytest.fixture
def calls(aws):
    from vvolguard.adapters import aws as aws_adapter

    c = Calls()
    aws_adapter.add_hook("before-parameter-build", c.api_params)
    aws_adapter.add_hook("before-call", c.hook)
    aws_adapter.add_hook("after-call.sts.AssumeRole", c.assumed_role)
    yield c
    aws_adapter.remove_hook("after-call.sts.AssumeRole", c.assumed_role)
    aws_adapter.remove_hook("before-call", c.hook)
    aws_adapter.remove_hook("before-parameter-build", c.api_params)


ACCOUNT, REGION = "123456789012", "us-east-1"


def needed(service: str, op: str, params: dict) -> list[tuple[str, str]]:
    """The (IAM action, resource ARN) pairs one call needs, with the local stack's ARN shapes."""
    table = lambda name, index=None: f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}" + (  # noqa: E731
        f"/index/{index}" if index else "")
    if service == "dynamodb":
        if op == "TransactWriteItems":
            kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}
            return [(f"dynamodb:{kinds[k]}", table(v["TableName"])) for item in params["TransactItems"] for k, v in item.items()]
        if op == "BatchGetItem":
            return [("dynamodb:BatchGetItem", table(name)) for name in params["RequestItems"]]
        if op == "TransactGetItems":
            return [("dynamodb:GetItem", table(i["Get"]["TableName"])) for i in params["TransactItems"]]
        return [(f"dynamodb:{op}", table(params["TableName"], params.get("IndexName")))]
    if service == "kms" and op in ("Sign", "Verify"):  # the audit checkpoints' signing key
        return [(f"kms:{op}", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/AuditCheckpointKey")]
    if service == "s3":  # the audit checkpoints (S3 encrypts under DataKey server-side, as the caller)
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if op == "ListObjectVersions":
            return [("s3:ListBucketVersions", bucket)]
        if op == "GetObject":
            return [("s3:GetObjectVersion" if params.get("VersionId") else "s3:GetObject", f"{bucket}/{params['Key']}")]
        return [(f"s3:{op}", f"{bucket}/{params['Key']}")]
    if service == "kms":  # the host secrets' key, or (provider sessions) the key volumes' key
        context = params.get("EncryptionContext", {})
        if op == "DescribeKey" or "vvg:volume-id" in context:
            assert op == "DescribeKey" or "vvg:entry" in context, "an escrowed entry is bound to its volume and name"
            return [(f"kms:{op}", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/KeyVolumesKey")]
        assert "vvg:host-id" in context, "a host secret is bound to its host id"
        return [(f"kms:{op}", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/HostSecretsKey")]
    if service == "ebs":
        return [(f"ebs:{op}", f"arn:aws:ec2:{REGION}::snapshot/*")]
    if service == "sns":  # the security alerts' topic (docs/alerts.md)
        assert op == "Publish", op
        return [("sns:Publish", params["TopicArn"])]
    if service == "secretsmanager":
        return [(f"secretsmanager:{op}", params["SecretId"])]
    if service == "sts" and op == "GetCallerIdentity":  # the CLI's audit actor; IAM never restricts this call
        return []
    if service == "sts":
        return [("sts:AssumeRole", params["RoleArn"])] + ([("sts:TagSession", params["RoleArn"])] if params.get("Tags") else [])
    if service == "ec2":
        arn = lambda kind, rid: f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{rid}"  # noqa: E731
        if op in ("AttachVolume", "DetachVolume"):
            out = [(f"ec2:{op}", arn("volume", params["VolumeId"]))]
            return out + ([(f"ec2:{op}", arn("instance", params["InstanceId"]))] if params.get("InstanceId") else [])
        if op == "CreateVolume":
            snap = [("ec2:CreateVolume", f"arn:aws:ec2:{REGION}::snapshot/{params['SnapshotId']}")] \
                if params.get("SnapshotId") else []
            return [("ec2:CreateVolume", arn("volume", "*"))] + snap
        if op == "CreateTags":
            return [("ec2:CreateTags", arn("volume", r)) for r in params["Resources"]]
        if op == "DeleteVolume":
            return [("ec2:DeleteVolume", arn("volume", params["VolumeId"]))]
        if op in ("StartInstances", "StopInstances"):  # EC2 VMs (docs/ec2-vms.md)
            return [(f"ec2:{op}", arn("instance", i)) for i in params["InstanceIds"]]
        if op == "DeleteSnapshot":
            return [("ec2:DeleteSnapshot", f"arn:aws:ec2:{REGION}::snapshot/{params['SnapshotId']}")]
        return [(f"ec2:{op}", "*")]
    raise AssertionError(f"unexpected call {service}:{op}")


def granted(logical_id: str) -> list[dict[str, Any]]:
    """The resolved Allow statements of a role or managed policy (local names and ARNs); for ProviderRole,
    also what the key volumes' key policy grants it by name."""
    t = Template()
    props = t.resolve(t.resources[logical_id]["Properties"])
    docs = [props["PolicyDocument"]] if "PolicyDocument" in props else [p["PolicyDocument"] for p in props["Policies"]]
    out = [st for d in docs for st in d["Statement"] if st.get("Effect") == "Allow"]
    if logical_id == "ProviderRole":
        key = t.resolve(t.resources["KeyVolumesKey"]["Properties"]["KeyPolicy"])
        role_arn = t.getatt("ProviderRole", "Arn")
        out += [{**st, "Resource": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/KeyVolumesKey"} for st in key["Statement"]
                if st.get("Principal", {}).get("AWS") == role_arn
                and not st.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")]
    return out


def allows(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    for st in statements:
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if action in _actions(st) and any(fnmatch.fnmatchcase(resource, r) for r in resources):
            return True
    return False


def assert_granted(recorded: Calls, role: str, must_see: set[str]) -> None:
    """Every recorded call is allowed to ``role`` (or to ProviderRole, for assumed-role calls)."""
    mine, provider, seen = granted(role), granted("ProviderRole"), set()
    for service, op, params, key in recorded.items:
        seen.add(f"{service}:{op}")
        statements = provider if key in recorded.assumed else mine  # an STS session's calls: the provider role's
        for action, resource in needed(service, op, params):
            who = role if statements is mine else "ProviderRole"
            assert allows(statements, action, resource), f"{who} lacks {action} on {resource} ({service}.{op})"
    assert not must_see & {"ec2:AttachVolume", "ec2:DetachVolume"} or recorded.assumed, "no provider session seen"
    missing = must_see - seen
    assert not missing, f"the scenario never made {missing}: the check would prove nothing for them"


def _second_host(settings) -> str:
    from vvolguard.services.hosts import HostService

    return HostService(settings).enroll("host-2", "02:00:00:00:00:02", "SN-2")["secret"]


def test_iam_calls__the_events_function_role_covers_every_webhook_call(webhook, calls, monkeypatch):
    secret2 = _second_host(webhook.settings)
    with calls:
        for type_, vm, extra in (("vm.created", "vm-3", {}), ("vm.preboot", "vm-1", {}), ("vm.booted", "vm-1", {}),
                                 ("vm.preboot", "vm-2", {}), ("app.started", "vm-4", {"app": "A1"}),
                                 ("app.stopped", "vm-4", {"app": "A1"}),
                                 ("vm.migrate.start", "vm-2", {"destination_host": "host-2"})):
            code, body = webhook.send(type_, vm, **extra)
            assert code == 200, (type_, body)
        code, body = webhook.send("vm.migrate.complete", "vm-2", host_id="host-2", secret=secret2, source_host="host-1")
        assert code == 200, body
        assert webhook.send("vm.shutdown", "vm-2", host_id="host-2", secret=secret2)[0] == 200
        assert webhook.send("vm.shutdown", "vm-1", event_id="dup-1")[0] == 200
        assert webhook.send("vm.shutdown", "vm-1", event_id="dup-1")[1]["duplicate"] is True
        assert webhook.send("vm.preboot", "vm-1", secret="wrong-secret")[0] == 401  # refused, and audited
        # not the VM's host: refused, audited, and the foreign_host alert is published (docs/alerts.md)
        assert webhook.send("vm.preboot", "vm-1", host_id="host-2", secret=secret2)[0] == 403
    assert_granted(calls, "EventsRole", {"sns:Publish",
        "dynamodb:Query", "dynamodb:GetItem", "dynamodb:TransactWriteItems", "kms:Decrypt",
        "secretsmanager:GetSecretValue", "sts:AssumeRole", "ec2:AttachVolume", "ec2:DetachVolume",
        "ec2:CreateVolume", "ec2:CreateTags", "ec2:DescribeVolumes", "ec2:DescribeInstances", "ec2:DescribeTags"})


class _Died(BaseException):
    """The process dying mid-event (docs/crash-safety.md): nothing catches it, so nothing is undone."""


def _dead_claim(webhook, monkeypatch) -> None:
    """vm-5's vvol-5 claimed by an app.started whose process died before its attach; a 1 s claim lease."""
    from vvolguard.adapters import aws

    def die(**_):
        raise _Died()

    monkeypatch.setattr("vvolguard.services.event_stores.BUSY_SECONDS", 1)
    aws.add_hook("before-call.ec2.AttachVolume", die)
    try:
        with pytest.raises(_Died):
            webhook.send("app.started", "vm-5", app="A2")
    finally:
        aws.remove_hook("before-call.ec2.AttachVolume", die)


def test_iam_calls__the_reconcile_function_role_covers_a_pass_that_does_everything(webhook, calls, monkeypatch):
    import time

    from tests.conftest import ec2_client, managed_volumes
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.handlers import events as events_handler
    from vvolguard.handlers import reconcile as reconcile_handler
    from vvolguard.services.policies import PolicyService

    monkeypatch.setenv("VVG_MIGRATION_GRANT_SECONDS", "1")
    events_handler.reset()
    _second_host(webhook.settings)
    PolicyService(webhook.settings).apply(parse_policy_text(
        b"volumes:\n  - {volume_id: vvol-short, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10,\n"
        b"     attach_on: preboot, detach_on: shutdown, max_attach_seconds: 1}\n"))
    assert webhook.send("vm.preboot", "vm-1")[0] == 200                                   # a lease to expire
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    assert webhook.send("vm.migrate.start", "vm-2", destination_host="host-2")[0] == 200  # a grant to expire
    assert webhook.send("vm.created", "vm-3")[0] == 200
    vol = managed_volumes()["vvol-3"]                                                     # an orphan attachment
    inst = ec2_client().describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": ["vm-3"]}])
    ec2_client().attach_volume(VolumeId=vol["VolumeId"], Device="/dev/sdz",
                               InstanceId=inst["Reservations"][0]["Instances"][0]["InstanceId"])
    _dead_claim(webhook, monkeypatch)                                                     # a claim to release
    time.sleep(2.2)  # past the 1 s claim lease in whole seconds (the reconciler compares epoch seconds)
    with calls:
        summary = reconcile_handler.handler({"source": "aws.events"}, None)  # the scheduled function itself
    assert summary["expired_leases"] >= 1 and summary["grants_expired"] == 1 and summary["orphans_detached"] == 1, summary
    assert summary["claims_released"] == 1, summary
    assert_granted(calls, "ReconcileRole", {"sns:Publish",
        "dynamodb:Query", "dynamodb:GetItem", "dynamodb:TransactWriteItems", "secretsmanager:GetSecretValue",
        "sts:AssumeRole", "ec2:DescribeVolumes", "ec2:DetachVolume", "ec2:CreateTags", "dynamodb:Scan",
        "kms:Sign", "s3:ListObjectVersions", "s3:PutObject", "dynamodb:UpdateItem", "kms:Verify", "s3:GetObject"})


def test_iam_calls__the_dashboard_function_role_covers_its_pages_and_changes(webhook, calls):
    from dashboard import create_app
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.services.policies import PolicyService

    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    from vvolguard.adapters.audit import AuditLog

    AuditLog(webhook.settings).checkpoint()  # the tamper check reads and verifies it
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "SECRET_KEY": "t", "SESSION_COOKIE_SECURE": False,
                      "VVG_LOGIN_FAIL_DELAY": 0})
    client = app.test_client()
    with calls:
        assert client.post("/login", data={"username": "admin", "password": "admin-pass-123"}).status_code == 302
        for path in ("/policies", "/policies/vvol-1", "/policies/vvol-2", "/attachments", "/audit", "/audit/export.csv",
                     "/audit/export.json", "/hosts", "/users", "/users?per_page=1", "/simulate", "/alerts"):
            assert client.get(path).status_code == 200, path
        assert client.post("/simulate", data={"vm_id": "vm-1", "type": "vm.preboot"}).status_code == 200
        assert client.post("/audit/verify").status_code in (200, 302)
        r = client.post("/hosts", data={"host_id": "host-9", "mac": "02:00:00:00:00:09", "serial": "SN-9"})
        assert r.status_code == 200 and "host-9" in r.get_data(as_text=True)
        assert client.post("/hosts/host-9/rotate").status_code == 200
        assert client.post("/hosts/host-9/revoke", data={"confirm": "1"}).status_code == 302
        # What the policy pages' delete does to an attached volume (detach at the provider, then delete).
        out = PolicyService(webhook.settings, provider=EbsProvider(webhook.settings)).delete("vvol-1", actor="user:admin")
        assert out["detached"]
    # The tamper check is the reconciler's (docs/audit-check.md): "Check now" writes a request (UpdateItem).
    # /hosts and /users read by their by-listing index and BatchGetItem, never a Scan (docs/host-user-pages.md).
    assert_granted(calls, "DashboardRole", {"sns:Publish", "dynamodb:BatchGetItem",
        "dynamodb:Query", "dynamodb:GetItem", "dynamodb:TransactWriteItems", "kms:Encrypt",
        "secretsmanager:GetSecretValue", "sts:AssumeRole", "ec2:DetachVolume", "dynamodb:UpdateItem"})


def test_iam_calls__the_operator_policy_covers_the_vvg_cli(webhook, calls, vvg, tmp_path):
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    policy = tmp_path / "p.yaml"
    policy.write_text("volumes:\n  - {volume_id: vvol-9, vm_id: vm-9, host_id: host-1, storage_array: S1, size_mb: 10,\n"
                      "     attach_on: request, detach_on: request}\n")
    with calls:
        for argv, stdin in ((("host", "enroll", "host-8", "--mac", "02:00:00:00:00:08", "--serial", "SN-8"), ""),
                            (("host", "rotate", "host-8"), ""), (("host", "revoke", "host-8"), ""),
                            (("policy", "apply", str(policy)), ""), (("policy", "export"), ""),
                            (("policy", "delete", "vvol-1"), ""), (("audit", "list", "--limit", "5"), ""),
                            (("audit", "list", "--volume", "vvol-1"), ""), (("audit", "verify"), ""),
                            (("reconcile",), ""), (("user", "add", "olga", "--role", "viewer", "--password-stdin"),
                                                   "olga-pass-123\n"),
                            (("host", "list", "--backfill"), ""), (("user", "list", "--backfill"), ""),
                            (("audit", "checkpoint"), ""), (("audit", "verify"), ""),
                            (("alerts", "list", "--since", "1d"), ""),
                            (("audit", "export", "--out", str(tmp_path / "e.json")), ""),
                            (("audit", "verify", "--file", str(tmp_path / "e.json")), ""),
                            (("key", "provision", "vvol-2", "--generate", "lic:100", "--escrow"), ""),
                            (("key", "provision", "vvol-2", "--escrow"), ""),  # replaces the volume it made
                            (("key", "describe", "vvol-2"), ""),
                            (("key", "recover", "vvol-2", "luks", "--out", str(tmp_path / "luks")), "")):
            r = vvg(*argv, stdin=stdin)
            assert r.code == 0, (argv, r)
    assert_granted(calls, "OperatorPolicy", {"sns:Publish",
        "dynamodb:Query", "dynamodb:GetItem", "dynamodb:Scan", "dynamodb:TransactWriteItems", "kms:Encrypt",
        "secretsmanager:GetSecretValue", "sts:AssumeRole", "ec2:DetachVolume", "ec2:DescribeVolumes",
        "kms:Sign", "kms:Verify", "s3:PutObject", "s3:GetObject", "s3:ListObjectVersions",
        "ebs:StartSnapshot", "ebs:PutSnapshotBlock", "ebs:CompleteSnapshot", "ec2:CreateVolume", "ec2:DeleteSnapshot",
        "ec2:DeleteVolume", "kms:Decrypt", "kms:DescribeKey", "ec2:DescribeSnapshots"})


def test_iam_calls__the_ec2_lifecycle_and_reconcile_roles_cover_ec2_vms(webhook, calls, vvg):
    """docs/ec2-vms.md: `vvg vm start` (operator), a notification of the lifecycle function, the reconciler's
    vm.booted and `vvg vm stop`, each checked against the role that makes it."""
    from datetime import datetime, timezone

    from tests.test_ec2_vms import EC2_POLICIES, _instance
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.handlers import ec2_lifecycle
    from vvolguard.handlers import reconcile as reconcile_handler
    from vvolguard.services.policies import PolicyService
    from vvolguard.services.vms import notification

    PolicyService(webhook.settings).apply(parse_policy_text(EC2_POLICIES), actor="cli")
    iid = _instance("vm-e1")
    with calls:
        assert vvg("vm", "start", "vm-e1").code == 0
    assert_granted(calls, "OperatorPolicy", {"ec2:StartInstances", "ec2:AttachVolume", "ec2:CreateVolume",
                                             "dynamodb:TransactWriteItems", "ec2:DescribeInstances"})
    calls.items.clear()
    with calls:
        summary = reconcile_handler.handler({"source": "aws.events"}, None)
    assert summary["ec2_booted"] == 1, summary
    assert_granted(calls, "ReconcileRole", {"ec2:DescribeInstanceStatus", "ec2:DetachVolume", "dynamodb:TransactWriteItems"})
    calls.items.clear()
    ec2_lifecycle.reset()
    from tests.conftest import ec2_client

    ec2_client().stop_instances(InstanceIds=[iid])
    with calls:
        out = ec2_lifecycle.handler(notification(iid, "stopped", datetime.now(timezone.utc)), None)
    assert [s["type"] for s in out["sent"]] == ["vm.shutdown"], out
    assert_granted(calls, "Ec2LifecycleRole", {"ec2:DescribeInstances", "ec2:DetachVolume", "dynamodb:Query",
                                               "dynamodb:TransactWriteItems", "sts:AssumeRole",
                                               "secretsmanager:GetSecretValue"})
    ec2_lifecycle.reset()
