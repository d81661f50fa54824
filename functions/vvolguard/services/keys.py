"""Key volumes (docs/key-volume.md): provision at the provider without attaching, describe, recover.

Provisioning writes the VVGKEY1 image into a snapshot with the EBS direct APIs, makes a volume of it
encrypted with vvolguard's own key, deletes the snapshot, then switches the policy to the new volume in
one transaction with its audit record and deletes the old volume. Everything is validated before the
first provider call; a failure undoes what was made (and the reconciler removes what a run that died
halfway left, by the ``vvg:provisioning`` tag). Key bytes never reach a log, an answer or the audit.
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import datetime, timezone
from typing import Any, Iterable

from botocore.exceptions import ClientError

from vvolguard.domain.constants import rfc3339
from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import HostItem, KeyVolumeItem, PolicyItem
from vvolguard.adapters.provider import (
    EbsProvider,
    HostIdentity,
    KeyVolumeWriter,
    ProviderRefused,
    TAG_PROVISIONING,
)
from vvolguard.adapters.tx import Tx
from vvolguard.domain import keyvolume as kv
from vvolguard.errors import Conflict, ConcurrentModification, InvalidInput, VvgError
from vvolguard.services.policies import PolicyService
from vvolguard.settings import Settings

log = logging.getLogger("vvg.keys")
KEYVOL_SK = "KEYVOL"
LEFTOVER_SECONDS = 900  # a provisioning's snapshot and volume are leftovers once this old (the reconciler removes them)
MAX_ESCROW_ENTRY = 4096  # KMS Encrypt's plaintext limit
MAX_IMAGE_FILE = 64 * 1024 * 1024  # `vvg key build` without --size-mb: no entry file over 64 MiB


def keyvol_pk(volume_id: str) -> str:
    return f"KEYVOL#{volume_id}"


class KeyVolumeRefused(Conflict):
    """The key volume cannot be written now (attached, busy, or no place to put it)."""

    code = "key_volume_refused"


class NotEscrowed(Conflict):
    """Nothing was escrowed for this volume or entry."""

    code = "not_escrowed"


def collect_entries(generate: Iterable[str], files: Iterable[str], capacity: int | None,
                    read: Any = None) -> list[kv.Entry]:
    """The entries of ``--generate`` and ``--file`` (each read at most ``capacity`` + 1 bytes), validated,
    with a 64-byte random ``luks`` entry when none is given."""
    entries: list[kv.Entry] = []
    for spec in generate:
        name, count = kv.parse_generate(spec)
        entries.append(kv.Entry(name, kv.default_kind(name), secrets.token_bytes(count)))
    for spec in files:
        name, path, kind = kv.parse_file(spec)
        limit = capacity if capacity is not None else MAX_IMAGE_FILE
        try:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
        except OSError as exc:
            raise InvalidInput(f"--file {name}: cannot read {path}: {exc.strerror}") from None
        if len(data) > limit:
            what = "the volume's" if capacity is not None else "the image's limit of"
            raise kv.KeyVolumeError(f"--file {name}: {path} is over {what} {limit} bytes")
        entries.append(kv.Entry(name, kind, data))
    if not any(e.name == kv.LUKS for e in entries):
        entries.append(kv.Entry(kv.LUKS, "luks-key", secrets.token_bytes(kv.LUKS_DEFAULT_BYTES)))
    return kv.validate_entries(entries, capacity)


def capacity_of(item: PolicyItem) -> int:
    """Bytes a key volume image may take: the policy's size_mb."""
    return int(item.size_mb) * 1024 * 1024


def _now() -> datetime:
    return datetime.now(timezone.utc)



def key_states(volume_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Key volume state of a page of volumes (the dashboard): one BatchGet per 100, never a scan; volumes
    never provisioned are absent. Names, kinds, sizes and digests only."""
    out: dict[str, dict[str, Any]] = {}
    keys = [(keyvol_pk(v), KEYVOL_SK) for v in dict.fromkeys(volume_ids)]
    if keys:
        for item in KeyVolumeItem.batch_get(keys):
            out[item.kv_volume_id] = KeyService.summary(item.kv_volume_id, None, item)
    return out


class KeyService:
    """``vvg key provision | describe | recover``."""

    def __init__(self, settings: Settings, provider: EbsProvider | None = None) -> None:
        self.settings = settings
        self.provider = provider or EbsProvider(settings)
        self.writer = KeyVolumeWriter(self.provider)
        self.policies = PolicyService(settings)
        self.audit = AuditLog(settings)

    # ---- reads

    def record(self, volume_id: str) -> KeyVolumeItem | None:
        try:
            return KeyVolumeItem.get(keyvol_pk(volume_id), KEYVOL_SK, consistent_read=True)
        except KeyVolumeItem.DoesNotExist:
            return None

    @staticmethod
    def summary(volume_id: str, policy: PolicyItem | None, item: KeyVolumeItem | None) -> dict[str, Any]:
        """The describe answer (never bytes)."""
        if item is None:
            return {"volume_id": volume_id, "provisioned": False,
                    "provider_volume_id": policy.provider_volume_id if policy else None,
                    "provisioned_at": None, "escrowed": False, "entries": []}
        return {"volume_id": volume_id, "provisioned": True, "provider_volume_id": item.provider_volume_id,
                "provisioned_at": rfc3339(item.provisioned_at), "escrowed": bool(item.escrow_json),
                "entries": json.loads(item.entries_json)}

    def describe(self, volume_id: str) -> dict[str, Any]:
        policy = self.policies.get(volume_id)
        return self.summary(volume_id, policy, self.record(volume_id))

    def describe_many(self, volume_ids: list[str]) -> dict[str, dict[str, Any]]:
        return key_states(volume_ids)

    # ---- provision

    def _who(self, host_id: str, revoked_ok: bool = False) -> HostIdentity:
        try:
            host = HostItem.get(host_id)
        except HostItem.DoesNotExist:
            raise KeyVolumeRefused(f"host {host_id} is not enrolled; vvolguard cannot act for it") from None
        if host.status != "active" and not revoked_ok:
            raise KeyVolumeRefused(f"host {host_id} is revoked; vvolguard does not act for it")
        return HostIdentity(host.host_id, host.cred_hash)

    def provision(self, volume_id: str, generate: Iterable[str] = (), files: Iterable[str] = (),
                  escrow: bool = False, actor: str = "cli") -> dict[str, Any]:
        """Write a fresh key volume for ``volume_id``; answers names, kinds, sizes and digests only."""
        policy = self.policies.get(volume_id)  # NotFound: an unknown volume
        entries = collect_entries(generate, files, capacity_of(policy))
        if escrow:
            for e in entries:
                if len(e.data) > MAX_ESCROW_ENTRY:
                    raise kv.KeyVolumeError(f"--escrow: entry {e.name} is {len(e.data)} bytes; escrow holds entries "
                                            f"of at most {MAX_ESCROW_ENTRY} bytes")
        if policy.attached:
            raise KeyVolumeRefused(f"volume {volume_id} is attached; detach it before provisioning")
        now = _now()
        if policy.busy_until and policy.busy_until > now:
            raise KeyVolumeRefused(f"volume {volume_id} is changing under an event right now; retry")
        who = self._who(policy.host_id)
        old_id = policy.provider_volume_id
        zone = None
        if old_id:
            try:
                old = self.writer.volume(who, old_id)
            except ProviderRefused:
                old, old_id = None, None
            if old is not None:
                if any(a.get("State") in ("attaching", "attached", "detaching") for a in old.get("Attachments", [])):
                    raise KeyVolumeRefused(f"volume {volume_id} ({old_id}) is attached at the provider; detach it first")
                zone = old["AvailabilityZone"]
        try:
            zone = self.provider.find_instance(who, policy.vm_id).zone
        except ProviderRefused:
            if zone is None:
                raise KeyVolumeRefused(f"no instance is tagged vvg:vm-id={policy.vm_id} and the volume does not "
                                       f"exist yet: nowhere to put it") from None
        image, header = kv.build(policy.vm_id, volume_id, entries, rfc3339(now), capacity_of(policy))
        blobs = {e.name: self.writer.escrow(who, volume_id, e.name, e.data) for e in entries} if escrow else {}
        expires = int(time.time()) + LEFTOVER_SECONDS

        snapshot_id = new_id = None
        try:
            key_arn = self.writer.key_arn(who)
            snapshot_id = self.writer.start(who, volume_id, policy.vm_id, int(policy.size_mb), expires, key_arn)
            blocks, checksum = self.writer.put(who, snapshot_id, image)
            self.writer.complete(who, snapshot_id, blocks, checksum)
            new_id = self.writer.create(who, volume_id, policy.vm_id, int(policy.size_mb), zone, snapshot_id, expires)
            self.writer.delete_snapshot(who, snapshot_id)
            snapshot_id = None
            if old_id:  # marks the old volume as a leftover, should this run die before deleting it
                self.writer.mark(who, old_id, str(expires))
            self._switch(policy, header, new_id, zone, blobs, now, actor)
        except BaseException:
            self._undo(who, snapshot_id, new_id, old_id, policy)
            raise
        try:
            self.writer.mark(who, new_id, "done")
            if old_id and old_id != new_id:
                self.writer.delete_volume(who, old_id)
        except Exception as exc:  # noqa: BLE001 - the switch is done; the reconciler finishes (both are tagged)
            log.warning("key provision of %s: cleanup left to the reconciler (%s)", volume_id, type(exc).__name__)
        return {"volume_id": volume_id, "provider_volume_id": new_id, "entries": kv.public_entries(header)}

    def _undo(self, who: HostIdentity, snapshot_id: str | None, new_id: str | None, old_id: str | None,
              policy: PolicyItem) -> None:
        for what, fn in (("volume", lambda: new_id and self.writer.delete_volume(who, new_id)),
                         ("snapshot", lambda: snapshot_id and self.writer.delete_snapshot(who, snapshot_id)),
                         ("mark", lambda: old_id and self.writer.mark(who, old_id, "done"))):
            try:
                fn()
            except Exception as exc:  # the reconciler removes what is left (tagged vvg:provisioning)
                log.warning("key provision of %s: undo of the %s failed (%s)", policy.volume_id, what, type(exc).__name__)

    def _switch(self, policy: PolicyItem, header: kv.Header, new_id: str, zone: str, blobs: dict[str, str],
                now: datetime, actor: str) -> None:
        item = KeyVolumeItem(keyvol_pk(policy.volume_id), KEYVOL_SK, kv_volume_id=policy.volume_id,
                             kv_vm_id=policy.vm_id, provider_volume_id=new_id, provisioned_at=now,
                             provisioned_by=actor, entries_json=json.dumps(kv.public_entries(header)),
                             escrow_json=json.dumps(blobs) if blobs else None)
        rec = AuditRecord(actor=actor, action="key_provision", outcome="done", vm_id=policy.vm_id,
                          volume_id=policy.volume_id, host_id=policy.host_id,
                          reason="escrowed" if blobs else "not_escrowed",
                          detail={"provider_volume_id": new_id, "replaced": policy.provider_volume_id or "",
                                  "entries": ",".join(f"{e.name}:{e.kind}:{e.size}:{e.sha256[:16]}" for e in header.entries)})

        def extra(tx: Tx) -> None:
            tx.update(policy, actions=[PolicyItem.provider_volume_id.set(new_id), PolicyItem.zone.set(zone),
                                       PolicyItem.state_version.add(1)],
                      condition=(PolicyItem.state_version == policy.state_version) & (PolicyItem.attached == False),  # noqa: E712
                      add_version_condition=False)
            tx.save(item)

        try:
            self.audit.append([rec], extra=extra)
        except ConcurrentModification:
            raise KeyVolumeRefused(f"volume {policy.volume_id} changed during provisioning (an event attached or "
                                   f"created it); nothing was kept, retry") from None

    # ---- recover

    def recover(self, volume_id: str, name: str, actor: str = "cli") -> bytes:
        """Break-glass: an escrowed entry's bytes, audited as key_recover (the caller writes them, 0600)."""
        policy = self.policies.get(volume_id)
        if not kv.NAME_RE.match(name or ""):
            raise kv.KeyVolumeError("entry name must match [A-Za-z0-9._-]{1,64}")
        item = self.record(volume_id)
        blobs = json.loads(item.escrow_json) if item is not None and item.escrow_json else {}
        if not blobs:
            raise NotEscrowed(f"nothing was escrowed for {volume_id} (provision it with --escrow)")
        if name not in blobs:
            raise NotEscrowed(f"entry {name} of {volume_id} was not escrowed")
        who = self._who(policy.host_id, revoked_ok=True)  # break-glass: a revoked host's volume too (no provider write)
        data = self.writer.unescrow(who, volume_id, name, blobs[name])
        items = self.audit.append([AuditRecord(actor=actor, action="key_recover", outcome="done", vm_id=policy.vm_id,
                                               volume_id=volume_id, host_id=policy.host_id, reason="break_glass",
                                               detail={"entry": name})])
        from vvolguard.services.alerts import audit_ref, raise_alert

        raise_alert(self.settings, "key_recovered", vm_id=policy.vm_id, volume_id=volume_id, host_id=policy.host_id,
                    ref=audit_ref(items[0]) if items else None, detail=f"entry {name} recovered by {actor}")
        return data

    # ---- reconciler

    def remove_leftovers(self, now: float | None = None) -> tuple[int, list[str]]:
        """Delete what an unfinished provisioning left: expired snapshots, and expired volumes that no policy
        records. Returns (things deleted, errors)."""
        done, errors = 0, []
        for kind, rid, volume_id, host_id in list(self.writer.leftovers(now or time.time())):
            try:
                who = self._who(host_id, revoked_ok=True)  # cleaning up after a host revoked meanwhile
                if kind == "snapshot":
                    self.writer.delete_snapshot(who, rid)
                    done += 1
                    continue
                policy = self.policies.find(volume_id) if kv.ID_RE.match(volume_id or "") else None
                if policy is not None and policy.provider_volume_id == rid:
                    self.writer.mark(who, rid, "done")  # the run finished its switch: this is the volume
                    continue
                self.writer.delete_volume(who, rid)
                done += 1
            except VvgError as exc:
                errors.append(f"provisioning leftover {rid}: {exc.code}")
            except ClientError as exc:
                errors.append(f"provisioning leftover {rid}: {exc.response.get('Error', {}).get('Code', '?')}")
        return done, errors


__all__ = ["KeyService", "collect_entries", "KeyVolumeRefused", "NotEscrowed", "TAG_PROVISIONING"]
