"""The local stack's DynamoDB emulation keeps DynamoDB's transaction semantics (infra/moto_patches.py)."""
from __future__ import annotations

import copy

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from infra import moto_patches


@pytest.fixture
def table():
    moto_patches.install()
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
        for i in range(50):
            ddb.put_item(TableName="t", Item={"pk": {"S": f"k{i}"}, "v": {"N": "0"}})
        yield ddb


def _v(ddb, key: str) -> str | None:
    item = ddb.get_item(TableName="t", Key={"pk": {"S": key}}).get("Item")
    return item["v"]["N"] if item else None


def test_cancelled_transaction__restores_exactly_the_items_it_named(table):
    with pytest.raises(ClientError) as err:
        table.transact_write_items(TransactItems=[
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "k1"}}, "UpdateExpression": "SET v = :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "new"}, "v": {"N": "1"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "k2"}}, "ConditionExpression": "v = :nine",
                                "ExpressionAttributeValues": {":nine": {"N": "9"}}}},
        ])
    assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert _v(table, "k1") == "0" and _v(table, "new") is None and _v(table, "k2") == "0"


def test_committed_transaction__applies_every_item(table):
    table.transact_write_items(TransactItems=[
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "k1"}}, "UpdateExpression": "SET v = :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        {"Delete": {"TableName": "t", "Key": {"pk": {"S": "k3"}}}},
    ])
    assert _v(table, "k1") == "1" and _v(table, "k3") is None


def test_transaction__never_deep_copies_a_whole_table(table, monkeypatch):
    from moto.dynamodb.models.table import Table

    copies = []
    real = copy.deepcopy

    def counting(obj, memo=None):
        if isinstance(obj, Table):
            copies.append(obj.name)
        return real(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    with pytest.raises(ClientError):
        table.transact_write_items(TransactItems=[
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "k2"}}, "ConditionExpression": "v = :nine",
                                "ExpressionAttributeValues": {":nine": {"N": "9"}}}}])
    assert copies == []
    # A write to another item of the same table, made after the cancelled transaction, survives.
    table.put_item(TableName="t", Item={"pk": {"S": "k4"}, "v": {"N": "4"}})
    assert _v(table, "k4") == "4"
