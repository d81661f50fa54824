"""The provider reads of a preflight (docs/preflight.md): one DescribeInstances and one DescribeVolumes, through
the EC2 client the caller passes (the provider's session for the VM's host); nothing here changes anything."""
from __future__ import annotations

from typing import Any

from vvolguard.adapters.provider import TAG_HOSTS, TAG_VM, TAG_VOLUME

TAG_HOST_ID = "vvg:host-id"
LIVE_STATES = ("pending", "running", "stopping", "stopped")


def _tags(obj: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in obj.get("Tags", [])}


def find_instances(ec2: Any, vm_id: str | None, host_id: str | None) -> list[dict[str, Any]]:
    """Live instances tagged vvg:vm-id = ``vm_id`` or vvg:host-id = ``host_id`` (one DescribeInstances):
    ``{"instance_id", "zone", "state", "by": "vm"|"host"}``."""
    filters = []
    if vm_id:
        filters.append({"Name": "tag:" + TAG_VM, "Values": [vm_id]})
    else:
        filters.append({"Name": "tag:" + TAG_HOST_ID, "Values": [host_id or ""]})
    filters.append({"Name": "instance-state-name", "Values": list(LIVE_STATES)})
    out = []
    for r in ec2.describe_instances(Filters=filters).get("Reservations", []):
        for i in r.get("Instances", []):
            out.append({"instance_id": i["InstanceId"], "zone": i.get("Placement", {}).get("AvailabilityZone", ""),
                        "state": i.get("State", {}).get("Name", "")})
    return out


def find_volumes(ec2: Any, volume_ids: list[str]) -> dict[str, dict[str, Any]]:
    """vvg:volume-id -> ``{"provider_volume_id", "zone", "hosts": [...], "state"}`` (one DescribeVolumes)."""
    if not volume_ids:
        return {}
    resp = ec2.describe_volumes(Filters=[{"Name": "tag:" + TAG_VOLUME, "Values": list(volume_ids)}])
    out: dict[str, dict[str, Any]] = {}
    for v in resp.get("Volumes", []):
        tags = _tags(v)
        vid = tags.get(TAG_VOLUME)
        if vid and v.get("State") not in ("deleting", "deleted", "error"):
            out[vid] = {"provider_volume_id": v["VolumeId"], "zone": v.get("AvailabilityZone", ""),
                        "hosts": [h for h in tags.get(TAG_HOSTS, "").split(",") if h], "state": v.get("State")}
    return out
