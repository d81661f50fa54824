"""The scrypt cost of password hashes and password-carrying event bodies (docs/test-speed.md): the test
processes lower it (tests/conftest.py), a deployment never can. These pin the production cost."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vvolguard.domain import secrets
from vvolguard.domain.fingerprint import password_tag, same_body


def test_production_cost_is_scrypt_n16384_r8_p1():
    assert secrets.PRODUCTION_COST == (2**14, 8, 1)


def test_a_fresh_process_hashes_at_the_production_cost_whatever_its_environment():
    """No setting and no environment variable lowers the cost: a process that never called set_hash_cost
    (as every Lambda function, the CLI and the local stack) hashes at PRODUCTION_COST."""
    code = ("import json; from vvolguard.domain.secrets import hash_password, hash_cost; "
            "from vvolguard.domain.fingerprint import password_tag; "
            "print(json.dumps([hash_password('pw'), password_tag(b'{\"password\": \"pw\"}'), list(hash_cost())]))")
    env = {**os.environ, "VVG_HASH_COST": "16", "VVG_SCRYPT_N": "16", "SCRYPT_N": "16"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    pw, tag, cost = json.loads(out)
    assert pw.startswith("scrypt$16384$8$1$") and tag.startswith("scrypt$16384$8$1$") and cost == [16384, 8, 1]
    assert secrets.check_password("pw", pw) and not secrets.check_password("pw2", pw)


def test_the_fixture_restores_the_production_cost_for_one_test(production_hash_cost):
    assert production_hash_cost == secrets.PRODUCTION_COST == secrets.hash_cost()
    stored = secrets.hash_password("s3cret")
    assert stored.startswith("scrypt$16384$8$1$") and secrets.check_password("s3cret", stored)
    assert password_tag(b"body").startswith("scrypt$16384$8$1$")


def test_the_test_processes_hash_cheaply_and_a_cheap_hash_checks_the_same_way():
    from tests.conftest import TEST_HASH_COST

    assert secrets.hash_cost() == TEST_HASH_COST
    stored = secrets.hash_password("s3cret")
    assert stored.startswith("scrypt$%d$%d$%d$" % TEST_HASH_COST)
    assert secrets.check_password("s3cret", stored) and not secrets.check_password("s3cret ", stored)
    tag = password_tag(b"raw body")
    assert same_body(b"raw body", tag) and not same_body(b"raw body!", tag)


@pytest.mark.parametrize("cost", [(1, 8, 1), (0, 8, 1), (100, 8, 1), (16, 0, 1), (16, 1, 0), (-16, 1, 1)])
def test_set_hash_cost_refuses_what_scrypt_cannot_do_and_changes_nothing(cost):
    before = secrets.hash_cost()
    with pytest.raises(ValueError):
        secrets.set_hash_cost(cost)
    assert secrets.hash_cost() == before

