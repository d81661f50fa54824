"""Read template.yaml: the tables, routes and environment the local stack builds from it."""
from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
LOCAL_CODE_URI = "functions/"  # the Lambda code the local gateway imports (functions/ on sys.path)
_NO_VALUE = object()  # Ref AWS::NoValue: the property is dropped


class _CfnLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when built with it
    """Safe YAML that keeps CloudFormation's short-form intrinsics as {'Fn::X': ...} / {'Ref': ...}."""


def _intrinsic(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def _merge(glob: Any, local: Any) -> Any:
    """SAM's Globals rule: maps merge key by key (local wins), lists concatenate, anything else is local."""
    if isinstance(glob, dict) and isinstance(local, dict) and not any(k.startswith("Fn::") or k == "Ref" for k in local):
        out = dict(glob)
        for k, v in local.items():
            out[k] = _merge(glob[k], v) if k in glob else v
        return out
    if isinstance(glob, list) and isinstance(local, list):
        return glob + local
    return local


_parsed: dict[tuple[str, int, int], dict[str, Any]] = {}
_parsed_lock = threading.Lock()


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data (a fresh copy each call: parsing is cached per path, mtime and size,
    since every test's and every local stack's bootstrap reads the same file)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    with _parsed_lock:
        doc = _parsed.get(key)
        if doc is None:
            doc = yaml.load(Path(path).read_text(), Loader=_CfnLoader)  # noqa: S506 - safe loader subclass
            _parsed.clear()
            _parsed[key] = doc
    return copy.deepcopy(doc)


@dataclass(frozen=True)
class Route:
    """One HTTP API route and the handler behind it."""

    method: str
    path: str
    function: str
    handler: str


class Template:
    """A loaded template with just enough intrinsic resolution for the local stack."""

    def __init__(self, path: Path = TEMPLATE, parameters: dict[str, str] | None = None) -> None:
        self.doc = load(path)
        self.params = {k: str(v.get("Default", "")) for k, v in self.doc.get("Parameters", {}).items()}
        self.params.update(parameters or {})
        self.params.setdefault("AWS::Region", "us-east-1")
        self.params.setdefault("AWS::AccountId", "123456789012")
        self.params.setdefault("AWS::Partition", "aws")
        self.resources: dict[str, dict[str, Any]] = self.doc["Resources"]

    def resolve(self, value: Any) -> Any:
        """Resolve Ref, Sub, GetAtt (Arn), If and Condition locally; other intrinsics stay as they are."""
        if isinstance(value, dict):
            if set(value) == {"Ref"}:
                return self.ref(value["Ref"])
            if set(value) == {"Fn::GetAtt"}:
                name, attr = value["Fn::GetAtt"]
                return self.getatt(name, attr) if attr == "Arn" else value
            if set(value) == {"Fn::Sub"}:
                return self.sub(value["Fn::Sub"])
            if set(value) == {"Fn::If"}:
                cond, yes, no = value["Fn::If"]
                return self.resolve(yes if self.condition(cond) else no)
            return {k: v for k, v in ((k, self.resolve(v)) for k, v in value.items()) if v is not _NO_VALUE}
        if isinstance(value, list):
            return [v for v in (self.resolve(v) for v in value) if v is not _NO_VALUE]
        return value

    def sub(self, spec: str | list[Any]) -> str:
        """Fn::Sub: ${Param}, ${Resource}, ${Resource.Attr}, ${!Literal}, and the list form's own variables."""
        text, variables = (spec, {}) if isinstance(spec, str) else (spec[0], spec[1])

        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(self.resolve(variables[name]))
            if "." in name and name.split(".", 1)[0] in self.resources:
                return str(self.getatt(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def getatt(self, name: str, attr: str) -> Any:
        """Fn::GetAtt's Arn, shaped as AWS shapes it for the resource type (local account and region)."""
        if attr != "Arn":
            return {"Fn::GetAtt": [name, attr]}
        kind = self.resources.get(name, {}).get("Type", "")
        region, account = self.params["AWS::Region"], self.params["AWS::AccountId"]
        shapes = {
            "AWS::IAM::Role": f"arn:aws:iam::{account}:role/{{}}",
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{region}:{account}:table/{{}}",
            "AWS::KMS::Key": f"arn:aws:kms:{region}:{account}:key/{{}}",
            "AWS::Logs::LogGroup": f"arn:aws:logs:{region}:{account}:log-group:{{}}:*",
            "AWS::S3::Bucket": "arn:aws:s3:::{}",
        }
        return shapes.get(kind, "arn:aws:local:::{}").format(self.ref(name))

    def condition(self, name_or_expr: Any) -> bool:
        """Evaluate a condition (by name, or Fn::Equals / Not / And / Or) with the parameters' values."""
        if isinstance(name_or_expr, str):
            return self.condition(self.doc.get("Conditions", {})[name_or_expr])
        (fn, args), = name_or_expr.items()
        if fn == "Condition":
            return self.condition(args)
        if fn == "Fn::Equals":
            return str(self.resolve(args[0])) == str(self.resolve(args[1]))
        if fn == "Fn::Not":
            return not self.condition(args[0])
        if fn == "Fn::And":
            return all(self.condition(a) for a in args)
        if fn == "Fn::Or":
            return any(self.condition(a) for a in args)
        raise ValueError(f"unsupported condition function {fn}")

    def ref(self, name: str) -> Any:
        """What Ref returns locally: a parameter's value, or a resource's physical name."""
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.params:
            return self.params[name]
        res = self.resources.get(name)
        if res is None:
            raise KeyError(f"template has no parameter or resource {name!r}")
        props = res.get("Properties", {})
        if res.get("Type") == "AWS::SNS::Topic" and "TopicName" in props:  # Ref of a topic is its ARN
            return f"arn:aws:sns:{self.params['AWS::Region']}:{self.params['AWS::AccountId']}:" + \
                str(self.resolve(props["TopicName"]))
        for key in ("TableName", "AliasName", "Name", "FunctionName", "RoleName", "LogGroupName", "TopicName",
                    "LayerName", "BucketName"):
            if key in props:
                return self.resolve(props[key])
        return name

    def of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        """Resources of one CloudFormation type, by logical id."""
        return {k: v for k, v in self.resources.items() if v.get("Type") == type_}

    def tables(self) -> list[dict[str, Any]]:
        """CreateTable parameters of every AWS::DynamoDB::Table, straight from the template."""
        out = []
        for res in self.of_type("AWS::DynamoDB::Table").values():
            p = self.resolve(res["Properties"])
            params: dict[str, Any] = {
                "TableName": p["TableName"],
                "AttributeDefinitions": p["AttributeDefinitions"],
                "KeySchema": p["KeySchema"],
                "BillingMode": p.get("BillingMode", "PAY_PER_REQUEST"),
            }
            if p.get("GlobalSecondaryIndexes"):
                params["GlobalSecondaryIndexes"] = [
                    {"IndexName": g["IndexName"], "KeySchema": g["KeySchema"], "Projection": g["Projection"]}
                    for g in p["GlobalSecondaryIndexes"]
                ]
            out.append(params)
        return out

    def ttl(self) -> dict[str, str]:
        """Table name -> TTL attribute, for tables that declare one."""
        out = {}
        for res in self.of_type("AWS::DynamoDB::Table").values():
            p = self.resolve(res["Properties"])
            spec = p.get("TimeToLiveSpecification")
            if spec and spec.get("Enabled"):
                out[p["TableName"]] = spec["AttributeName"]
        return out

    def environment(self) -> dict[str, str]:
        """The functions' shared environment (Globals), resolved to local names."""
        env = self.doc.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        return {k: str(self.resolve(v)) for k, v in env.items()}

    def function(self, name: str) -> dict[str, Any]:
        """A function's properties with the template's Globals merged in, as SAM merges them (unresolved)."""
        return _merge(self.doc.get("Globals", {}).get("Function", {}), self.resources[name].get("Properties", {}))

    def routes(self, code_uri: str | None = LOCAL_CODE_URI) -> list[Route]:
        """Every HttpApi event of the functions whose code is ``code_uri`` (None: of every function).

        The default is what the local gateway serves: the webhook API's functions, built from functions/.
        The dashboard's function (its own CodeUri) answers every other path in AWS; locally the dashboard
        is its own Flask server (docs/architecture.md#the-local-stack), so its routes are not the gateway's."""
        out = []
        for name in self.of_type("AWS::Serverless::Function"):
            props = self.function(name)
            if code_uri is not None and str(props.get("CodeUri", "")).rstrip("/") != code_uri.rstrip("/"):
                continue
            for ev in (props.get("Events") or {}).values():
                if ev.get("Type") == "HttpApi":
                    ep = ev.get("Properties", {})
                    out.append(Route(ep.get("Method", "ANY").upper(), ep["Path"], name, props["Handler"]))
        return out

    def roles(self) -> dict[str, dict[str, Any]]:
        """Role name -> resolved properties of the roles vvolguard's code assumes itself (trusting an AWS
        principal, not a service): the local stack creates them in the IAM emulation. Lambda's execution
        roles have no local counterpart (the local gateway calls the handlers in-process)."""
        out = {}
        for name, res in self.of_type("AWS::IAM::Role").items():
            trust = res.get("Properties", {}).get("AssumeRolePolicyDocument", {}).get("Statement", [])
            if any("AWS" in (st.get("Principal") or {}) for st in trust):
                out[self.ref(name)] = self.resolve(res.get("Properties", {}))
        return out
