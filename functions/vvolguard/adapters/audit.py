"""The tamper-evident audit history: per-chain keyed hash chains (HMAC-SHA256, key in Secrets Manager).

Each chain (one per VM, one per host, one per user) has a head item in the state table holding the
last sequence number and MAC. A record and its head move in one transaction, so concurrent writers
of one chain lose cleanly and retry, and writers of different chains never wait for each other.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pynamodb.exceptions import TransactWriteError
from vvolguard.adapters.tx import Tx

from vvolguard.adapters import aws
from vvolguard.adapters.backoff import sleep_backoff
from vvolguard.adapters.models import AuditItem, ChainHead, connection
from vvolguard.errors import ConcurrentModification
from vvolguard.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from vvolguard.adapters.checkpoints import Checkpoint, CheckpointStore

HEAD_SK = "~AUDIT"
RECORD_FIELDS = ("at", "actor", "vm_id", "volume_id", "host_id", "event_id", "event_type",
                 "action", "outcome", "reason", "policy_version", "detail")
# What the policy-impact replay needs of a host event besides the fields above (docs/policy-impact.md),
# recorded from MAC format 3 on: the event's own time, app, migration hosts, disk_encryption products
# (``name:type:bits,…``) and the password's verdict (ok | bad | none), never the password.
REPLAY_FIELDS = ("occurred_at", "app", "destination_host", "source_host", "apps", "password_verdict")


@dataclass
class AuditRecord:
    """What happened; every field but ``detail`` is promised to users (docs/security-model.md#the-audit-history)."""

    actor: str
    action: str
    outcome: str
    reason: str | None = None
    vm_id: str | None = None
    volume_id: str | None = None
    host_id: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    policy_version: int | None = None
    detail: dict[str, str] = field(default_factory=dict)
    at: str = ""
    occurred_at: str | None = None
    app: str | None = None
    destination_host: str | None = None
    source_host: str | None = None
    apps: str | None = None
    password_verdict: str | None = None


def now_rfc3339() -> str:
    """The current UTC time, RFC 3339 with milliseconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def chain_for(record: AuditRecord) -> str:
    """Which chain a record belongs to: its VM's, else its host's, else its user's."""
    if record.vm_id:
        return f"VM#{record.vm_id}"
    if record.host_id:
        return f"HOST#{record.host_id}"
    return f"ACTOR#{record.actor}"


def _payload(chain: str, seq: int, prev: str, rec: dict[str, Any]) -> bytes:
    """The first format (records without ``v``): the record's fields and its chain position only."""
    body = {k: rec.get(k) for k in RECORD_FIELDS}
    body["detail"] = {str(k): str(v) for k, v in (body.get("detail") or {}).items()}
    if body.get("policy_version") is not None:
        body["policy_version"] = int(body["policy_version"])
    body.update(chain=chain, seq=seq, prev=prev)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def compute_mac(key: bytes, chain: str, seq: int, prev: str, rec: dict[str, Any]) -> str:
    """The MAC of one record of the first format (kept to verify records written before format 2)."""
    return hmac.new(key, _payload(chain, seq, prev, rec), hashlib.sha256).hexdigest()


MAC_VERSION = 3
# Every attribute an audit item of format 2 stores except its MAC: the index keys (month, at_key) and the
# format too, so that no stored field can change without the MAC failing (docs/threat-model.md).
STORED_FIELDS = ("chain", "seq", "month", "at_key", "prev", "v") + RECORD_FIELDS
# Format 3 (written from now on) also covers the replay fields (docs/policy-impact.md).
STORED_FIELDS_V3 = STORED_FIELDS + REPLAY_FIELDS


def month_of(at: str) -> str:
    """The ``by-time`` index partition of a record."""
    return at[:7]


def months(end: datetime, start: datetime | None = None, limit: int = 1200) -> list[str]:
    """The ``by-time`` partitions from ``end``'s month back to ``start``'s (or ``limit`` months), newest
    first: the one month walk of every reader of that index."""
    y, m = end.year, end.month
    low = (start.year, start.month) if start is not None else None
    out: list[str] = []
    while len(out) < limit and (low is None or (y, m) >= low):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out


def at_key_of(at: str, chain: str, seq: int) -> str:
    """The sort key of a record in the ``by-time`` and ``by-volume`` indexes."""
    return f"{at}#{chain}#{int(seq):012d}"


def _canonical(fields: dict[str, Any], names: tuple[str, ...] = STORED_FIELDS) -> bytes:
    body: dict[str, Any] = {k: fields.get(k) for k in names}
    body["detail"] = {str(k): str(v) for k, v in (body.get("detail") or {}).items()}
    for k in ("seq", "v", "policy_version"):
        if body.get(k) is not None:
            body[k] = int(body[k])
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def compute_mac_v2(key: bytes, fields: dict[str, Any]) -> str:
    """The MAC of a format-2 record: every stored attribute but the MAC itself (``STORED_FIELDS``)."""
    return hmac.new(key, b"vvg-audit/2\n" + _canonical(fields), hashlib.sha256).hexdigest()


def compute_mac_v3(key: bytes, fields: dict[str, Any]) -> str:
    """The MAC of a format-3 record: every stored attribute but the MAC itself (``STORED_FIELDS_V3``)."""
    return hmac.new(key, b"vvg-audit/3\n" + _canonical(fields, STORED_FIELDS_V3), hashlib.sha256).hexdigest()


def item_fields(item: AuditItem) -> dict[str, Any]:
    """The stored attributes of an item, as the MAC covers them."""
    out = {k: getattr(item, k) for k in STORED_FIELDS_V3}
    out["detail"] = dict(item.detail.as_dict()) if item.detail is not None else {}
    return out


def record_ok(key: bytes, fields: dict[str, Any], mac: str) -> str | None:
    """None when ``fields`` (one record, as stored or as exported) carry a valid ``mac``; else the problem.

    Format 2 covers every stored field. A first-format record's MAC does not cover its index keys, so
    those must be what its covered fields imply (they are for every record this code writes)."""
    chain, seq, at = fields.get("chain"), fields.get("seq"), fields.get("at") or ""
    if not isinstance(chain, str) or not isinstance(seq, int) or not isinstance(mac, str):
        return "altered (chain, seq or mac missing)"
    if fields.get("month", month_of(at)) != month_of(at) or fields.get("at_key", at_key_of(at, chain, seq)) != at_key_of(at, chain, seq):
        return "altered (its index keys were changed)"
    version = fields.get("v")
    if (version is None or int(version) < 3) and any(fields.get(k) is not None for k in REPLAY_FIELDS):
        return "altered (an attribute was added)"  # only format 3 carries the replay fields
    if version is not None and int(version) >= 3:
        want = compute_mac_v3(key, fields)
    elif version is not None:
        want = compute_mac_v2(key, fields)
    else:
        want = compute_mac(key, chain, seq, fields.get("prev") or "", fields)
    return None if hmac.compare_digest(want, mac) else "altered or reordered"


def head_tag(key: bytes, chain: str, seq: int, mac: str) -> str:
    """The keyed tag of a chain head: moving the head back to an earlier record needs the key."""
    return hmac.new(key, f"head|{chain}|{seq}|{mac}".encode("utf-8"), hashlib.sha256).hexdigest()


class AuditLog:
    """Append, list and verify audit records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _key(self) -> bytes:
        return aws.audit_key(self.settings.region, self.settings.audit_key_secret_id)

    def head(self, chain: str) -> tuple[int, str]:
        """(last seq, last mac) of ``chain``; (0, "") when it has no record yet."""
        try:
            h = ChainHead.get(chain, HEAD_SK, consistent_read=True)
            return int(h.head_seq), h.head_mac
        except ChainHead.DoesNotExist:
            return 0, ""

    def build(self, chain: str, head: tuple[int, str], records: list[AuditRecord]) -> tuple[list[AuditItem], ChainHead]:
        """The items for ``records`` appended after ``head``, and the new head."""
        key = self._key()
        seq, prev = head
        items = []
        for rec in records:
            rec.at = rec.at or now_rfc3339()
            seq += 1
            data = asdict(rec)
            data["detail"] = {str(k): str(v) for k, v in rec.detail.items()}
            fields = {k: v for k, v in data.items() if v is not None and v != {}}
            fields.update(chain=chain, seq=seq, month=month_of(rec.at), at_key=at_key_of(rec.at, chain, seq),
                          prev=prev, v=MAC_VERSION)
            mac = compute_mac_v3(key, fields)
            items.append(AuditItem(mac=mac, **fields))
            prev = mac
        return items, ChainHead(pk=chain, sk=HEAD_SK, head_seq=seq, head_mac=prev,
                                head_tag=head_tag(key, chain, seq, prev))

    @staticmethod
    def add_to(tx: Tx, head: tuple[int, str], items: list[AuditItem], new_head: ChainHead) -> None:
        """Put ``items`` and move the head inside ``tx``, conditional on the head being unchanged."""
        for item in items:
            tx.save(item, condition=AuditItem.chain.does_not_exist(), label="audit")
        if head[0] == 0:
            tx.save(new_head, condition=ChainHead.pk.does_not_exist(), label="head")
        else:
            tx.save(new_head, condition=ChainHead.head_seq == head[0], label="head")

    def append(self, records: list[AuditRecord],
               extra: Callable[[Tx], Any] | None = None, attempts: int = 16) -> list[AuditItem]:
        """Write ``records`` (any chains) in one transaction together with ``extra``'s writes.

        ``extra(tx)`` adds the caller's conditional writes (label "extra", the default); a failed
        condition among them raises ConcurrentModification, a lost race for a chain head is retried.
        """
        if not records and extra is None:
            return []
        by_chain: dict[str, list[AuditRecord]] = {}
        for rec in records:
            rec.at = rec.at or now_rfc3339()
            by_chain.setdefault(chain_for(rec), []).append(rec)
        for attempt in range(attempts):
            if attempt:  # writers of one chain take turns instead of colliding again
                sleep_backoff(attempt)
            heads = {c: self.head(c) for c in by_chain}
            built = {c: self.build(c, heads[c], [AuditRecord(**asdict(r)) for r in recs]) for c, recs in by_chain.items()}
            tx = Tx(connection=connection(self.settings))
            try:
                with tx:
                    if extra:
                        extra(tx)
                    for c, (items, new_head) in built.items():
                        self.add_to(tx, heads[c], items, new_head)
            except TransactWriteError as exc:
                failed, conflict = tx.cancellation(exc)
                if "extra" in failed:
                    raise ConcurrentModification("the item changed since it was read; read it again and retry") from None
                if failed or conflict:
                    continue
                raise
            return [i for items, _ in built.values() for i in items]
        raise ConcurrentModification("the audit history is busy; retry")

    # ---- reading

    def recent(self, vm_id: str | None = None, volume_id: str | None = None, limit: int = 100,
               months_back: int = 36) -> Iterator[AuditItem]:
        """Records newest first, filtered by VM or volume; reads only as many pages as ``limit`` needs."""
        count = 0
        if vm_id:
            it = AuditItem.query(f"VM#{vm_id}", scan_index_forward=False, page_size=min(limit, 500))
            if volume_id:
                it = (r for r in it if r.volume_id == volume_id)
            source: Iterator[AuditItem] = iter(it)
        elif volume_id:
            source = iter(AuditItem.by_volume.query(volume_id, scan_index_forward=False, page_size=min(limit, 500)))
        else:
            source = self._by_time(months_back, min(limit, 500))
        for rec in source:
            if count >= limit:
                return
            count += 1
            yield rec

    @staticmethod
    def _by_time(months_back: int, page: int) -> Iterator[AuditItem]:
        for month in months(datetime.now(timezone.utc), limit=months_back):
            yield from AuditItem.by_time.query(month, scan_index_forward=False, page_size=page)

    def heads(self) -> dict[str, tuple[int, str, str]]:
        """chain -> (head seq, head mac, head tag) of every chain head (a consistent scan of head items)."""
        return {h.pk: (int(h.head_seq), h.head_mac, h.head_tag or "")
                for h in ChainHead.scan(ChainHead.sk == HEAD_SK, page_size=1000, consistent_read=True)}

    def _raw_items(self) -> Iterator[dict[str, Any]]:
        """Every stored audit item as DynamoDB returns it (attributes the model does not know included)."""
        pages = aws.client("dynamodb", self.settings.region).get_paginator("scan").paginate(
            TableName=self.settings.audit_table, ConsistentRead=True, PaginationConfig={"PageSize": 1000})
        for page in pages:
            yield from page.get("Items", [])

    def verify(self, checkpoints: "CheckpointStore | None" = None) -> dict[str, Any]:
        """Check every chain (each MAC over every stored field, each link, no gaps, the head) and then the
        tables against the latest checkpoint whose signature verifies. Returns a summary."""
        from vvolguard.adapters.checkpoints import CheckpointStore

        key = self._key()
        # The checkpoint first: the tables only grow after it was written.
        cp, ignored = (checkpoints or CheckpointStore(self.settings)).latest()
        known = set(AuditItem.get_attributes())
        chains: dict[str, dict[int, tuple[str, str, str | None]]] = {}
        records = 0
        for raw in self._raw_items():
            records += 1
            item = AuditItem.from_raw_data(raw)
            problem = record_ok(key, item_fields(item), item.mac)
            if problem is None and set(raw) - known:
                problem = "altered (an attribute was added)"
            chains.setdefault(item.chain, {})[int(item.seq)] = (item.prev, item.mac, problem)
        heads = self.heads()
        problems: list[dict[str, Any]] = []
        cp_chains = cp.chains if cp else {}
        for chain in sorted(set(chains) | set(heads) | set(cp_chains)):
            found = self._check_one(key, cp, chain, chains.get(chain, {}), heads.get(chain))
            if found:  # the table scan and the heads are not one snapshot: a live append looks like a gap
                found = self._recheck(key, cp, chain, known)
            if found:
                problems.append(found)
        return {"ok": not problems, "records": records, "chains": len(set(chains) | set(heads)),
                "checkpoint": {"at": cp.at, "chains": len(cp.chains), "location": cp.location} if cp else None,
                "checkpoints_ignored": ignored,
                "problems": problems[:20], "first_problem": problems[0] if problems else None}

    def _check_one(self, key: bytes, cp: "Checkpoint | None", chain: str,
                   recs: dict[int, tuple[str, str, str | None]], head: tuple[int, str, str] | None) -> dict[str, Any] | None:
        found = self._check_chain(key, chain, recs, head)
        if found is None and cp is not None and chain in cp.chains:
            found = self._check_against(cp, chain, recs, head)
        return found

    def _recheck(self, key: bytes, cp: "Checkpoint | None", chain: str, known: set[str],
                 tries: int = 5) -> dict[str, Any] | None:
        """One chain read again as a consistent snapshot: its head, its records, its head again; a head that
        moved meanwhile means an append was in flight (read again). A problem that holds on a snapshot in
        which nothing moved is real; one that vanishes was a record appended during the scan."""
        client = aws.client("dynamodb", self.settings.region)
        found: dict[str, Any] | None = None
        for _ in range(tries):
            before = self._head_of(chain)
            recs: dict[int, tuple[str, str, str | None]] = {}
            pages = client.get_paginator("query").paginate(
                TableName=self.settings.audit_table, ConsistentRead=True,
                KeyConditionExpression="#c = :c", ExpressionAttributeNames={"#c": "chain"},
                ExpressionAttributeValues={":c": {"S": chain}})
            for page in pages:
                for raw in page.get("Items", []):
                    item = AuditItem.from_raw_data(raw)
                    problem = record_ok(key, item_fields(item), item.mac)
                    if problem is None and set(raw) - known:
                        problem = "altered (an attribute was added)"
                    recs[int(item.seq)] = (item.prev, item.mac, problem)
            after = self._head_of(chain)
            found = self._check_one(key, cp, chain, recs, after)
            if before == after:
                return found
        return found

    @staticmethod
    def _head_of(chain: str) -> tuple[int, str, str] | None:
        try:
            h = ChainHead.get(chain, HEAD_SK, consistent_read=True)
        except ChainHead.DoesNotExist:
            return None
        return int(h.head_seq), h.head_mac, h.head_tag or ""

    @staticmethod
    def _check_chain(key: bytes, chain: str, recs: dict[int, tuple[str, str, str | None]],
                     head: tuple[int, str, str] | None) -> dict[str, Any] | None:
        """The first problem of one chain on its own (records and head), or None."""
        head_seq, head_mac, tag = head if head else (None, None, None)
        prev = ""
        last = max(recs) if recs else 0
        for seq in range(1, max(last, head_seq or 0) + 1):
            if seq not in recs:
                return {"chain": chain, "seq": seq, "problem": "removed"}
            rprev, rmac, problem = recs[seq]
            if problem:
                return {"chain": chain, "seq": seq, "problem": problem}
            if rprev != prev:
                return {"chain": chain, "seq": seq, "problem": "reordered or a predecessor removed"}
            prev = rmac
        if not recs and head_seq is None:
            return None  # named only by the checkpoint: _check_against reports it
        if head_seq is None:
            return {"chain": chain, "seq": last, "problem": "chain head removed"}
        if head_seq != last or head_mac != prev:
            return {"chain": chain, "seq": last + 1, "problem": "removed (the head is further on)"}
        if not hmac.compare_digest(tag or "", head_tag(key, chain, head_seq, head_mac)):
            return {"chain": chain, "seq": last + 1, "problem": "removed at the end (the chain head was moved back)"}
        return None

    @staticmethod
    def _check_against(cp: "Checkpoint", chain: str, recs: dict[int, tuple[str, str, str | None]],
                       head: tuple[int, str, str] | None) -> dict[str, Any] | None:
        """A chain that is intact on its own must still hold the checkpointed record, unchanged."""
        seq, mac = cp.chains[chain]
        if not recs and head is None:
            return {"chain": chain, "seq": seq, "problem": f"chain removed (the checkpoint of {cp.at} names it up to record {seq})"}
        if head is None or head[0] < seq or seq not in recs:
            return {"chain": chain, "seq": seq,
                    "problem": f"removed at the end (the chain is shorter than the checkpoint of {cp.at}: its head was rolled back)"}
        if not hmac.compare_digest(recs[seq][1], mac):
            return {"chain": chain, "seq": seq, "problem": f"altered (differs from the checkpoint of {cp.at})"}
        return None

    def checkpoint(self, checkpoints: "CheckpointStore | None" = None, now: datetime | None = None) -> dict[str, Any]:
        """Sign the head of every chain now and store it (docs/threat-model.md).

        A new checkpoint never forgets or lowers what the previous one signed: a chain that has vanished,
        become shorter or changed at the signed record since then, or whose head's tag does not verify, keeps
        the previous checkpoint's entry (``held_back`` counts them; each is tampering `vvg audit verify` reports)."""
        from vvolguard.adapters.checkpoints import CheckpointStore

        store = checkpoints or CheckpointStore(self.settings)
        key = self._key()
        previous, _ = store.latest()
        signed: dict[str, tuple[int, str]] = {}
        held: set[str] = set()
        for chain, (seq, mac, tag) in self.heads().items():
            if hmac.compare_digest(tag, head_tag(key, chain, seq, mac)):
                signed[chain] = (seq, mac)
            else:
                held.add(chain)
        for chain, (pseq, pmac) in (previous.chains.items() if previous else ()):
            cur = signed.get(chain)
            if cur is None or cur[0] < pseq or (cur[0] == pseq and not hmac.compare_digest(cur[1], pmac)):
                signed[chain] = (pseq, pmac)
                held.add(chain)
        cp = store.write(signed, now)
        return {**cp.summary(), "held_back": len(held), "held_back_chains": sorted(held)[:20]}


# ---- exports (docs/audit-export.md)

EXPORT_EXTRA = ("chain", "seq", "prev", "mac")


def export_row(item: AuditItem) -> dict[str, Any]:
    """One record as exported: the listed fields, its chain position, its predecessor's MAC and its MAC."""
    row: dict[str, Any] = {k: getattr(item, k) for k in RECORD_FIELDS}
    if row.get("policy_version") is not None:
        row["policy_version"] = int(row["policy_version"])
    row["detail"] = item.detail.as_dict() if item.detail is not None else {}
    for k in REPLAY_FIELDS:  # format 3 only (docs/policy-impact.md): an offline check needs them
        if getattr(item, k, None) is not None:
            row[k] = getattr(item, k)
    row.update(chain=item.chain, seq=int(item.seq), prev=item.prev, mac=item.mac)
    return row


def _export_fields(rec: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The record's MAC-covered fields rebuilt from an exported row (index keys are derived), or a problem."""
    chain, seq, mac, prev, at = rec.get("chain"), rec.get("seq"), rec.get("mac"), rec.get("prev"), rec.get("at")
    if not isinstance(chain, str) or isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 \
            or not isinstance(mac, str) or not isinstance(prev, str) or not isinstance(at, str):
        return None, "not an exported audit record (chain, seq, prev, mac and at are needed)"
    detail = rec.get("detail")
    if detail is not None and not isinstance(detail, dict):
        return None, "altered (detail is not an object)"
    pv = rec.get("policy_version")
    if pv is not None and (isinstance(pv, bool) or not isinstance(pv, int)):
        return None, "altered (policy_version is not an integer)"
    for k in RECORD_FIELDS + REPLAY_FIELDS:
        if k not in ("detail", "policy_version") and rec.get(k) is not None and not isinstance(rec.get(k), str):
            return None, f"altered ({k} is not a string)"
    fields = {k: rec.get(k) for k in RECORD_FIELDS + REPLAY_FIELDS}
    fields["detail"] = detail or {}
    fields.update(chain=chain, seq=seq, prev=prev, month=month_of(at), at_key=at_key_of(at, chain, seq))
    return fields, ""


def verify_export(key: bytes, records: list[Any], allow_gaps: bool = False) -> dict[str, Any]:
    """Check an export offline with the audit key: each record's MAC, and, per chain, the order and links.

    What a partial export (one VM, or records since a time) proves: every record in it is genuine and sits
    at its chain position after the record whose MAC it names; records of one chain that are adjacent in
    sequence link to each other; a missing sequence number between two present ones is a removal (unless
    ``allow_gaps``: an export filtered by more than VM and time). It cannot prove that nothing was cut
    from either end of a chain's run: compare with the tables (`vvg audit verify`) for that."""
    problems: list[dict[str, Any]] = []
    by_chain: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}

    def bad(index: int, rec: Any, problem: str) -> None:
        r = rec if isinstance(rec, dict) else {}
        problems.append({"index": index, "chain": r.get("chain"), "seq": r.get("seq"), "problem": problem})

    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            bad(i, rec, "not a JSON object")
            continue
        fields, why = _export_fields(rec)
        if fields is None:
            bad(i, rec, why)
            continue
        ok = any(record_ok(key, {**fields, "v": v}, rec["mac"]) is None for v in (MAC_VERSION, 2, None))
        if not ok:
            bad(i, rec, "altered or reordered")
            continue
        by_chain.setdefault(fields["chain"], []).append((i, fields["seq"], rec))
    direction = 0
    partial = 0
    for chain, rows in sorted(by_chain.items()):
        for (i0, s0, _), (i1, s1, r1) in zip(rows, rows[1:]):
            step = (s1 > s0) - (s1 < s0)
            if step == 0:
                bad(i1, r1, f"duplicated (record {s1} of {chain} appears twice)")
                break
            if direction == 0:
                direction = step
            if step != direction:
                bad(i1, r1, "reordered (out of sequence order in the export)")
                break
        else:
            ordered = sorted(rows, key=lambda r: r[1])
            if ordered[0][1] == 1 and ordered[0][2]["prev"] != "":
                bad(ordered[0][0], ordered[0][2], "altered (the first record of a chain names a predecessor)")
                continue
            partial += ordered[0][1] != 1
            for (i0, s0, r0), (i1, s1, r1) in zip(ordered, ordered[1:]):
                if s1 == s0 + 1 and r1["prev"] != r0["mac"]:
                    bad(i1, r1, f"reordered or replaced (does not follow record {s0} of {chain})")
                    break
                if s1 > s0 + 1 and not allow_gaps:
                    bad(i1, r1, f"removed (records {s0 + 1}..{s1 - 1} of {chain} are missing from the export)")
                    break
    problems.sort(key=lambda p: p["index"])
    return {"ok": not problems, "records": len(records), "chains": len(by_chain),
            "chains_starting_after_record_1": partial,
            "problems": problems[:20], "first_problem": problems[0] if problems else None}
