"""The storage provider interface and its first implementation, EBS (docs/architecture.md#the-storage-provider).

Every call is made with credentials obtained for the host: an STS AssumeRole of the provider role with
the host as a session tag and an external id derived from the host's enrolled credentials. moto is more
permissive than AWS (it attaches an in-use volume again, accepts cross-zone attaches and checks no role
trust), so the checks AWS would make are also made here, in code.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from typing import Any, Iterator, NamedTuple, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from vvolguard.adapters import aws
from vvolguard.errors import ProviderRefused, ProviderUnavailable  # noqa: F401 (ProviderRefused re-exported)
from vvolguard.settings import Settings

TAG_VOLUME = "vvg:volume-id"
TAG_HOSTS = "vvg:hosts"
TAG_VM = "vvg:vm-id"
TAG_HOST = "vvg:host-id"  # a bare-metal hypervisor host's own instance (attach_to: host; docs/deployment-modes.md)
TAG_DETACHING = "vvg:detaching-since"  # epoch seconds: a detach that did not finish; forced after STUCK_DETACH_S
STUCK_DETACH_S = 60
TAG_PROVISIONING = "vvg:provisioning"  # epoch seconds after which a leftover of an unfinished provisioning is removed
EBS_BLOCK = 512 * 1024  # the EBS direct APIs' block size
RETRYABLE = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError", "InternalFailure",
             "ServiceUnavailable", "Unavailable", "RequestTimeout"}
# EC2 errors that retrying cannot fix, and the decision's reason for each (docs/webhook-api.md).
REFUSALS = {"InvalidInstanceID.NotFound": "instance_not_found", "InvalidInstanceID.Malformed": "instance_not_found",
            "InvalidVolume.NotFound": "volume_not_found", "InvalidVolumeID.Malformed": "volume_not_found",
            "InvalidVolume.ZoneMismatch": "wrong_zone", "IncorrectState": "incorrect_state",
            "IncorrectInstanceState": "incorrect_state", "VolumeInUse": "volume_in_use",
            "InvalidAttachment.NotFound": "incorrect_state"}


def refusal(exc: ClientError) -> ProviderRefused | None:
    """The ProviderRefused for an EC2 error that is not transient (None for any other error).
    ``InvalidParameterValue`` counts when it is about the device (a device name taken on the instance)."""
    err = exc.response.get("Error", {})
    code, text = err.get("Code", ""), str(err.get("Message", "")).lower()
    if code in REFUSALS:
        return ProviderRefused(REFUSALS[code], f"the storage provider refused: {code}")
    if code == "InvalidParameterValue" and ("device" in text or "attachment point" in text):
        return ProviderRefused("device_in_use", "the storage provider refused: the device name is taken")
    return None


# An immutable value record: a NamedTuple (as adapters/tx.py's Cancellation), which is built in a tenth of
# the time a frozen dataclass takes at import (the event handler's cold start: docs/benchmarks.md#cold-start).
class HostIdentity(NamedTuple):
    """Who the provider acts for: the host and the digest of its enrolled credentials."""

    host_id: str
    cred_hash: str

    @property
    def external_id(self) -> str:
        """The STS external id: derived from the enrolled credentials, never the credentials themselves."""
        return hmac.new(bytes.fromhex(self.cred_hash), b"vvg:provider-external-id", hashlib.sha256).hexdigest()[:48]


def reserved_identity(settings: Settings, host_id: str | None) -> HostIdentity | None:
    """The provider identity of a reserved host (vvolguard acting as ``aws-ec2`` for EC2 VMs,
    docs/ec2-vms.md), or None for any other host. It has no enrolled secret: its credential digest is
    derived from the audit key (a server-side secret), never from anything a caller could present."""
    from vvolguard.domain.constants import RESERVED_HOSTS

    if host_id not in RESERVED_HOSTS:
        return None
    key = aws.audit_key(settings.region, settings.audit_key_secret_id)
    cred = hmac.new(key, b"vvg:internal-host:" + host_id.encode("ascii"), hashlib.sha256).hexdigest()
    return HostIdentity(host_id, cred)


class Instance(NamedTuple):
    instance_id: str
    zone: str


class Attachment(NamedTuple):
    """A managed volume attached at the provider."""

    provider_volume_id: str
    volume_id: str
    instance_id: str
    device: str
    hosts: tuple[str, ...]


class StorageProvider(Protocol):
    """What vvolguard needs of a storage array."""

    def find_instance(self, who: HostIdentity, vm_id: str) -> Instance: ...
    def find_host_instance(self, who: HostIdentity, host_id: str) -> Instance: ...
    def create(self, who: HostIdentity, volume_id: str, vm_id: str, size_mb: int, zone: str,
               also: tuple[str, ...] = ()) -> str: ...
    def attach(self, who: HostIdentity, provider_volume_id: str, instance: Instance, device: str) -> str: ...
    def detach(self, who: HostIdentity, provider_volume_id: str, instance_id: str) -> bool: ...
    def grant(self, who: HostIdentity, provider_volume_id: str, host_id: str) -> None: ...
    def revoke(self, who: HostIdentity, provider_volume_id: str, host_id: str) -> None: ...
    def delete(self, who: HostIdentity, provider_volume_id: str) -> None: ...
    def is_attached(self, who: HostIdentity, provider_volume_id: str, instance_id: str | None) -> bool: ...
    def set_hosts(self, who: HostIdentity, provider_volume_id: str, hosts: tuple[str, ...]) -> None: ...
    def hosts(self, who: HostIdentity, provider_volume_id: str) -> tuple[str, ...]: ...
    def volumes_for_host(self, who: HostIdentity, host_id: str) -> list[str]: ...
    def attachments(self) -> Iterator[Attachment]: ...


def size_gib(size_mb: int) -> int:
    """Contract: max(1, ceil(size_mb / 1024)) GiB."""
    return max(1, math.ceil(size_mb / 1024))


class EbsProvider:
    """EBS volumes attached to EC2 instances, one assumed-role session per host (cached while valid)."""

    def __init__(self, settings: Settings, base_session: boto3.session.Session | None = None,
                 attempts: int = 4, backoff: float = 0.05, detach_wait: float = 20.0,
                 detach_poll: float = 0.5) -> None:
        self.settings = settings
        self.base = base_session
        self.attempts = attempts
        self.backoff = backoff
        # A detach is finished only once the volume is `available`: how long a detach waits for it
        # (bounded: an event's claim must outlive it) and how often it looks.
        self.detach_wait = detach_wait
        self.detach_poll = detach_poll
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[Any, float]] = {}
        self._sessions: dict[str, boto3.session.Session] = {}
        self._more: dict[tuple[str, str], Any] = {}
        self._own: Any = None

    # ---- authentication

    def _assume(self, who: HostIdentity):
        base = self.base or aws.session(self.settings.region)
        sts = aws.track(base.client("sts", region_name=self.settings.region))
        resp = sts.assume_role(
            RoleArn=self.settings.provider_role_arn or "arn:aws:iam::123456789012:role/vvg-provider",
            RoleSessionName=f"vvg-{who.host_id}"[:64], ExternalId=who.external_id, DurationSeconds=900,
            Tags=[{"Key": "vvg:host-id", "Value": who.host_id}],
        )
        # moto checks neither trust nor external id: make sure at least that the session is the host's.
        arn = resp.get("AssumedRoleUser", {}).get("Arn", "")
        if not arn.endswith(f"/vvg-{who.host_id}"[:70]):
            raise ProviderRefused("wrong_session", f"the provider session is not {who.host_id}'s")
        creds = resp["Credentials"]
        expires = creds["Expiration"].timestamp() if hasattr(creds["Expiration"], "timestamp") else time.time() + 900
        sess = aws.credentials_session(self.settings.region, creds["AccessKeyId"], creds["SecretAccessKey"],
                                       creds["SessionToken"])
        # Retries are ours (_call): botocore's own would multiply them, and the whole provider phase must
        # stay well inside an event's claim (BUSY_SECONDS).
        client = aws.track(sess.client("ec2", config=Config(retries={"mode": "standard", "max_attempts": 1},
                                                              connect_timeout=3, read_timeout=6)))
        with self._lock:
            self._sessions[who.host_id] = sess
            self._more = {k: v for k, v in self._more.items() if k[0] != who.host_id}
        return client, expires

    def ec2(self, who: HostIdentity):
        """The EC2 client acting for ``who``; a new AssumeRole only when the cached one nears expiry."""
        if not who.cred_hash or len(who.cred_hash) != 64 or any(c not in "0123456789abcdef" for c in who.cred_hash):
            raise ProviderRefused("no_credentials", f"host {who.host_id} has no enrolled credentials")
        with self._lock:
            cached = self._clients.get(who.host_id)
            if cached and cached[1] - 120 > time.time():
                return cached[0]
        client, expires = self._call(lambda: self._assume(who))
        with self._lock:
            self._clients[who.host_id] = (client, expires)
        return client

    def own_ec2(self):
        """vvolguard's own EC2 client (the reconciler's reads), built once: a new client per reconciler pass
        costs more than the pass's DescribeVolumes."""
        if self.base is None:
            return aws.client("ec2", self.settings.region)  # cached; forgotten by aws.reset_clients()
        with self._lock:
            if self._own is None:
                self._own = aws.track(self.base.client("ec2"))
            return self._own

    def forget(self, host_id: str) -> None:
        """Drop a host's cached session (after revocation or rotation)."""
        with self._lock:
            self._clients.pop(host_id, None)
            self._sessions.pop(host_id, None)
            self._more = {k: v for k, v in self._more.items() if k[0] != host_id}

    def client(self, who: HostIdentity, service: str):
        """Another client (``ebs``, ``kms``) of the same assumed-role session as :meth:`ec2`."""
        self.ec2(who)
        with self._lock:
            cached = self._more.get((who.host_id, service))
            if cached is None:
                cached = aws.track(self._sessions[who.host_id].client(service, config=Config(
                    retries={"mode": "standard", "max_attempts": 1}, connect_timeout=3, read_timeout=10)))
                self._more[(who.host_id, service)] = cached
        return cached

    # ---- retries

    def _call(self, fn):
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                return fn()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code not in RETRYABLE and status < 500:
                    raise
                last = exc
            except BotoCoreError as exc:
                last = exc
            time.sleep(self.backoff * (2 ** attempt))
        raise ProviderUnavailable(f"the storage provider failed after {self.attempts} attempts ({type(last).__name__})")

    def _refusable(self, fn):
        """:meth:`_call`, with a non-transient EC2 error raised as ProviderRefused (never a bare error)."""
        try:
            return self._call(fn)
        except ClientError as exc:
            refused = refusal(exc)
            if refused is None:
                raise
            raise refused from None

    # ---- operations

    def _tagged(self, ec2, resource_type: str, key: str, value: str) -> list[str]:
        """Ids of the resources tagged key=value (DescribeTags: one indexed lookup, not a filtered listing)."""
        resp = self._call(lambda: ec2.describe_tags(Filters=[
            {"Name": "resource-type", "Values": [resource_type]}, {"Name": "key", "Values": [key]},
            {"Name": "value", "Values": [value]}]))
        return [t["ResourceId"] for t in resp.get("Tags", [])]

    def find_instance(self, who: HostIdentity, vm_id: str) -> Instance:
        """The instance tagged vvg:vm-id = vm_id."""
        found = self._tagged_instance(who, TAG_VM, vm_id, ("pending", "running", "stopping", "stopped"))
        if found is None:
            raise ProviderRefused("vm_not_found", f"no instance is tagged {TAG_VM}={vm_id}")
        return found

    def find_host_instance(self, who: HostIdentity, host_id: str) -> Instance:
        """The bare-metal host's own instance, tagged vvg:host-id = host_id (attach_to: host)."""
        found = self._tagged_instance(who, TAG_HOST, host_id, ("pending", "running"))
        if found is None:
            raise ProviderRefused("instance_not_found", f"no running instance is tagged {TAG_HOST}={host_id}")
        return found

    def _tagged_instance(self, who: HostIdentity, key: str, value: str, states: tuple[str, ...]) -> Instance | None:
        """The first instance tagged ``key = value`` in one of ``states`` (None when there is none)."""
        ec2 = self.ec2(who)
        ids = self._tagged(ec2, "instance", key, value)
        if not ids:
            return None
        try:
            resp = self._call(lambda: ec2.describe_instances(InstanceIds=ids))
        except ClientError as exc:
            if "NotFound" not in exc.response.get("Error", {}).get("Code", ""):
                raise
            return None
        for r in resp.get("Reservations", []):
            for i in r.get("Instances", []):
                if i.get("State", {}).get("Name") in states:
                    return Instance(i["InstanceId"], i["Placement"]["AvailabilityZone"])
        return None

    def _volume(self, ec2, provider_volume_id: str) -> dict[str, Any]:
        try:
            resp = self._call(lambda: ec2.describe_volumes(VolumeIds=[provider_volume_id]))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("InvalidVolume.NotFound", "InvalidVolumeID.Malformed"):
                raise ProviderRefused("volume_not_found", f"volume {provider_volume_id} does not exist") from None
            raise
        return resp["Volumes"][0]

    @staticmethod
    def _hosts(vol: dict[str, Any]) -> tuple[str, ...]:
        tags = {t["Key"]: t["Value"] for t in vol.get("Tags", [])}
        return tuple(h for h in tags.get(TAG_HOSTS, "").split(",") if h)

    def create(self, who: HostIdentity, volume_id: str, vm_id: str, size_mb: int, zone: str,
               also: tuple[str, ...] = ()) -> str:
        """A raw EBS volume (no file system) for ``volume_id``, assigned to this host (and to the hosts
        in ``also``: live migration grantees, so a volume created mid-move follows the VM)."""
        ec2 = self.ec2(who)
        for vid in self._tagged(ec2, "volume", TAG_VOLUME, volume_id):
            try:
                vol = self._volume(ec2, vid)
            except ProviderRefused:  # a deleted volume's tags may linger a moment
                continue
            if vol["State"] not in ("deleting", "deleted", "error"):
                return vol["VolumeId"]
        vol = self._refusable(lambda: ec2.create_volume(
            AvailabilityZone=zone, Size=size_gib(size_mb), VolumeType="gp3", Encrypted=True,
            KmsKeyId=self.settings.key_volumes_key_id,
            TagSpecifications=[{"ResourceType": "volume", "Tags": [
                {"Key": TAG_VOLUME, "Value": volume_id},
                {"Key": TAG_HOSTS, "Value": ",".join(dict.fromkeys((who.host_id, *also)))},
                {"Key": TAG_VM, "Value": vm_id}]}],
        ))
        return vol["VolumeId"]

    def attach(self, who: HostIdentity, provider_volume_id: str, instance: Instance, device: str) -> str:
        """Attach to the VM's instance; refuses what AWS's IAM and EC2 would refuse. Returns the device."""
        ec2 = self.ec2(who)
        vol = self._volume(ec2, provider_volume_id)
        if who.host_id not in self._hosts(vol):
            raise ProviderRefused("host_not_allowed", f"host {who.host_id} is not in {TAG_HOSTS} of the volume")
        for att in vol.get("Attachments", []):
            if att.get("State") in ("attaching", "attached"):
                if att["InstanceId"] == instance.instance_id:
                    return att.get("Device") or device  # already there: idempotent
                raise ProviderRefused("volume_in_use", "the volume is attached to another instance")
        if vol["AvailabilityZone"] != instance.zone:
            raise ProviderRefused("zone_mismatch", "the volume and the instance are in different availability zones")
        self._refusable(lambda: ec2.attach_volume(VolumeId=provider_volume_id, InstanceId=instance.instance_id,
                                                  Device=device))
        return device

    def detach(self, who: HostIdentity, provider_volume_id: str, instance_id: str | None) -> bool:
        """Detach from the instance and wait (at most ``detach_wait`` s) until the volume is ``available``;
        False when it was not attached there. A detach never needs a password.

        One that does not finish in time is tagged ``vvg:detaching-since`` (the reconciler force-detaches it
        after 60 s) and raised as ProviderUnavailable: nothing is recorded as detached before it is."""
        ec2 = self.ec2(who)
        try:
            vol = self._volume(ec2, provider_volume_id)
        except ProviderRefused:
            return False
        atts = [a for a in vol.get("Attachments", []) if a.get("State") in ("attaching", "attached", "detaching")
                and (instance_id is None or a["InstanceId"] == instance_id)]
        if not atts:
            return False
        for att in atts:
            if att.get("State") != "detaching":
                try:
                    self._refusable(lambda a=att: ec2.detach_volume(VolumeId=provider_volume_id,
                                                                    InstanceId=a["InstanceId"]))
                except ProviderRefused as exc:
                    if exc.reason == "volume_not_found":
                        return False
                    if exc.reason != "incorrect_state":  # incorrect_state: already detaching; wait for it
                        raise
        self.wait_detached(who, provider_volume_id, instance_id)
        return True

    def wait_detached(self, who: HostIdentity, provider_volume_id: str, instance_id: str | None) -> None:
        """Poll until no attachment (to ``instance_id`` when given) is left; on timeout mark the volume
        ``vvg:detaching-since`` and raise ProviderUnavailable."""
        ec2 = self.ec2(who)
        deadline = time.monotonic() + self.detach_wait
        while True:
            try:
                vol = self._volume(ec2, provider_volume_id)
            except ProviderRefused:
                return
            left = [a for a in vol.get("Attachments", []) if a.get("State") in ("attaching", "attached", "detaching")
                    and (instance_id is None or a["InstanceId"] == instance_id)]
            marked = any(t["Key"] == TAG_DETACHING for t in vol.get("Tags", []))
            if not left:
                if marked:
                    self._call(lambda: ec2.delete_tags(Resources=[provider_volume_id], Tags=[{"Key": TAG_DETACHING}]))
                return
            if time.monotonic() >= deadline:
                if not marked:
                    self._call(lambda: ec2.create_tags(Resources=[provider_volume_id], Tags=[
                        {"Key": TAG_DETACHING, "Value": str(int(time.time()))}]))
                raise ProviderUnavailable(f"the volume is still detaching after {self.detach_wait:g} s; the reconciler "
                                          f"force-detaches it after {STUCK_DETACH_S} s")
            time.sleep(self.detach_poll)

    def stuck_detaching(self) -> Iterator[tuple[Attachment, float | None]]:
        """Every managed volume with an attachment in ``detaching``, with the time it was first seen so
        (``vvg:detaching-since``; None: not marked yet)."""
        ec2 = self.own_ec2()
        for page in ec2.get_paginator("describe_volumes").paginate(
                Filters=[{"Name": "tag-key", "Values": [TAG_VOLUME]}, {"Name": "status", "Values": ["in-use"]}],
                PaginationConfig={"PageSize": 500}):
            for vol in page.get("Volumes", []):
                tags = {t["Key"]: t["Value"] for t in vol.get("Tags", [])}
                since = tags.get(TAG_DETACHING, "")
                for att in vol.get("Attachments", []):
                    if att.get("State") == "detaching":
                        yield (Attachment(vol["VolumeId"], tags.get(TAG_VOLUME, ""), att["InstanceId"],
                                          att.get("Device", ""),
                                          tuple(h for h in tags.get(TAG_HOSTS, "").split(",") if h)),
                               float(since) if since.isdigit() else None)

    def mark_detaching(self, who: HostIdentity, provider_volume_id: str, since: float) -> None:
        """Tag a volume first seen stuck in ``detaching`` with that time."""
        ec2 = self.ec2(who)
        self._call(lambda: ec2.create_tags(Resources=[provider_volume_id], Tags=[
            {"Key": TAG_DETACHING, "Value": str(int(since))}]))

    def force_detach(self, who: HostIdentity, provider_volume_id: str, instance_id: str) -> None:
        """DetachVolume with Force (the reconciler, for a volume stuck in ``detaching``), then wait for it."""
        ec2 = self.ec2(who)
        try:
            self._refusable(lambda: ec2.detach_volume(VolumeId=provider_volume_id, InstanceId=instance_id, Force=True))
        except ProviderRefused as exc:
            if exc.reason not in ("incorrect_state", "volume_not_found"):
                raise
        self.wait_detached(who, provider_volume_id, instance_id)

    def delete(self, who: HostIdentity, provider_volume_id: str) -> None:
        """Delete a volume this event created (undo of a lazy create); never one in use."""
        ec2 = self.ec2(who)
        vol = self._volume(ec2, provider_volume_id)
        if who.host_id not in self._hosts(vol) or vol.get("Attachments"):
            raise ProviderRefused("volume_in_use", "only an unattached volume of this host can be deleted")
        self._refusable(lambda: ec2.delete_volume(VolumeId=provider_volume_id))

    def _set_hosts(self, ec2, provider_volume_id: str, hosts: tuple[str, ...]) -> None:
        self._refusable(lambda: ec2.create_tags(Resources=[provider_volume_id],
                                                Tags=[{"Key": TAG_HOSTS, "Value": ",".join(hosts)}]))

    def grant(self, who: HostIdentity, provider_volume_id: str, host_id: str) -> None:
        """Add ``host_id`` to the volume's vvg:hosts (only a host already in it may)."""
        ec2 = self.ec2(who)
        hosts = self._hosts(self._volume(ec2, provider_volume_id))
        if who.host_id not in hosts:
            raise ProviderRefused("host_not_allowed", f"host {who.host_id} is not in {TAG_HOSTS} of the volume")
        if host_id not in hosts:
            self._set_hosts(ec2, provider_volume_id, hosts + (host_id,))

    def revoke(self, who: HostIdentity, provider_volume_id: str, host_id: str) -> None:
        """Remove ``host_id`` from the volume's vvg:hosts (only a host in it may)."""
        ec2 = self.ec2(who)
        hosts = self._hosts(self._volume(ec2, provider_volume_id))
        if who.host_id not in hosts:
            raise ProviderRefused("host_not_allowed", f"host {who.host_id} is not in {TAG_HOSTS} of the volume")
        if host_id in hosts:
            self._set_hosts(ec2, provider_volume_id, tuple(h for h in hosts if h != host_id))

    def is_attached(self, who: HostIdentity, provider_volume_id: str, instance_id: str | None) -> bool:
        """Whether the volume is attached (to ``instance_id`` when given) right now."""
        ec2 = self.ec2(who)
        try:
            vol = self._volume(ec2, provider_volume_id)
        except ProviderRefused:
            return False
        # ``detaching`` counts: the volume is not available yet (a stuck one is the reconciler's to force)
        return any(a.get("State") in ("attaching", "attached", "detaching")
                   and (instance_id is None or a["InstanceId"] == instance_id) for a in vol.get("Attachments", []))

    def set_hosts(self, who: HostIdentity, provider_volume_id: str, hosts: tuple[str, ...]) -> None:
        """Make the volume's vvg:hosts exactly ``hosts`` (the reconciler restoring an expired grant)."""
        ec2 = self.ec2(who)
        if tuple(self._hosts(self._volume(ec2, provider_volume_id))) != tuple(hosts):
            self._set_hosts(ec2, provider_volume_id, tuple(hosts))

    def hosts(self, who: HostIdentity, provider_volume_id: str) -> tuple[str, ...]:
        """The volume's vvg:hosts now (empty for a volume that is gone)."""
        try:
            return self._hosts(self._volume(self.ec2(who), provider_volume_id))
        except ProviderRefused:
            return ()

    def volumes_for_host(self, who: HostIdentity, host_id: str) -> list[str]:
        """Every volume whose vvg:hosts names ``host_id`` (DescribeTags on the tag, paged; no volume listing)."""
        ec2 = self.ec2(who)
        out: list[str] = []
        token = None
        while True:
            kw: dict[str, Any] = {"Filters": [{"Name": "resource-type", "Values": ["volume"]},
                                              {"Name": "key", "Values": [TAG_HOSTS]},
                                              {"Name": "value", "Values": [f"*{host_id}*"]}], "MaxResults": 1000}
            if token:
                kw["NextToken"] = token
            resp = self._call(lambda: ec2.describe_tags(**kw))
            out += [t["ResourceId"] for t in resp.get("Tags", []) if host_id in t.get("Value", "").split(",")]
            token = resp.get("NextToken")
            if not token:
                return out

    def attachments(self, who: HostIdentity | None = None) -> Iterator[Attachment]:
        """Every managed volume attached at the provider, page by page."""
        ec2 = self.ec2(who) if who else self.own_ec2()
        paginator = ec2.get_paginator("describe_volumes")
        for page in paginator.paginate(Filters=[{"Name": "tag-key", "Values": [TAG_VOLUME]}], PaginationConfig={"PageSize": 500}):
            for vol in page.get("Volumes", []):
                tags = {t["Key"]: t["Value"] for t in vol.get("Tags", [])}
                for att in vol.get("Attachments", []):
                    if att.get("State") in ("attaching", "attached"):
                        yield Attachment(vol["VolumeId"], tags.get(TAG_VOLUME, ""), att["InstanceId"], att.get("Device", ""),
                                         tuple(h for h in tags.get(TAG_HOSTS, "").split(",") if h))

    def volumes(self) -> Iterator[dict[str, Any]]:
        """Every managed volume (tagged vvg:volume-id) not being deleted, page by page, read with vvolguard's
        own identity: the reconciler's view for drift (docs/crash-safety.md)."""
        ec2 = aws.track((self.base or aws.session(self.settings.region)).client("ec2"))
        for page in ec2.get_paginator("describe_volumes").paginate(
                Filters=[{"Name": "tag-key", "Values": [TAG_VOLUME]}], PaginationConfig={"PageSize": 500}):
            for vol in page.get("Volumes", []):
                if vol.get("State") in ("deleting", "deleted", "error"):
                    continue
                tags = {t["Key"]: t["Value"] for t in vol.get("Tags", [])}
                yield {"provider_volume_id": vol["VolumeId"], "volume_id": tags.get(TAG_VOLUME, ""),
                       "vm_id": tags.get(TAG_VM, ""), "hosts": tuple(h for h in tags.get(TAG_HOSTS, "").split(",") if h),
                       "provisioning": tags.get(TAG_PROVISIONING), "state": vol.get("State"),
                       "zone": vol.get("AvailabilityZone"), "created": vol.get("CreateTime"),
                       "attached": [a["InstanceId"] for a in vol.get("Attachments", [])
                                    if a.get("State") in ("attaching", "attached", "detaching")]}

    def detach_for_policy_delete(self, item: Any) -> None:
        """Detach a volume whose policy is being deleted (acting for the VM's host)."""
        from vvolguard.adapters.models import HostItem

        try:
            who = reserved_identity(self.settings, item.host_id)  # an EC2 VM's volume: vvolguard acts as aws-ec2
            if who is None:
                host = HostItem.get(item.host_id)
                who = HostIdentity(host.host_id, host.cred_hash)
        except HostItem.DoesNotExist:
            raise ProviderRefused("host_not_found", f"host {item.host_id} is not enrolled; cannot act for it") from None
        if item.provider_volume_id:
            self.detach(who, item.provider_volume_id, item.instance_id)


# ---- key volume provisioning (docs/key-volume.md): EBS direct APIs, never an attach


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


class KeyVolumeWriter:
    """Writes a key volume image at the provider for one host: a snapshot written block by block with the
    EBS direct APIs, a volume made from it (encrypted with vvolguard's own key), the snapshot deleted.

    Each step is its own method so the caller can undo what was done when a later step fails; every
    snapshot and volume carries ``vvg:provisioning`` (an expiry, epoch seconds) so the reconciler removes
    what a run that died halfway left behind."""

    def __init__(self, provider: EbsProvider) -> None:
        self.p = provider
        self._key_arn: str | None = None

    def _tags(self, who: HostIdentity, volume_id: str, vm_id: str, expires: int) -> list[dict[str, str]]:
        return [{"Key": TAG_VOLUME, "Value": volume_id}, {"Key": TAG_HOSTS, "Value": who.host_id},
                {"Key": TAG_VM, "Value": vm_id}, {"Key": TAG_PROVISIONING, "Value": str(expires)}]

    def volume(self, who: HostIdentity, provider_volume_id: str) -> dict[str, Any]:
        """The provider's description of a volume (ProviderRefused volume_not_found when it is gone)."""
        return self.p._volume(self.p.ec2(who), provider_volume_id)

    def key_arn(self, who: HostIdentity) -> str:
        """The ARN of vvolguard's key-volume key (the EBS direct APIs want an ARN, not an alias)."""
        if self._key_arn is None:  # an alias's target changes only by an operator's UpdateAlias: once per process
            kms = self.p.client(who, "kms")
            self._key_arn = self.p._call(lambda: kms.describe_key(KeyId=self.p.settings.key_volumes_key_id))["KeyMetadata"]["Arn"]
        return self._key_arn

    def start(self, who: HostIdentity, volume_id: str, vm_id: str, size_mb: int, expires: int, key_arn: str) -> str:
        """StartSnapshot: an empty encrypted snapshot of the volume's size; returns its id."""
        ebs = self.p.client(who, "ebs")
        resp = self.p._call(lambda: ebs.start_snapshot(
            VolumeSize=size_gib(size_mb), Encrypted=True, KmsKeyArn=key_arn, Timeout=60,
            Description=f"vvolguard key volume {volume_id} (provisioning; deleted once the volume exists)",
            Tags=self._tags(who, volume_id, vm_id, expires)))
        return resp["SnapshotId"]

    def put(self, who: HostIdentity, snapshot_id: str, image: bytes) -> tuple[int, str]:
        """PutSnapshotBlock for every 512 KiB block that is not all zeros, each with its SHA-256; returns
        (blocks written, the LINEAR aggregate checksum CompleteSnapshot checks)."""
        ebs = self.p.client(who, "ebs")
        digests: list[bytes] = []
        n = 0
        for index in range((len(image) + EBS_BLOCK - 1) // EBS_BLOCK):
            block = image[index * EBS_BLOCK:(index + 1) * EBS_BLOCK]
            if not block.strip(b"\0"):
                continue
            block = block + b"\0" * (EBS_BLOCK - len(block))
            digest = hashlib.sha256(block).digest()
            self.p._call(lambda i=index, b=block, d=digest: ebs.put_snapshot_block(
                SnapshotId=snapshot_id, BlockIndex=i, BlockData=b, DataLength=EBS_BLOCK,
                Checksum=_b64(d), ChecksumAlgorithm="SHA256"))
            digests.append(digest)
            n += 1
        return n, _b64(hashlib.sha256(b"".join(digests)).digest())

    def complete(self, who: HostIdentity, snapshot_id: str, blocks: int, checksum: str) -> None:
        """CompleteSnapshot, then wait (briefly) until the snapshot can make a volume."""
        ebs = self.p.client(who, "ebs")
        resp = self.p._call(lambda: ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=blocks,
                                                          Checksum=checksum, ChecksumAlgorithm="SHA256",
                                                          ChecksumAggregationMethod="LINEAR"))
        if resp.get("Status") == "completed":
            return
        ec2 = self.p.ec2(who)
        for _ in range(60):
            snap = self.p._call(lambda: ec2.describe_snapshots(SnapshotIds=[snapshot_id]))["Snapshots"][0]
            if snap.get("State") == "completed":
                return
            if snap.get("State") == "error":
                raise ProviderRefused("snapshot_failed", "the provider could not complete the key volume's snapshot")
            time.sleep(1)
        raise ProviderUnavailable("the key volume's snapshot did not complete within 60 s")

    def create(self, who: HostIdentity, volume_id: str, vm_id: str, size_mb: int, zone: str, snapshot_id: str,
               expires: int) -> str:
        """A volume from the snapshot, in the instance's zone, tagged as every managed volume and encrypted
        with vvolguard's own key."""
        ec2 = self.p.ec2(who)
        vol = self.p._call(lambda: ec2.create_volume(
            AvailabilityZone=zone, Size=size_gib(size_mb), VolumeType="gp3", SnapshotId=snapshot_id, Encrypted=True,
            KmsKeyId=self.p.settings.key_volumes_key_id,
            TagSpecifications=[{"ResourceType": "volume", "Tags": self._tags(who, volume_id, vm_id, expires)}]))
        return vol["VolumeId"]

    def delete_snapshot(self, who: HostIdentity, snapshot_id: str) -> None:
        """DeleteSnapshot; one already gone is fine."""
        ec2 = self.p.ec2(who)
        try:
            self.p._call(lambda: ec2.delete_snapshot(SnapshotId=snapshot_id))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidSnapshot.NotFound":
                raise

    def delete_volume(self, who: HostIdentity, provider_volume_id: str) -> None:
        """Delete an unattached volume of this host; one already gone is fine."""
        try:
            self.p.delete(who, provider_volume_id)
        except ProviderRefused as exc:
            if exc.reason != "volume_not_found":
                raise

    def mark(self, who: HostIdentity, provider_volume_id: str, value: str) -> None:
        """Set the volume's ``vvg:provisioning`` tag: an expiry (a leftover to remove after it) or ``done``."""
        ec2 = self.p.ec2(who)
        self.p._call(lambda: ec2.create_tags(Resources=[provider_volume_id],
                                             Tags=[{"Key": TAG_PROVISIONING, "Value": value}]))

    def escrow(self, who: HostIdentity, volume_id: str, name: str, data: bytes) -> str:
        """An entry encrypted under the key-volume key, bound to the volume id (encryption context)."""
        kms = self.p.client(who, "kms")
        out = self.p._call(lambda: kms.encrypt(KeyId=self.p.settings.key_volumes_key_id, Plaintext=data,
                                               EncryptionContext={"vvg:volume-id": volume_id, "vvg:entry": name}))
        return _b64(out["CiphertextBlob"])

    def unescrow(self, who: HostIdentity, volume_id: str, name: str, blob: str) -> bytes:
        """Decrypt an escrowed entry (the encryption context must name the same volume and entry)."""
        import base64

        kms = self.p.client(who, "kms")
        out = self.p._call(lambda: kms.decrypt(CiphertextBlob=base64.b64decode(blob), KeyId=self.p.settings.key_volumes_key_id,
                                               EncryptionContext={"vvg:volume-id": volume_id, "vvg:entry": name}))
        return out["Plaintext"]

    def leftovers(self, now: float) -> Iterator[tuple[str, str, str, str]]:
        """(kind, id, volume_id, host) of every provisioning snapshot and unrecorded-candidate volume whose
        ``vvg:provisioning`` expiry has passed (the reconciler's list; read with the caller's own identity)."""
        ec2 = self.p.own_ec2()
        flt = [{"Name": "tag-key", "Values": [TAG_PROVISIONING]}]
        for page in ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=flt):
            for snap in page.get("Snapshots", []):
                tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
                if _expired(tags, now):
                    yield "snapshot", snap["SnapshotId"], tags.get(TAG_VOLUME, ""), tags.get(TAG_HOSTS, "").split(",")[0]
        for page in ec2.get_paginator("describe_volumes").paginate(Filters=flt):
            for vol in page.get("Volumes", []):
                tags = {t["Key"]: t["Value"] for t in vol.get("Tags", [])}
                if _expired(tags, now) and vol.get("State") == "available" and not vol.get("Attachments"):
                    yield "volume", vol["VolumeId"], tags.get(TAG_VOLUME, ""), tags.get(TAG_HOSTS, "").split(",")[0]


def _expired(tags: dict[str, str], now: float) -> bool:
    value = tags.get(TAG_PROVISIONING, "")
    return value.isdigit() and int(value) < now
