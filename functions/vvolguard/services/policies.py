"""The policy table: apply (all or nothing), export, delete, and single-volume edits for the dashboard."""
from __future__ import annotations

from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from vvolguard.adapters.tx import Tx

from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import PolicyItem, listing_fields
from vvolguard.domain import policy_diff
from vvolguard.domain.policy import ID_RE, PolicySpec, mixed_attach_to
from vvolguard.domain.secrets import check_password, hash_password
from vvolguard.errors import (ConcurrentModification, Conflict, InvalidInput, NotFound, PolicyValidationError,
                              ProviderRefused, ProviderUnavailable)
from vvolguard.settings import Settings

POLICY_FIELDS = ("vm_id", "host_id", "storage_array", "size_mb", "attach_on", "detach_on", "app",
                 "authorized_apps", "os_disk_encryption", "max_attach_seconds", "min_key_bits", "attach_to")
# Items per transaction: DynamoDB allows 100; a policy change is its item, its record and a chain head.
_TX_BUDGET = 90


def vm_pk(vm_id: str) -> str:
    """The state-table partition of a VM."""
    return f"VM#{vm_id}"


def policy_sk(volume_id: str) -> str:
    """The sort key of a volume's policy item."""
    return f"POLICY#{volume_id}"


def item_to_spec(item: PolicyItem) -> PolicySpec:
    """The policy file's view of a stored item (no password)."""
    return PolicySpec(
        volume_id=item.volume_id, vm_id=item.vm_id, host_id=item.host_id, storage_array=item.storage_array,
        size_mb=int(item.size_mb), attach_on=item.attach_on, detach_on=item.detach_on, app=item.app,
        authorized_apps=tuple(item.authorized_apps or ()), os_disk_encryption=bool(item.os_disk_encryption),
        max_attach_seconds=int(item.max_attach_seconds),
        min_key_bits=int(item.min_key_bits) if item.min_key_bits is not None else None,
        attach_to=item.attach_to or "vm",
    )


def stored_policy(item: PolicyItem) -> policy_diff.StoredPolicy:
    """What the dry-run diff needs of a stored item."""
    return policy_diff.StoredPolicy(spec=item_to_spec(item), password_hash=item.password_hash,
                                    attached=bool(item.attached))


def _field_values(spec: PolicySpec) -> dict[str, Any]:
    return {f: (list(getattr(spec, f)) if f == "authorized_apps" else getattr(spec, f)) for f in POLICY_FIELDS}


def _shown(value: Any) -> str:
    """A policy value as the audit's change list shows it (the policy file's spelling; "-" for none)."""
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def change_list(old: PolicyItem, spec: PolicySpec, fields: list[str]) -> str:
    """``field: old → new`` for each changed field, joined by ``; `` (ids, numbers and keywords never hold
    either separator), for the audit record's detail; the dashboard shows it as a list."""
    before, after = _field_values(item_to_spec(old)), _field_values(spec)
    return "; ".join(f"{f}: {_shown(before[f])} → {_shown(after[f])}" for f in fields)


def _changes(old: PolicyItem, spec: PolicySpec) -> list[str]:
    old_spec = _field_values(item_to_spec(old))
    new = _field_values(spec)
    return [f for f in POLICY_FIELDS if old_spec[f] != new[f]]


@dataclass(frozen=True)
class Op:
    """One conditional write of a planned policy change, with the write that takes it back (``inverse``)."""

    kind: Literal["save", "delete", "update"]
    item: PolicyItem
    condition: Any
    actions: list | None = None
    inverse: Op | None = None

    @classmethod
    def save(cls, item: PolicyItem, condition: Any, inverse: Op | None = None) -> Op:
        return cls("save", item, condition, None, inverse)

    @classmethod
    def delete(cls, item: PolicyItem, condition: Any, inverse: Op | None = None) -> Op:
        return cls("delete", item, condition, None, inverse)

    @classmethod
    def update(cls, item: PolicyItem, condition: Any, actions: list, inverse: Op | None = None) -> Op:
        return cls("update", item, condition, actions, inverse)

    def add_to(self, tx: Tx) -> None:
        if self.kind == "save":
            tx.save(self.item, condition=self.condition)
        elif self.kind == "delete":
            tx.delete(self.item, condition=self.condition)
        else:
            tx.update(self.item, actions=self.actions, condition=self.condition)


def _listing_actions(spec: PolicySpec) -> list:
    """The update that puts an item written before the listing indexes into them."""
    return [getattr(PolicyItem, k).set(v) for k, v in listing_fields(spec.vm_id, spec.volume_id).items()]


class PolicyService:
    """Reads and writes of the policy table; every change is audited in the same transaction."""

    def __init__(self, settings: Settings, provider: Any = None) -> None:
        self.settings = settings
        self.audit = AuditLog(settings)
        self.provider = provider

    # ---- reads

    def for_vm(self, vm_id: str) -> list[PolicyItem]:
        """The VM's policies: one Query of its partition, no scan."""
        return list(PolicyItem.query(vm_pk(vm_id), PolicyItem.sk.startswith("POLICY#"), consistent_read=True))

    def get(self, volume_id: str) -> PolicyItem:
        """One volume's policy (by the volume index, then a consistent read), or NotFound."""
        if not isinstance(volume_id, str) or not ID_RE.match(volume_id):
            raise InvalidInput("volume id must match [A-Za-z0-9._-]{1,64}")
        for hit in PolicyItem.by_volume.query(volume_id, limit=2):
            try:
                return PolicyItem.get(hit.pk, hit.sk, consistent_read=True)
            except PolicyItem.DoesNotExist:
                break
        raise NotFound(f"volume {volume_id} has no policy")

    def find(self, volume_id: str) -> PolicyItem | None:
        """Like :meth:`get` but None when absent."""
        try:
            return self.get(volume_id)
        except NotFound:
            return None

    def all(self) -> Iterator[PolicyItem]:
        """Every policy, paged (export and the dashboard's list; never on the event path)."""
        return PolicyItem.scan(PolicyItem.sk.startswith("POLICY#"), page_size=500)

    def export(self) -> list[PolicySpec]:
        """The whole table as policy-file entries, sorted by volume id."""
        return sorted((item_to_spec(i) for i in self.all()), key=lambda s: s.volume_id)

    # ---- writes

    def _plan(self, spec: PolicySpec, actor: str, existing: PolicyItem | None,
              expected_version: int | None = None) -> tuple[str, list[Op], list[AuditRecord]]:
        """(outcome, write ops, audit records) for one spec; raises before anything is written.

        Each op carries its inverse (:class:`Op`), so an apply split over several transactions can be undone
        if a later one fails."""
        now = datetime.now(timezone.utc)
        if expected_version is not None:
            have = int(existing.policy_version) if existing else 0
            if have != expected_version:
                raise ConcurrentModification(
                    f"volume {spec.volume_id} was changed by someone else (version {have}, you edited {expected_version}); "
                    "reload it and apply your change again")
        password_hash = existing.password_hash if existing else None
        pw_changed = False
        if spec.password_given:
            if spec.password is None:
                pw_changed = password_hash is not None
                password_hash = None
            elif not (password_hash and check_password(spec.password, password_hash)):
                password_hash = hash_password(spec.password)
                pw_changed = True
        if existing is None:
            item = PolicyItem(pk=vm_pk(spec.vm_id), sk=policy_sk(spec.volume_id), volume_id=spec.volume_id,
                              policy_version=1, updated_at=now, updated_by=actor, password_hash=password_hash,
                              **_field_values(spec), **listing_fields(spec.vm_id, spec.volume_id))
            rec = AuditRecord(actor=actor, action="policy_create", outcome="done", vm_id=spec.vm_id,
                              volume_id=spec.volume_id, policy_version=1, reason="created",
                              detail={"fields": ",".join(POLICY_FIELDS), "password": "set" if password_hash else "none"})
            undo = Op.delete(item, PolicyItem.policy_version == 1)
            return "created", [Op.save(item, PolicyItem.pk.does_not_exist(), inverse=undo)], [rec]
        changed = _changes(existing, spec)
        if not changed and not pw_changed:
            if existing.list_key is None:  # written before the listing indexes: add it to them (docs/policy-pages.md)
                return "unchanged", [Op.update(existing, PolicyItem.policy_version == existing.policy_version,
                                               _listing_actions(spec))], []
            return "unchanged", [], []
        version = int(existing.policy_version) + 1
        detail = {"fields": ",".join(changed), "changes": change_list(existing, spec, changed)}
        if pw_changed:
            detail["password"] = "set" if password_hash else "removed"
        cond = PolicyItem.policy_version == existing.policy_version
        if spec.vm_id != existing.vm_id:
            if existing.attached:
                raise Conflict(f"volume {spec.volume_id} is attached to {existing.vm_id}; detach it before moving it to {spec.vm_id}")
            item = PolicyItem(pk=vm_pk(spec.vm_id), sk=policy_sk(spec.volume_id), volume_id=spec.volume_id,
                              policy_version=version, updated_at=now, updated_by=actor, password_hash=password_hash,
                              provider_volume_id=existing.provider_volume_id, **_field_values(spec),
                              **listing_fields(spec.vm_id, spec.volume_id))
            ops = [Op.delete(existing, cond, inverse=Op.save(existing, PolicyItem.pk.does_not_exist())),
                   Op.save(item, PolicyItem.pk.does_not_exist(),
                           inverse=Op.delete(item, PolicyItem.policy_version == version))]
            recs = [
                AuditRecord(actor=actor, action="policy_update", outcome="done", vm_id=existing.vm_id,
                            volume_id=spec.volume_id, policy_version=version, reason=f"moved to {spec.vm_id}", detail=detail),
                AuditRecord(actor=actor, action="policy_update", outcome="done", vm_id=spec.vm_id,
                            volume_id=spec.volume_id, policy_version=version, reason=f"moved from {existing.vm_id}", detail=detail),
            ]
            return "updated", ops, recs
        actions = [getattr(PolicyItem, f).set(v) if v is not None else getattr(PolicyItem, f).remove()
                   for f, v in _field_values(spec).items()]
        actions += [PolicyItem.policy_version.set(version), PolicyItem.updated_at.set(now), PolicyItem.updated_by.set(actor)]
        if existing.list_key is None:
            actions += _listing_actions(spec)
        if pw_changed:
            actions.append(PolicyItem.password_hash.set(password_hash) if password_hash else PolicyItem.password_hash.remove())
            actions += [PolicyItem.failed_passwords.set(0), PolicyItem.locked_until.remove()]
        rec = AuditRecord(actor=actor, action="policy_update", outcome="done", vm_id=spec.vm_id, volume_id=spec.volume_id,
                          policy_version=version, reason="updated", detail=detail)
        restore = [getattr(PolicyItem, f).set(v) if v is not None else getattr(PolicyItem, f).remove()
                   for f, v in _field_values(item_to_spec(existing)).items()]
        restore += [PolicyItem.policy_version.set(version + 1), PolicyItem.updated_at.set(now),
                    PolicyItem.updated_by.set(actor)]
        if pw_changed:
            restore.append(PolicyItem.password_hash.set(existing.password_hash) if existing.password_hash
                           else PolicyItem.password_hash.remove())
        undo = Op.update(existing, PolicyItem.policy_version == version, restore)
        return "updated", [Op.update(existing, cond, actions, inverse=undo)], [rec]

    def _write(self, ops: list[Op], recs: list[AuditRecord]) -> None:
        """One transaction: ``ops`` (conditional) and their audit records."""
        def extra(tx: Tx) -> None:
            for op in ops:
                op.add_to(tx)

        self.audit.append(recs, extra=extra)

    def _commit(self, batches: list[tuple[list[Op], list[AuditRecord]]]) -> None:
        """Write planned changes in as few transactions as DynamoDB's item limit allows; if a later
        transaction fails, the earlier ones are undone (and that is audited), so apply stays all or nothing."""
        chunks: list[tuple[list[Op], list[AuditRecord]]] = []
        ops: list[Op] = []
        recs: list[AuditRecord] = []
        for b_ops, b_recs in batches:
            chains = {r.vm_id for r in recs} | {r.vm_id for r in b_recs}
            if ops and len(ops) + len(b_ops) + len(recs) + len(b_recs) + len(chains) > _TX_BUDGET:
                chunks.append((ops, recs))
                ops, recs = [], []
            ops = ops + list(b_ops)
            recs = recs + list(b_recs)
        if ops:
            chunks.append((ops, recs))
        done: list[tuple[list[Op], list[AuditRecord]]] = []
        for c_ops, c_recs in chunks:
            try:
                self._write(c_ops, c_recs)
            except Exception as exc:
                self._undo(done)
                if isinstance(exc, ConcurrentModification):
                    raise ConcurrentModification(
                        "a volume in the file was changed by someone else while it was applied; nothing was applied "
                        f"({sum(len(o) for o, _ in done)} changes undone) - run apply again") from None
                raise
            done.append((c_ops, c_recs))

    def _undo(self, done: list[tuple[list[Op], list[AuditRecord]]]) -> None:
        for c_ops, c_recs in reversed(done):
            undo_ops = [op.inverse for op in reversed(c_ops) if op.inverse is not None]
            undo_recs = [AuditRecord(actor=r.actor, action=r.action.replace("policy_", "policy_undo_"), outcome="done",
                                     vm_id=r.vm_id, volume_id=r.volume_id, policy_version=r.policy_version,
                                     reason="apply failed later; change undone") for r in c_recs]
            for i in range(0, len(undo_ops), 30):
                self._write(undo_ops[i:i + 30], undo_recs[i:i + 30] if i + 30 < len(undo_ops) else undo_recs[i:])

    def apply(self, specs: list[PolicySpec], actor: str = "cli") -> dict[str, int]:
        """Upsert validated specs: plan all (any refusal stops before the first write), then commit."""
        counts = {"created": 0, "updated": 0, "unchanged": 0}
        batches = []
        moves = []
        self._check_attach_to(specs)
        for spec in specs:
            existing = self.find(spec.volume_id)
            outcome, ops, recs = self._plan(spec, actor, existing)
            counts[outcome] += 1
            if ops:
                batches.append((ops, recs))
                moves.append((existing, spec))
        undo = self._move_hosts(moves)
        try:
            self._commit(batches)
        except Exception:
            self._restore_hosts(undo)
            raise
        return counts

    # ---- attach_to and host moves at the provider (docs/deployment-modes.md, docs/policy-file.md)

    def _check_attach_to(self, specs: list[PolicySpec]) -> None:
        """Every volume of one VM has the same ``attach_to``, the stored volumes the specs leave as they are
        included; a mix is refused naming the entry and the field, before anything is written."""
        named = {s.volume_id for s in specs}
        others: list[PolicySpec] = []
        vms = sorted({s.vm_id for s in specs})
        if len(vms) > 200:  # a large file: its own entries were checked by the validator; the table once
            return
        for vm_id in vms:
            others += [item_to_spec(i) for i in self.for_vm(vm_id) if i.volume_id not in named]
        problems = [p for p in mixed_attach_to(others + list(specs)) if not any(p.startswith(o.volume_id + ":")
                                                                                   for o in others)]
        if problems:
            raise PolicyValidationError(problems)

    def _move_hosts(self, moves: list[tuple[PolicyItem | None, PolicySpec]]) -> list[tuple[Any, str, tuple[str, ...]]]:
        """A ``host_id`` change of a volume that exists at the provider replaces the old host by the new one
        in its ``vvg:hosts``, acting for the old host (else the new one). Returns what undoes it; a refusal
        undoes the moves made so far and is raised as Conflict, so nothing is applied."""
        from vvolguard.adapters.models import HostItem
        from vvolguard.adapters.provider import HostIdentity

        done: list[tuple[Any, str, tuple[str, ...]]] = []
        for existing, spec in moves:
            if existing is None or not existing.provider_volume_id or existing.host_id == spec.host_id:
                continue
            if self.provider is None:
                from vvolguard.adapters.provider import EbsProvider

                self.provider = EbsProvider(self.settings)
            who = None
            for host_id in (existing.host_id, spec.host_id):
                try:
                    h = HostItem.get(host_id)
                except HostItem.DoesNotExist:
                    continue
                if h.cred_hash:
                    who = HostIdentity(h.host_id, h.cred_hash)
                    break
            pvid = existing.provider_volume_id
            try:
                if who is None:
                    raise ProviderRefused("host_not_found", f"neither {existing.host_id} nor {spec.host_id} is enrolled")
                before = tuple(self.provider.hosts(who, pvid))
                after = tuple(dict.fromkeys([spec.host_id if h == existing.host_id else h for h in before]
                                            + [spec.host_id]))
                if after != before:
                    self.provider.set_hosts(who, pvid, after)
                    done.append((who, pvid, before))
            except (ProviderRefused, ProviderUnavailable) as exc:
                self._restore_hosts(done)
                reason = getattr(exc, "reason", exc.code)
                raise Conflict(f"volume {spec.volume_id}: the storage provider refused to move it from host "
                               f"{existing.host_id} to {spec.host_id} ({reason}); nothing was applied") from None
        return done

    def _restore_hosts(self, done: list[tuple[Any, str, tuple[str, ...]]]) -> None:
        for who, pvid, before in reversed(done):
            try:
                self.provider.set_hosts(who, pvid, before)
            except Exception:  # noqa: BLE001 - the reconciler's grant check restores vvg:hosts from the table
                import logging

                logging.getLogger("vvg.policies").exception("could not restore vvg:hosts of %s", pvid)

    def dry_run(self, specs: list[PolicySpec]) -> dict[str, Any]:
        """What :meth:`apply` would do with ``specs``, old -> new per field, with warnings; reads only
        (docs/policy-apply.md)."""
        stored = {}
        for spec in specs:
            item = self.find(spec.volume_id)
            if item is not None:
                stored[spec.volume_id] = stored_policy(item)
        return policy_diff.diff(specs, stored, self.host_status({s.host_id for s in specs}))

    def preview(self, spec: PolicySpec, item: PolicyItem | None) -> dict[str, Any]:
        """The dry-run diff of one volume against the item the editor read (the dashboard's confirmation)."""
        stored = {spec.volume_id: stored_policy(item)} if item is not None else {}
        return policy_diff.diff([spec], stored, self.host_status({spec.host_id}))

    def host_status(self, host_ids: set[str]) -> dict[str, str | None]:
        """host_id -> "active", "revoked" or None (not enrolled), in batches of 100 reads."""
        from vvolguard.adapters.models import HostItem

        out: dict[str, str | None] = {h: None for h in host_ids}
        ids = sorted(h for h in host_ids if ID_RE.match(h))
        for i in range(0, len(ids), 100):
            for host in HostItem.batch_get(ids[i:i + 100], attributes_to_get=["host_id", "status"]):
                out[host.host_id] = host.status or "active"
        return out

    def save_one(self, spec: PolicySpec, actor: str, expected_version: int | None) -> str:
        """Create (expected_version 0) or edit (the version the editor read) one volume's policy."""
        existing = self.find(spec.volume_id)
        if expected_version == 0 and existing is not None:
            raise ConcurrentModification(f"volume {spec.volume_id} already has a policy; open it to edit it")
        outcome, ops, recs = self._plan(spec, actor, existing, expected_version)
        self._check_attach_to([spec])
        if ops:
            undo = self._move_hosts([(existing, spec)])
            try:
                self._write(ops, recs)
            except Exception:
                self._restore_hosts(undo)
                raise
        return outcome

    def delete(self, volume_id: str, actor: str = "cli", expected_version: int | None = None) -> dict[str, Any]:
        """Remove one volume's policy; a volume still attached is detached at the provider first."""
        item = self.get(volume_id)
        if expected_version is not None and int(item.policy_version) != expected_version:
            raise ConcurrentModification(f"volume {volume_id} was changed by someone else; reload it before deleting")
        detached = False
        if item.attached:
            if self.provider is None:
                raise Conflict(f"volume {volume_id} is attached and no storage provider is configured to detach it")
            self.provider.detach_for_policy_delete(item)
            detached = True
        recs = []
        if detached:
            recs.append(AuditRecord(actor=actor, action="detach", outcome="done", vm_id=item.vm_id, volume_id=volume_id,
                                    policy_version=int(item.policy_version), reason="policy deleted"))
        recs.append(AuditRecord(actor=actor, action="policy_delete", outcome="done", vm_id=item.vm_id, volume_id=volume_id,
                                policy_version=int(item.policy_version), reason="deleted"))
        self._write([Op.delete(item, PolicyItem.policy_version == item.policy_version)], recs)
        return {"volume_id": volume_id, "deleted": True, "detached": detached}
