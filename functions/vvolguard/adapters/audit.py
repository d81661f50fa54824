"""The tamper-evident audit history: per-chain keyed hash chains (HMAC-SHA256, key in Secrets Manager).

Each chain (one per VM, one per host, one per user) has a head item in the state table holding the
last sequence number and MAC. A record and its head move in one transaction, so concurrent writers
of one chain lose cleanly and retry, and writers of different chains never wait for each other.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from pynamodb.exceptions import TransactWriteError
from vvolguard.adapters.tx import Tx

from vvolguard.adapters import aws
from vvolguard.adapters.models import AuditItem, ChainHead, connection
from vvolguard.errors import ConcurrentModification
from vvolguard.settings import Settings

HEAD_SK = "~AUDIT"
RECORD_FIELDS = ("at", "actor", "vm_id", "volume_id", "host_id", "event_id", "event_type",
                 "action", "outcome", "reason", "policy_version", "detail")


@dataclass
class AuditRecord:
    """What happened; every field but ``detail`` is part of the contract (section 6)."""

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
    body = {k: rec.get(k) for k in RECORD_FIELDS}
    body["detail"] = {str(k): str(v) for k, v in (body.get("detail") or {}).items()}
    if body.get("policy_version") is not None:
        body["policy_version"] = int(body["policy_version"])
    body.update(chain=chain, seq=seq, prev=prev)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def compute_mac(key: bytes, chain: str, seq: int, prev: str, rec: dict[str, Any]) -> str:
    """The MAC of one record, which covers its chain position and its predecessor's MAC."""
    return hmac.new(key, _payload(chain, seq, prev, rec), hashlib.sha256).hexdigest()


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
            mac = compute_mac(key, chain, seq, prev, data)
            items.append(AuditItem(
                chain=chain, seq=seq, month=rec.at[:7], at_key=f"{rec.at}#{chain}#{seq:012d}",
                prev=prev, mac=mac, **{k: v for k, v in data.items() if v is not None and v != {}},
            ))
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
            if attempt:  # jittered backoff: writers of one chain take turns instead of colliding again
                time.sleep(random.uniform(0, min(0.2, 0.005 * (2 ** attempt))))
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
                failed, conflict = tx.failed(exc)
                if "extra" in failed:
                    raise ConcurrentModification("the item changed since it was read; read it again and retry") from None
                if failed or conflict:
                    continue
                raise
            return [i for items, _ in built.values() for i in items]
        raise ConcurrentModification("the audit history is busy; retry")

    # ---- reading

    def list(self, vm_id: str | None = None, volume_id: str | None = None, limit: int = 100,
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
        now = datetime.now(timezone.utc)
        y, m = now.year, now.month
        for _ in range(months_back):
            yield from AuditItem.by_time.query(f"{y:04d}-{m:02d}", scan_index_forward=False, page_size=page)
            y, m = (y, m - 1) if m > 1 else (y - 1, 12)

    def verify(self) -> dict[str, Any]:
        """Check every chain: each MAC, each link, no gaps, and the head. Returns a summary."""
        key = self._key()
        chains: dict[str, dict[int, tuple[str, str, bool]]] = {}
        records = 0
        for item in AuditItem.scan(page_size=1000):
            records += 1
            data = {k: getattr(item, k) for k in RECORD_FIELDS}
            data["detail"] = dict(item.detail.as_dict()) if item.detail is not None else {}
            ok = hmac.compare_digest(compute_mac(key, item.chain, int(item.seq), item.prev, data), item.mac)
            chains.setdefault(item.chain, {})[int(item.seq)] = (item.prev, item.mac, ok)
        heads = {h.pk: (int(h.head_seq), h.head_mac, h.head_tag or "")
                 for h in ChainHead.scan(ChainHead.sk == HEAD_SK, page_size=1000)}
        problems: list[dict[str, Any]] = []
        for chain in sorted(set(chains) | set(heads)):
            recs = chains.get(chain, {})
            head_seq, head_mac, tag = heads.get(chain, (None, None, None))
            prev = ""
            last = max(recs) if recs else 0
            for seq in range(1, max(last, head_seq or 0) + 1):
                if seq not in recs:
                    problems.append({"chain": chain, "seq": seq, "problem": "removed"})
                    break
                rprev, rmac, ok = recs[seq]
                if not ok:
                    problems.append({"chain": chain, "seq": seq, "problem": "altered or reordered"})
                    break
                if rprev != prev:
                    problems.append({"chain": chain, "seq": seq, "problem": "reordered or a predecessor removed"})
                    break
                prev = rmac
            else:
                if head_seq is None:
                    problems.append({"chain": chain, "seq": last, "problem": "chain head removed"})
                elif head_seq != last or head_mac != prev:
                    problems.append({"chain": chain, "seq": last + 1, "problem": "removed (the head is further on)"})
                elif not hmac.compare_digest(tag, head_tag(key, chain, head_seq, head_mac)):
                    problems.append({"chain": chain, "seq": last + 1,
                                     "problem": "removed at the end (the chain head was moved back)"})
        return {"ok": not problems, "records": records, "chains": len(set(chains) | set(heads)),
                "problems": problems[:20], "first_problem": problems[0] if problems else None}
