"""`vvg user list/disable/remove/passwd/role`: JSON answers, audited as cli:PRINCIPAL, every change ends the
user's sessions, every refusal writes nothing (docs/dashboard.md)."""
from __future__ import annotations

import json

import pytest

from tests.test_cli import one_line, tables

PW = "alice-pass-123"


@pytest.fixture
def people(aws, vvg):
    """admin (admin) and alice (editor), each with a live dashboard session; yields (settings, sessions)."""
    from vvolguard.adapters.models import UserItem
    from vvolguard.services.users import UserService

    assert vvg("user", "add", "admin", "--role", "admin", "--password-stdin", stdin="admin-pass-123\n").code == 0
    assert vvg("user", "add", "alice", "--role", "editor", "--password-stdin", stdin=PW + "\n").code == 0
    users = UserService(aws)
    sessions = {n: [users.start_session(UserItem.get(n, consistent_read=True)) for _ in range(2)]
                for n in ("admin", "alice")}
    yield aws, sessions


def _live(settings, name, sids) -> list[bool]:
    from vvolguard.services.users import UserService

    return [UserService(settings).session_user(name, s) is not None for s in sids]


def _audit(vvg) -> list[dict]:
    return [json.loads(line) for line in vvg("audit", "list").out.splitlines()]


def test_user_list__json_lines_without_hashes_or_sessions(people, vvg):
    r = vvg("user", "list")
    assert r.code == 0 and r.err == ""
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert [set(x) for x in rows] == [{"user", "role", "disabled", "last_login"}] * 2
    assert [(x["user"], x["role"], x["disabled"]) for x in rows] == [("admin", "admin", False), ("alice", "editor", False)]
    assert rows[1]["last_login"] and "scrypt" not in r.out


@pytest.mark.parametrize("argv,stdin,answer,check", [
    (("disable", "alice"), "", {"user": "alice", "disabled": True, "sessions_ended": True}, "user_disable"),
    (("remove", "alice"), "", {"user": "alice", "removed": True, "sessions_ended": True}, "user_remove"),
    (("passwd", "alice", "--password-stdin"), "a-brand-new-pw\n",
     {"user": "alice", "password_changed": True, "sessions_ended": True}, "user_passwd"),
    (("role", "alice", "viewer"), "", {"user": "alice", "role": "viewer", "sessions_ended": True}, "user_role"),
])
def test_user_change__answers_ends_every_session_and_is_audited_with_the_caller(people, vvg, argv, stdin, answer, check):
    settings, sessions = people
    r = vvg("user", *argv, stdin=stdin)
    assert (r.code, r.err) == (0, ""), r
    assert r.json() == answer
    assert _live(settings, "alice", sessions["alice"]) == [False, False]
    assert _live(settings, "admin", sessions["admin"]) == [True, True]  # nobody else's
    rec = _audit(vvg)[0]
    assert rec["action"] == check and rec["detail"] == {"user": "alice"}
    assert rec["actor"].startswith("cli:") and len(rec["actor"]) > 4  # the AWS principal (moto's) or the OS user
    assert "a-brand-new-pw" not in json.dumps(tables(settings)) + vvg("audit", "list").out
    assert vvg("audit", "verify").code == 0


def test_user_passwd__the_new_password_signs_in_the_old_does_not(people, vvg):
    from vvolguard.services.users import UserService

    assert vvg("user", "passwd", "alice", "--password-stdin", stdin="a-brand-new-pw\n").code == 0
    users = UserService(people[0])
    assert users.authenticate("alice", PW) is None and users.authenticate("alice", "a-brand-new-pw") is not None


def test_user_disable__cannot_sign_in_and_shows_disabled(people, vvg):
    from vvolguard.services.users import UserService

    assert vvg("user", "disable", "alice").code == 0
    assert UserService(people[0]).authenticate("alice", PW) is None
    rows = [json.loads(line) for line in vvg("user", "list").out.splitlines()]
    assert {r["user"]: r["disabled"] for r in rows} == {"admin": False, "alice": True}


BAD = [  # (case, argv after 'user', stdin, exit code, text the one stderr line must hold)
    ("unknown-user-disable", ("disable", "nobody"), "", 1, "does not exist"),
    ("unknown-user-remove", ("remove", "nobody"), "", 1, "does not exist"),
    ("unknown-user-role", ("role", "nobody", "viewer"), "", 1, "does not exist"),
    ("unknown-user-passwd", ("passwd", "nobody", "--password-stdin"), "long-enough-pw\n", 1, "does not exist"),
    ("bad-role", ("role", "alice", "root"), "", 2, "role"),
    ("missing-role", ("role", "alice"), "", 2, "role"),
    ("passwd-without-stdin-flag", ("passwd", "alice"), "long-enough-pw\n", 2, "--password-stdin"),
    ("passwd-short", ("passwd", "alice", "--password-stdin"), "short\n", 1, "password"),
    ("passwd-empty", ("passwd", "alice", "--password-stdin"), "", 1, "password"),
    ("passwd-huge", ("passwd", "alice", "--password-stdin"), "x" * 5000, 1, "password"),
    ("hostile-name", ("disable", "#login-addr:x"), "", 1, "user name"),
    ("name-too-long", ("remove", "a" * 65), "", 1, "user name"),
    ("last-admin-remove", ("remove", "admin"), "", 1, "last enabled admin"),
    ("last-admin-disable", ("disable", "admin"), "", 1, "last enabled admin"),
    ("last-admin-demote", ("role", "admin", "editor"), "", 1, "last enabled admin"),
    ("no-action", (), "", 2, "required"),
]


def test_user_refusals__one_line_nothing_written_no_session_ended(people, vvg):
    settings, sessions = people
    before = tables(settings)
    for case, argv, stdin, code, expect in BAD:
        r = vvg("user", *argv, stdin=stdin)
        assert (r.code, r.out) == (code, ""), (case, r)
        assert expect in one_line(r.err), (case, r.err)
        assert "long-enough-pw" not in r.err and "short" not in r.err.replace("too short", "")
        assert tables(settings) == before, case
    assert _live(settings, "alice", sessions["alice"]) == [True, True]
    assert _live(settings, "admin", sessions["admin"]) == [True, True]
