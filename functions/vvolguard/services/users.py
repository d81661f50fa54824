"""Dashboard users: salted password hashes and roles."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from vvolguard.adapters.tx import Tx

from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import UserItem
from vvolguard.domain.secrets import check_password, hash_password
from vvolguard.errors import AlreadyExists, ConcurrentModification, InvalidInput
from vvolguard.settings import Settings

ROLES = ("viewer", "editor", "admin")
USERNAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
MIN_PASSWORD, MAX_PASSWORD = 8, 256
# A real hash to check against when the user does not exist, so timing says nothing.
_DUMMY_HASH = hash_password("not-a-real-password")


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
                        created_at=datetime.now(timezone.utc))
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
        ok = check_password(password if isinstance(password, str) else "", user.password_hash if user else _DUMMY_HASH)
        return user if (user and ok) else None

    def get(self, username: str) -> UserItem | None:
        """The user, or None."""
        try:
            return UserItem.get(username)
        except UserItem.DoesNotExist:
            return None
