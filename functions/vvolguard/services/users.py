"""Dashboard users: salted password hashes, roles, and server-side sessions that can be ended (docs/dashboard.md)."""
from __future__ import annotations

import functools
import hashlib
import re
import secrets
import time
from datetime import datetime, timezone

from pynamodb.exceptions import UpdateError

from vvolguard.adapters.tx import Tx

from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import USERS_PART, UserItem
from vvolguard.domain.constants import ROLES, rfc3339  # noqa: F401 (ROLES re-exported for the dashboard)
from vvolguard.domain.secrets import check_password, hash_password
from vvolguard.errors import AlreadyExists, ConcurrentModification, Conflict, InvalidInput, NotFound
from vvolguard.services.listing_pages import ListingPage, backfill, read_all, read_listing
from vvolguard.settings import Settings

USERNAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
MIN_PASSWORD, MAX_PASSWORD = 8, 256
# What a row of `vvg user list` and /users shows, and all a listing page reads of a user (never a hash or a session).
ROW_ATTRIBUTES = ("username", "role", "disabled", "last_login")


@functools.cache
def _dummy_hash() -> str:
    """A real hash to check against when the user does not exist, so timing says nothing; made on the first
    sign-in, not at import (a scrypt hash costs the CLI and every cold start tens of milliseconds)."""
    return hash_password("not-a-real-password")


SESSION_LIFETIME_S = 8 * 3600
MAX_SESSIONS = 20  # per user; signing in once more ends the oldest


def session_digest(sid: str) -> str:
    """What the users table keeps of a session id: a digest (table read access gives no session)."""
    return hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _live_sessions(user: UserItem, now: float) -> dict[str, float]:
    raw = user.sessions.as_dict() if user.sessions is not None else {}
    return {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and float(v) > now}


class UserService:
    """Create and authenticate dashboard users."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.audit = AuditLog(settings)

    def add(self, username: str, role: str, password: str, actor: str = "cli") -> dict[str, str]:
        """Create a user; an existing name is an error."""
        if not isinstance(username, str) or not USERNAME_RE.match(username):
            raise InvalidInput("user name must match [A-Za-z0-9._-]{1,64}")
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        if not isinstance(password, str) or not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
            raise InvalidInput(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        if UserItem.count(username, consistent_read=True):
            raise AlreadyExists(f"user {username} already exists")
        item = UserItem(username=username, role=role, password_hash=hash_password(password),
                        created_at=datetime.now(timezone.utc), disabled=False, sessions={}, list_part=USERS_PART)
        rec = AuditRecord(actor=actor, action="user_add", outcome="done", reason=f"role={role}",
                          detail={"user": username})

        def write(tx: Tx) -> int:
            tx.save(item, condition=UserItem.username.does_not_exist())
            return 1

        try:
            self.audit.append([rec], extra=write)
        except ConcurrentModification:
            raise AlreadyExists(f"user {username} already exists") from None
        return {"username": username, "role": role}

    def authenticate(self, username: str, password: str) -> UserItem | None:
        """The user if the name and password match, else None (same work either way)."""
        user = None
        if isinstance(username, str) and USERNAME_RE.match(username):
            try:
                user = UserItem.get(username, consistent_read=True)
            except UserItem.DoesNotExist:
                user = None
        ok = check_password(password if isinstance(password, str) else "", user.password_hash if user else _dummy_hash())
        return user if (user and ok and not user.disabled) else None

    def get(self, username: str) -> UserItem | None:
        """The user, or None."""
        try:
            return UserItem.get(username)
        except UserItem.DoesNotExist:
            return None

    # ---- server-side sessions: one read per request (the user item), one write to end them

    def start_session(self, user: UserItem, lifetime_s: int = SESSION_LIFETIME_S) -> str:
        """A new session id for ``user`` (just authenticated); refused if the password changed or the
        user was disabled or removed since. Expired sessions, and the oldest beyond MAX_SESSIONS, end."""
        sid = secrets.token_urlsafe(32)
        digest = session_digest(sid)
        for _ in range(4):
            now = time.time()
            live = _live_sessions(user, now)
            raw = user.sessions.as_dict() if user.sessions is not None else None
            drop = [k for k in (raw or {}) if k not in live]
            drop += sorted(live, key=live.get)[: max(0, len(live) - (MAX_SESSIONS - 1))]
            same_user = (UserItem.password_hash == user.password_hash) & (
                UserItem.disabled.does_not_exist() | (UserItem.disabled == False))  # noqa: E712
            try:
                if raw is None:  # a user stored before sessions existed: the map first
                    user.update(actions=[UserItem.sessions.set({digest: int(now + lifetime_s)}),
                                         UserItem.last_login.set(datetime.now(timezone.utc))],
                                condition=same_user & UserItem.sessions.does_not_exist())
                else:
                    actions = [UserItem.sessions[digest].set(int(now + lifetime_s)),
                               UserItem.last_login.set(datetime.now(timezone.utc))]
                    actions += [UserItem.sessions[k].remove() for k in drop]
                    user.update(actions=actions, condition=same_user & UserItem.sessions.exists())
                return sid
            except UpdateError as exc:
                if exc.cause_response_code != "ConditionalCheckFailedException":
                    raise
            try:
                fresh = UserItem.get(user.username, consistent_read=True)
            except UserItem.DoesNotExist:
                break
            if fresh.password_hash != user.password_hash or fresh.disabled:
                break
            user = fresh
        raise Conflict("the user changed while signing in; sign in again")

    def session_user(self, username: str, sid: str) -> UserItem | None:
        """The user of a live session (one consistent read), or None if it ended or never was."""
        if not (isinstance(username, str) and USERNAME_RE.match(username) and isinstance(sid, str) and sid):
            return None
        try:
            user = UserItem.get(username, consistent_read=True)
        except UserItem.DoesNotExist:
            return None
        if user.disabled or user.role not in ROLES:
            return None
        return user if session_digest(sid) in _live_sessions(user, time.time()) else None

    def end_session(self, username: str, sid: str) -> None:
        """Sign-out: that session ends everywhere at once."""
        if not (isinstance(username, str) and USERNAME_RE.match(username) and isinstance(sid, str)):
            return
        try:
            UserItem(username).update(actions=[UserItem.sessions[session_digest(sid)].remove()],
                                      condition=UserItem.username.exists() & UserItem.sessions.exists())
        except UpdateError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise

    # ---- management (vvg user ..., /users): each change is audited and ends the user's sessions

    def rows(self) -> list[dict]:
        """Every user as {"user", "role", "disabled", "last_login"} (never a hash or a session), in name order,
        page by page of the by-listing index (docs/host-user-pages.md): no scan, and no limit counter read."""
        return [self.row(u) for u in read_all(UserItem, USERS_PART, ROW_ATTRIBUTES)]

    def page(self, position: dict | None = None, limit: int = 50) -> ListingPage:
        """One page of users' rows (``items``) in name order from ``position`` (/users): one Query, one BatchGetItem
        of the rows' attributes only."""
        page = read_listing(UserItem, USERS_PART, position, limit, ROW_ATTRIBUTES)
        page.items = [self.row(u) for u in page.items]
        return page

    def backfill_listing(self) -> int:
        """The one-off upgrade of users added before the by-listing index (docs/host-user-pages.md); the
        limit counters (no password hash) are left out."""
        return backfill(UserItem, USERS_PART, UserItem.password_hash.exists())

    @staticmethod
    def row(u: UserItem) -> dict:
        last = rfc3339(u.last_login) if u.last_login else None
        return {"user": u.username, "role": u.role, "disabled": bool(u.disabled), "last_login": last}

    def _existing(self, username: str) -> UserItem:
        if not isinstance(username, str) or not USERNAME_RE.match(username):
            raise InvalidInput("user name must match [A-Za-z0-9._-]{1,64}")
        try:
            return UserItem.get(username, consistent_read=True)
        except UserItem.DoesNotExist:
            raise NotFound(f"user {username} does not exist") from None

    def _keeps_an_admin(self, username: str, action: str) -> None:
        """Refuse leaving no enabled admin (nobody could manage users or hosts from the dashboard)."""
        others = [r for r in self.rows() if r["role"] == "admin" and not r["disabled"] and r["user"] != username]
        if not others:
            raise Conflict(f"cannot {action} {username}: it is the last enabled admin")

    def _change(self, user: UserItem, actions: list, action: str, actor: str, reason: str | None = None,
                delete: bool = False) -> None:
        rec = AuditRecord(actor=actor, action=action, outcome="done", reason=reason, detail={"user": user.username})
        # the user must be as read (same hash, role, disabled): a concurrent change is refused, not merged
        same = (UserItem.password_hash == user.password_hash) & (UserItem.role == user.role)

        def write(tx: Tx) -> int:
            if delete:
                tx.delete(user, condition=same)
            else:
                tx.update(user, actions=[*actions, UserItem.list_part.set(USERS_PART)], condition=same)
            return 1

        self.audit.append([rec], extra=write)

    def disable(self, username: str, actor: str = "cli") -> dict:
        """Disable: no sign-in, and every session of the user ends now."""
        user = self._existing(username)
        if user.role == "admin" and not user.disabled:
            self._keeps_an_admin(username, "disable")
        self._change(user, [UserItem.disabled.set(True), UserItem.sessions.set({})], "user_disable", actor)
        return {"user": username, "disabled": True, "sessions_ended": True}

    def remove(self, username: str, actor: str = "cli") -> dict:
        """Remove the user; its sessions end with it."""
        user = self._existing(username)
        if user.role == "admin" and not user.disabled:
            self._keeps_an_admin(username, "remove")
        self._change(user, [], "user_remove", actor, delete=True)
        return {"user": username, "removed": True, "sessions_ended": True}

    def passwd(self, username: str, password: str, actor: str = "cli") -> dict:
        """A new password; every session of the user ends now."""
        user = self._existing(username)
        if not isinstance(password, str) or not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
            raise InvalidInput(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        self._change(user, [UserItem.password_hash.set(hash_password(password)), UserItem.sessions.set({})],
                     "user_passwd", actor)
        return {"user": username, "password_changed": True, "sessions_ended": True}

    def set_role(self, username: str, role: str, actor: str = "cli") -> dict:
        """A new role; every session of the user ends now (the user signs in again with it)."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        user = self._existing(username)
        if user.role == "admin" and role != "admin" and not user.disabled:
            self._keeps_an_admin(username, "demote")
        self._change(user, [UserItem.role.set(role), UserItem.sessions.set({})], "user_role", actor,
                     reason=f"role={role}")
        return {"user": username, "role": role, "sessions_ended": True}
