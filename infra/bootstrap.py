"""Create what the template declares (tables, the host-secrets key, the audit key) and seed the demo."""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from infra.template import Template
from vvolguard.adapters import aws
from vvolguard.domain.policy import parse_policy_text
from vvolguard.errors import NotFound
from vvolguard.services.hosts import HostService
from vvolguard.services.policies import PolicyService
from vvolguard.services.users import UserService
from vvolguard.settings import Settings

DEMO_POLICIES = Path(__file__).with_name("demo-policies.yaml")
DEMO_HOST = {"host_id": "host-1", "mac": "02:00:00:00:00:01", "serial": "DEMO-SERIAL-1", "hardware": "demo hypervisor"}
DEMO_ZONE_SUFFIX = "a"
DEMO_IMAGE = "ami-12c6146b"  # moto's example AMI: listing the emulation's 1,300 images costs seconds


def create_resources(template: Template, settings: Settings) -> None:
    """Tables (from the template's AWS::DynamoDB::Table), the KMS key and alias, the audit key secret."""
    ddb = aws.client("dynamodb", settings.region)
    existing = set(ddb.list_tables().get("TableNames", []))
    for params in template.tables():
        if params["TableName"] not in existing:
            ddb.create_table(**params)
            ddb.get_waiter("table_exists").wait(TableName=params["TableName"], WaiterConfig={"Delay": 1})
    for table, attr in template.ttl().items():
        try:
            ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": attr})
        except ClientError:
            pass  # already enabled
    kms = aws.client("kms", settings.region)
    try:
        kms.describe_key(KeyId=settings.host_secrets_key_id)
    except ClientError:
        key_id = kms.create_key(Description="vvolguard host secrets")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=settings.host_secrets_key_id, TargetKeyId=key_id)
    # The key volumes' own key (template: KeyVolumesKey / KeyVolumesKeyAlias), never the default EBS key.
    key_volumes = template.ref("KeyVolumesKeyAlias") if "KeyVolumesKeyAlias" in template.resources else None
    if key_volumes:
        try:
            kms.describe_key(KeyId=key_volumes)
        except ClientError:
            desc = template.resolve(template.resources["KeyVolumesKey"]["Properties"].get("Description", ""))
            key_id = kms.create_key(Description=desc)["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName=key_volumes, TargetKeyId=key_id)
    iam = aws.client("iam", settings.region)
    for name, props in template.roles().items():
        try:
            iam.get_role(RoleName=name)
        except ClientError:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]))
            for pol in props.get("Policies", []):
                iam.put_role_policy(RoleName=name, PolicyName=pol["PolicyName"],
                                    PolicyDocument=json.dumps(pol["PolicyDocument"]))
    create_secrets(settings)
    create_keys(template, settings)
    create_buckets(template, settings)
    create_topics(template, settings)


def create_secrets(settings: Settings) -> None:
    """The audit key's secret (a random 256-bit key), unless it exists."""
    sm = aws.client("secretsmanager", settings.region)
    try:
        sm.describe_secret(SecretId=settings.audit_key_secret_id)
    except ClientError:
        sm.create_secret(Name=settings.audit_key_secret_id, SecretString=secrets.token_hex(32))


def create_topics(template: Template, settings: Settings) -> None:
    """The template's SNS topics (the security alerts' AlertTopic among them: docs/alerts.md), encrypted
    under the key the template names (CreateTopic is idempotent)."""
    sns = aws.client("sns", settings.region)
    for name, res in template.of_type("AWS::SNS::Topic").items():
        p = template.resolve(res["Properties"])
        attrs = {"KmsMasterKeyId": template.ref("DataKeyAlias")} if p.get("KmsMasterKeyId") and \
            "DataKeyAlias" in template.resources else {}
        sns.create_topic(Name=p["TopicName"], Attributes=attrs)


def create_keys(template: Template, settings: Settings) -> None:
    """Every KMS alias of the template whose key is missing: a key of the template's spec and usage
    (the audit checkpoints' ECDSA P-256 signing key among them)."""
    kms = aws.client("kms", settings.region)
    for name, res in template.of_type("AWS::KMS::Alias").items():
        alias = template.ref(name)
        try:
            kms.describe_key(KeyId=alias)
            continue
        except ClientError:
            pass
        target = res["Properties"]["TargetKeyId"]
        props = template.resources.get(target.get("Ref", ""), {}).get("Properties", {}) if isinstance(target, dict) else {}
        key_id = kms.create_key(Description=str(props.get("Description", alias)),
                                KeySpec=props.get("KeySpec", "SYMMETRIC_DEFAULT"),
                                KeyUsage=props.get("KeyUsage", "ENCRYPT_DECRYPT"))["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=alias, TargetKeyId=key_id)


def create_buckets(template: Template, settings: Settings) -> None:
    """The template's S3 buckets with their versioning, Object Lock retention and public access block
    (the emulation's encryption at rest would prove nothing, so the bucket keys are not set locally)."""
    s3 = aws.client("s3", settings.region)
    for name, res in template.of_type("AWS::S3::Bucket").items():
        p = template.resolve(res["Properties"])
        bucket = p["BucketName"]
        try:
            s3.head_bucket(Bucket=bucket)
            continue
        except ClientError:
            pass
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=bool(p.get("ObjectLockEnabled")))
        if p.get("VersioningConfiguration"):
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=p["VersioningConfiguration"])
        lock = p.get("ObjectLockConfiguration")
        if lock:
            rule = lock["Rule"]["DefaultRetention"]
            s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": rule["Mode"], "Days": int(rule["Days"])}}})
        if p.get("PublicAccessBlockConfiguration"):
            s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=p["PublicAccessBlockConfiguration"])


def ensure_instance(settings: Settings, vm_id: str) -> str:
    """An EC2 instance tagged vvg:vm-id = vm_id (the emulation's stand-in for a VM); returns its id."""
    ec2 = aws.client("ec2", settings.region)
    found = ec2.describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": [vm_id]},
                                            {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    for r in found["Reservations"]:
        for i in r["Instances"]:
            return i["InstanceId"]
    out = ec2.run_instances(
        ImageId=DEMO_IMAGE, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        Placement={"AvailabilityZone": settings.region + DEMO_ZONE_SUFFIX},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "vvg:vm-id", "Value": vm_id}]}],
    )
    return out["Instances"][0]["InstanceId"]


def seed_demo(settings: Settings, admin_password: str) -> dict[str, Any]:
    """Table 1, its VMs as EC2 instances, the demo host and the admin user. Idempotent."""
    specs = parse_policy_text(DEMO_POLICIES.read_bytes(), DEMO_POLICIES.name)
    for vm_id in sorted({s.vm_id for s in specs}):
        ensure_instance(settings, vm_id)
    applied = PolicyService(settings).apply(specs, actor="cli")
    hosts = HostService(settings)
    try:
        hosts.get(DEMO_HOST["host_id"])
        secret = hosts.rotate(DEMO_HOST["host_id"], actor="cli")["secret"]
    except NotFound:
        secret = hosts.enroll(DEMO_HOST["host_id"], DEMO_HOST["mac"], DEMO_HOST["serial"], DEMO_HOST["hardware"])["secret"]
    users = UserService(settings)
    if users.get("admin") is None:
        users.add("admin", "admin", admin_password, actor="cli")
    return {"policies": applied, "host_id": DEMO_HOST["host_id"], "host_secret": secret}


def provision_demo_keys(settings: Settings) -> list[str]:
    """The demo's preboot volumes (OS disk encryption on) get a key volume with a random 64-byte luks entry,
    written at the provider as `vvg key provision` writes it (docs/key-volume.md). Idempotent."""
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.services.keys import KeyService

    keys = KeyService(settings, EbsProvider(settings))
    done = []
    for spec in parse_policy_text(DEMO_POLICIES.read_bytes(), DEMO_POLICIES.name):
        if spec.attach_on == "preboot" and spec.os_disk_encryption and keys.record(spec.volume_id) is None:
            keys.provision(spec.volume_id, actor="cli")
            done.append(spec.volume_id)
    return done


def bootstrap(settings: Settings, template: Template | None = None) -> None:
    """Create the template's resources and point the models at them (the composition root binds them)."""
    from vvolguard.services.root import Services

    Services.build(settings)
    create_resources(template or Template(), settings)
