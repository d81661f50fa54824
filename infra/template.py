"""Read template.yaml: the tables, routes and environment the local stack builds from it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
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


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data."""
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - safe loader subclass


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
        """Resolve Ref and Sub (parameters and resource names); other intrinsics stay as they are."""
        if isinstance(value, dict):
            if set(value) == {"Ref"}:
                return self.ref(value["Ref"])
            if set(value) == {"Fn::GetAtt"} and value["Fn::GetAtt"][1] == "Arn":
                name = value["Fn::GetAtt"][0]
                kind = self.resources.get(name, {}).get("Type", "")
                if kind == "AWS::IAM::Role":
                    return f"arn:aws:iam::{self.params['AWS::AccountId']}:role/{self.ref(name)}"
                return f"arn:aws:local:::{self.ref(name)}"
            if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
                return re.sub(r"\$\{([^}!]+)\}", lambda m: str(self.ref(m.group(1))), value["Fn::Sub"])
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def ref(self, name: str) -> Any:
        """What Ref returns locally: a parameter's value, or a resource's physical name."""
        if name in self.params:
            return self.params[name]
        res = self.resources.get(name)
        if res is None:
            raise KeyError(f"template has no parameter or resource {name!r}")
        props = res.get("Properties", {})
        for key in ("TableName", "AliasName", "Name", "FunctionName", "RoleName"):
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

    def routes(self) -> list[Route]:
        """Every HttpApi event of every function."""
        out = []
        for name, res in self.of_type("AWS::Serverless::Function").items():
            props = res.get("Properties", {})
            for ev in (props.get("Events") or {}).values():
                if ev.get("Type") == "HttpApi":
                    ep = ev.get("Properties", {})
                    out.append(Route(ep.get("Method", "ANY").upper(), ep["Path"], name, props["Handler"]))
        return out

    def roles(self) -> dict[str, dict[str, Any]]:
        """Role name -> its resolved properties (the local stack creates them in the IAM emulation)."""
        return {self.ref(n): self.resolve(r.get("Properties", {})) for n, r in self.of_type("AWS::IAM::Role").items()}

    def key_names(self) -> dict[str, str]:
        """Logical id -> local physical name of the KMS aliases and secrets."""
        out = {}
        for t in ("AWS::KMS::Alias", "AWS::SecretsManager::Secret"):
            for name in self.of_type(t):
                out[name] = self.ref(name)
        return out
