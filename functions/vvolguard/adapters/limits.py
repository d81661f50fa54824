"""Shared, atomic limits on guessing (docs/dashboard.md): sign-in back-off and the simulator's password guesses.

The counters live in DynamoDB (``LimitItem``, in the users table under ``#`` keys, removed by TTL), never in
process memory, so they hold across every process and Lambda container. An attempt is *reserved* before
it is evaluated, by a conditional write that only succeeds while the budget allows it; concurrent
attempts race on that write and the losers are refused, so no more attempts are evaluated than the budget.
Subjects (user names, addresses) enter keys only as digests: an attacker's input never shapes a key.
"""
from __future__ import annotations

import hashlib
import math
import random
import secrets
import time
from dataclasses import dataclass

from pynamodb.exceptions import DeleteError, TransactWriteError, UpdateError
from pynamodb.transactions import TransactGet

from vvolguard.adapters.models import LimitItem, connection
from vvolguard.adapters.tx import Tx
from vvolguard.settings import Settings

CAS_TRIES = 25


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _conditional_failed(exc: Exception) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


@dataclass(frozen=True)
class Refused:
    """The attempt may not be made now; try again after ``retry_after`` seconds."""

    retry_after: int


@dataclass(frozen=True)
class LoginReservation:
    """An attempt that was counted as a failure before it was evaluated (settle it with the outcome)."""

    user_key: str
    addr_key: str
    name_key: str


class LoginLimiter:
    """Sign-in back-off: after ``free_pair`` failures in a row for one user name from one address, or
    ``free_addr`` from one address, further attempts from there wait ``base_s``, twice as long after each
    failure, up to ``cap_s``. Failures for one user name from everywhere count against a separate ceiling
    (``name_ceiling`` an hour), so failures from other addresses cannot keep its owner out below it."""

    def __init__(self, settings: Settings, free_pair: int = 5, free_addr: int = 20, base_s: float = 2.0,
                 cap_s: float = 900.0, name_ceiling: int = 100, name_window_s: int = 3600) -> None:
        self.settings = settings
        self.free_pair, self.free_addr, self.base_s, self.cap_s = free_pair, free_addr, base_s, cap_s
        self.name_ceiling, self.name_window_s = name_ceiling, name_window_s
        self.forget_s = int(cap_s) + 3600  # a row of failures is forgotten an hour after its wait ends

    def wait_s(self, failures: int, free: int) -> float:
        """The wait after ``failures`` failures in a row (0 below ``free``)."""
        over = failures - free
        return 0.0 if over < 0 else min(self.cap_s, self.base_s * (2 ** min(over, 40)))

    def keys(self, username: str, addr: str, now: float) -> LoginReservation:
        name = username.lower()
        window = int(now // self.name_window_s)
        return LoginReservation(f"#login-pair:{_digest(name, addr)}", f"#login-addr:{_digest(addr)}",
                                f"#login-name:{_digest(name)}:{window}")

    def reserve(self, username: str, addr: str, now: float | None = None) -> LoginReservation | Refused:
        """Count this attempt as a failure now, if every budget allows it; else how long to wait."""
        for attempt in range(CAS_TRIES):
            t = time.time() if now is None else now
            res = self.keys(username, addr, t)
            pair, ad, name = self._read([res.user_key, res.addr_key, res.name_key])
            waits = []
            for item, free in ((pair, self.free_pair), (ad, self.free_addr)):
                n, last = self._live(item, t)
                w = self.wait_s(n, free)
                waits.append(last + w - t if w > 0 else 0.0)
            name_count = int(name.count) if name is not None and name.expires_at > t else 0
            if name_count >= self.name_ceiling:
                waits.append((int(t // self.name_window_s) + 1) * self.name_window_s - t)
            wait = max(waits)
            if wait > 0:
                return Refused(max(1, math.ceil(wait)))
            window_end = (int(t // self.name_window_s) + 1) * self.name_window_s
            try:
                with Tx(connection=connection(self.settings)) as tx:
                    for key, item, free in ((res.user_key, pair, self.free_pair), (res.addr_key, ad, self.free_addr)):
                        self._count(tx, key, item, free, t)
                    tx.update(LimitItem(res.name_key),
                              actions=[LimitItem.count.add(1), LimitItem.expires_at.set(int(window_end) + 60)],
                              condition=LimitItem.count.does_not_exist() | (LimitItem.count < self.name_ceiling))
            except TransactWriteError as exc:
                if exc.cause_response_code not in ("TransactionCanceledException", "TransactionConflictException"):
                    raise
                time.sleep(random.uniform(0.002, 0.02 * (attempt + 1)))  # lost a race: read again
                continue
            return res
        return Refused(1)  # heavy contention on one subject: refuse rather than evaluate unchecked

    def succeeded(self, res: LoginReservation) -> None:
        """The attempt was right: the row of failures for this name and address ends; the address's and
        the name's counts give back the attempt reserved for it (a success never clears them: an attacker
        with one account of their own must not wipe their address's row by signing in)."""
        LimitItem(res.user_key).delete()
        for key in (res.addr_key, res.name_key):
            try:
                LimitItem(key).update(actions=[LimitItem.count.add(-1)], condition=LimitItem.count > 0)
            except UpdateError as exc:
                if not _conditional_failed(exc):
                    raise

    def _read(self, keys: list[str]) -> list[LimitItem | None]:
        with TransactGet(connection=connection(self.settings)) as tg:
            futures = [tg.get(LimitItem, k) for k in keys]
        out = []
        for f in futures:
            try:
                out.append(f.get())
            except LimitItem.DoesNotExist:
                out.append(None)
        return out

    @staticmethod
    def _live(item: LimitItem | None, now: float) -> tuple[int, float]:
        """(failures in a row, time of the last) of an item, or (0, 0) if absent or expired."""
        if item is None or item.expires_at <= now:
            return 0, 0.0
        return int(item.count), float(item.last_at)

    def _count(self, tx: Tx, key: str, item: LimitItem | None, free: int, now: float) -> None:
        """Add this attempt to a row of failures. Below ``free`` it is a plain atomic increment conditioned
        on the count still being below ``free`` (concurrent attempts do not collide); past it, the wait was
        checked on the item as read, so the write is conditioned on that version (compare-and-set)."""
        n, _ = self._live(item, now)
        expires = int(now + self.forget_s + self.wait_s(n + 1, 0))
        stamp = [LimitItem.last_at.set(now), LimitItem.expires_at.set(expires)]
        if item is None:
            tx.update(LimitItem(key), actions=stamp + [LimitItem.count.set(1), LimitItem.v.set(1)],
                      condition=LimitItem.v.does_not_exist())
        elif n == 0 or n >= free:  # expired (start a new row) or past the free failures: compare-and-set
            tx.update(LimitItem(key), actions=stamp + [LimitItem.count.set(n + 1), LimitItem.v.set(int(item.v) + 1)],
                      condition=LimitItem.v == int(item.v))
        else:
            tx.update(LimitItem(key), actions=stamp + [LimitItem.count.add(1), LimitItem.v.add(1)],
                      condition=(LimitItem.count < free) & (LimitItem.expires_at > int(now)))


@dataclass(frozen=True)
class GuessSlot:
    """One of a subject's limited guesses, held for the window unless given back."""

    key: str
    owner: str


class GuessSlots:
    """At most ``size`` guesses per subject in any ``window_s`` seconds: one item per slot, taken by a
    conditional write that succeeds only on a free or expired slot, so concurrent guesses cannot share one."""

    def __init__(self, settings: Settings, kind: str, size: int = 5, window_s: int = 900) -> None:
        self.settings, self.kind, self.size, self.window_s = settings, kind, size, window_s

    def _key(self, subject: str, i: int) -> str:
        return f"#{self.kind}:{_digest(subject)}:{i}"

    def take(self, subject: str, now: float | None = None) -> GuessSlot | Refused:
        """A slot for one guess, or how long until one frees up."""
        t = time.time() if now is None else now
        owner = secrets.token_hex(8)
        free = LimitItem.expires_at.does_not_exist() | (LimitItem.expires_at <= int(t))
        for i in range(self.size):
            key = self._key(subject, i)
            try:
                LimitItem(key).update(actions=[LimitItem.owner.set(owner), LimitItem.expires_at.set(int(t) + self.window_s)],
                                      condition=free)
            except UpdateError as exc:
                if _conditional_failed(exc):
                    continue
                raise
            return GuessSlot(key, owner)
        soonest = self.window_s
        for i in range(self.size):
            try:
                soonest = min(soonest, int(LimitItem.get(self._key(subject, i), consistent_read=True).expires_at - t))
            except LimitItem.DoesNotExist:
                soonest = 0
        return Refused(max(1, soonest))

    def give_back(self, slot: GuessSlot) -> None:
        """The guess did not count (it was right, or never evaluated): free its slot if still ours."""
        try:
            LimitItem(slot.key).delete(condition=LimitItem.owner == slot.owner)
        except DeleteError as exc:
            if not _conditional_failed(exc):
                raise


