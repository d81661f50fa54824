"""What a refused webhook request must leave alone (docs/webhook-api.md), read under moto's mock_aws.

"Errors write nothing to the policy table, the attachment state or the provider; a refused request does not
use up its event_id." Refusals that name an enrolled host are audited on purpose, so the audit table and
the chains' heads are not part of the snapshot; everything else vvolguard writes for an event is.
"""
from __future__ import annotations

from tests.conftest import ec2_client, managed_volumes

_ec2 = None


def _client():
    """One EC2 client for the whole session (creating one costs ~50 ms; moto's mock intercepts any client)."""
    global _ec2
    if _ec2 is None:
        _ec2 = ec2_client()
    return _ec2


def snapshot() -> dict:
    """Policies with their attachment state (versions included), migration grants, event records, hosts
    (status, secret version, last seen) and the provider's managed volumes with tags and attachments."""
    from vvolguard.adapters.models import EventItem, GrantItem, HostItem, PolicyItem

    return {
        "policies": {i.volume_id: dict(i.attribute_values) for i in PolicyItem.scan()},
        "grants": {(g.vm_id, g.destination_host): dict(g.attribute_values) for g in GrantItem.scan()},
        "events": {e.event_id: dict(e.attribute_values) for e in EventItem.scan()},
        "hosts": {h.host_id: (h.status, int(h.secret_version), h.last_seen_at) for h in HostItem.scan()},
        "provider": {vid: {"id": v["VolumeId"], "size": v["Size"], "tags": v["TagMap"],
                           "attachments": sorted((a["InstanceId"], a["Device"], a["State"])
                                                 for a in v.get("Attachments", []))}
                     for vid, v in managed_volumes(_client()).items()},
    }
