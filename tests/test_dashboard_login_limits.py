"""Sign-in: ``next`` stays on this origin; the back-off and the simulator's guess limit are atomic and shared
(DynamoDB conditional writes), so they hold under concurrent requests and across processes (docs/dashboard.md)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import PASSWORD, ROLE_USERS, TEST_CONFIG, csrf_token, sign_in

SLOW = {"VVG_LOGIN_BACKOFF_S": 600.0}  # no wait runs out while a test runs


def _post_login(client, username, password, next_raw=None, addr="10.0.0.1"):
    token = csrf_token(client)
    path = "/login" if next_raw is None else "/login?next=" + next_raw
    return client.post(path, data={"username": username, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": addr})


def _sessions(name: str) -> dict:
    from vvolguard.adapters.models import UserItem

    u = UserItem.get(name, consistent_read=True)
    return u.sessions.as_dict() if u.sessions is not None else {}


def _limit_items() -> list:
    from vvolguard.adapters.models import LimitItem

    return list(LimitItem.scan(LimitItem.key.startswith("#")))


# ---------------------------------------------------------------- back-off, shared and atomic


@pytest.fixture
def slow_app(seeded):
    from dashboard import create_app

    return create_app({**TEST_CONFIG, **SLOW})


@pytest.fixture
def evaluations(monkeypatch):
    """How many passwords sign-in actually checked."""
    from vvolguard.services import users

    count = {"n": 0}
    lock = threading.Lock()
    real = users.check_password

    def counting(password, stored):
        with lock:
            count["n"] += 1
        return real(password, stored)

    monkeypatch.setattr(users, "check_password", counting)
    return count


def _parallel(app, n, fn):
    clients = [app.test_client() for _ in range(n)]
    tokens = [csrf_token(c) for c in clients]
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        return fn(clients[i], tokens[i], i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _attempt(client, token, username, password, addr):
    r = client.post("/login", data={"username": username, "password": password, "csrf_token": token},
                    environ_base={"REMOTE_ADDR": addr})
    return r.status_code, r.headers.get("Retry-After")


def test_30_parallel_wrong_sign_ins__at_most_5_are_evaluated(slow_app, evaluations):
    name = ROLE_USERS["viewer"]
    out = _parallel(slow_app, 30, lambda c, t, i: _attempt(c, t, name, f"wrong-{i}", "10.2.0.1"))
    codes = [s for s, _ in out]
    assert codes.count(401) == 5 and codes.count(429) == 25, codes
    assert evaluations["n"] == 5
    assert all(int(ra) >= 1 for s, ra in out if s == 429)
    assert _sessions(name) == {}  # nothing written for the user
    # and the right password from there waits too, unevaluated
    r = _post_login(slow_app.test_client(), name, PASSWORD, addr="10.2.0.1")
    assert r.status_code == 429 and evaluations["n"] == 5 and _sessions(name) == {}


def test_30_parallel_wrong_sign_ins_from_one_address_for_many_names__at_most_20_evaluated(slow_app, evaluations):
    out = _parallel(slow_app, 30, lambda c, t, i: _attempt(c, t, f"guess-{i}", "wrong", "10.3.0.1"))
    codes = [s for s, _ in out]
    assert codes.count(401) == 20 and codes.count(429) == 10, codes
    assert evaluations["n"] == 20
    assert _post_login(slow_app.test_client(), "admin", PASSWORD, addr="10.3.0.1").status_code == 429
    assert _post_login(slow_app.test_client(), "admin", PASSWORD, addr="10.3.0.2").status_code == 302


def test_limits_are_shared_between_processes(seeded, evaluations):
    """Failures made through one app instance (container) hold up the next attempt through another."""
    from dashboard import create_app

    here, there = create_app({**TEST_CONFIG, **SLOW}), create_app({**TEST_CONFIG, **SLOW})
    for _ in range(5):
        assert _post_login(here.test_client(), "eddie", "nope", addr="10.4.0.1").status_code == 401
    assert _post_login(there.test_client(), "eddie", PASSWORD, addr="10.4.0.1").status_code == 429
    assert evaluations["n"] == 5


def test_other_addresses_cannot_keep_the_owner_out_below_the_per_name_ceiling(seeded):
    from dashboard import create_app

    app = create_app({**TEST_CONFIG, **SLOW, "VVG_LOGIN_NAME_CEILING": 20})
    name = ROLE_USERS["editor"]
    for addr in range(3):  # 15 failures from 3 other addresses, each held up after 5
        for _ in range(5):
            assert _post_login(app.test_client(), name, "nope", addr=f"10.5.1.{addr}").status_code == 401
        assert _post_login(app.test_client(), name, "nope", addr=f"10.5.1.{addr}").status_code == 429
    assert _post_login(app.test_client(), name, PASSWORD, addr="10.5.9.9").status_code == 302  # the owner is in
    for _ in range(5):
        assert _post_login(app.test_client(), name, "nope", addr="10.5.2.1").status_code == 401
    r = _post_login(app.test_client(), name, PASSWORD, addr="10.5.9.9")  # 20 an hour: now everyone waits
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 3600


def test_backoff_doubles_after_each_failure_up_to_15_minutes(aws):
    from vvolguard.adapters.limits import LoginLimiter, Refused

    lim = LoginLimiter(aws, base_s=2.0)
    t = 1_000_000.0
    for _ in range(5):
        assert not isinstance(lim.reserve("u", "a", now=t), Refused)
    waits = []
    for _ in range(12):
        r = lim.reserve("u", "a", now=t)
        assert isinstance(r, Refused)
        waits.append(r.retry_after)
        t += r.retry_after
        assert not isinstance(lim.reserve("u", "a", now=t), Refused)  # after the wait: one more try, counted
    assert waits[:5] == [2, 4, 8, 16, 32] and max(waits) == 900 and waits[-1] == 900


def test_success_ends_the_row_for_that_name_and_address_only(aws):
    from vvolguard.adapters.limits import LoginLimiter, Refused

    lim = LoginLimiter(aws, free_addr=10)
    t = 2_000_000.0
    for _ in range(4):
        lim.reserve("u", "a", now=t)
    lim.succeeded(lim.reserve("u", "a", now=t))
    for _ in range(4):  # a fresh row of 5 for u@a (else the 2nd would wait); the address keeps its 8 failures
        assert not isinstance(lim.reserve("u", "a", now=t), Refused)
    assert not isinstance(lim.reserve("v", "a", now=t), Refused)
    assert not isinstance(lim.reserve("w", "a", now=t), Refused)  # the address's 10th failure in a row
    assert isinstance(lim.reserve("x", "a", now=t), Refused)


def test_hostile_user_names__counted_under_a_digest_never_as_given(slow_app, evaluations):
    for name in ("#login-addr:x", "a" * 5000, "admin\x00", "\u202e" * 50, "' OR 1=1 --"):
        assert _post_login(slow_app.test_client(), name, "x", addr="10.9.0.1").status_code == 401
    keys = [i.key for i in _limit_items()]
    assert keys and all(len(k) < 80 and k.isascii() and "admin" not in k and "OR" not in k for k in keys)
    from vvolguard.services.users import UserService

    assert [u["user"] for u in UserService(slow_app.config["VVG_SETTINGS"]).rows()] == sorted(ROLE_USERS.values())


# ---------------------------------------------------------------- the simulator's guesses


def _request_attach_volume(settings):
    from vvolguard.domain.policy import validate_entry
    from vvolguard.services.policies import PolicyService

    spec, _ = validate_entry({"volume_id": "vvol-r", "vm_id": "vm-1", "host_id": "host-1", "storage_array": "S1",
                              "size_mb": 1, "attach_on": "request", "detach_on": "request", "password": "right-pw"}, "t")
    PolicyService(settings).save_one(spec, "cli", 0)


def test_25_parallel_wrong_simulated_passwords__at_most_5_evaluated_then_429(app, seeded, monkeypatch):
    from vvolguard.services import simulate as sim_service

    _request_attach_volume(seeded[0])
    client = sign_in(app.test_client(), "viewer")
    token = csrf_token(client, "/simulate")
    cookie = client.get_cookie("vvg_session").value  # after the token: the session holds its secret
    count = {"n": 0}
    lock = threading.Lock()
    real_run = sim_service.Simulator.run

    def counting(self, *a, **k):
        with lock:
            count["n"] += 1
        return real_run(self, *a, **k)

    monkeypatch.setattr(sim_service.Simulator, "run", counting)

    def one(c, _t, i):
        c.set_cookie("vvg_session", cookie)
        r = c.post("/simulate", data={"vm_id": "vm-1", "type": "volume.attach_request", "volume_id": "vvol-r",
                                      "password": f"wrong-{i}", "csrf_token": token})
        return r.status_code, r.headers.get("Retry-After"), "bad_password" in r.get_data(as_text=True)

    clients = [app.test_client() for _ in range(25)]
    barrier = threading.Barrier(25)

    def start(i):
        barrier.wait()
        return one(clients[i], None, i)

    with ThreadPoolExecutor(25) as pool:
        out = list(pool.map(start, range(25)))
    assert sum(1 for s, _, bad in out if s == 200 and bad) == 5, out
    assert [s for s, _, _ in out].count(429) == 20
    assert all(int(ra) >= 1 for s, ra, _ in out if s == 429)
    assert count["n"] == 5
    from vvolguard.services.policies import PolicyService

    assert int(PolicyService(seeded[0]).get("vvol-r").failed_passwords or 0) == 0  # a dry run writes no lock


def test_simulator__a_right_password_uses_no_guess(app, seeded):
    _request_attach_volume(seeded[0])
    client = sign_in(app.test_client(), "viewer")
    for _ in range(8):
        r = client.post("/simulate", data={"vm_id": "vm-1", "type": "volume.attach_request", "volume_id": "vvol-r",
                                           "password": "right-pw", "csrf_token": csrf_token(client, "/simulate")})
        assert r.status_code == 200 and "bad_password" not in r.get_data(as_text=True)
