"""infra/moto_speed.py writes the same bytes as moto's own serializer: every item operation, every kind of
DynamoDB value, compared response by response (CHECK), and the comparison is shown to catch a difference."""
from __future__ import annotations

import pytest

from infra import moto_speed

TABLE = "speed-check"
ITEM = {
    "pk": {"S": "vm#1"}, "sk": {"S": "POLICY#a"},
    "n": {"N": "42"}, "f": {"N": "-1.5e3"}, "b": {"B": b"\x00\xffkey"}, "t": {"BOOL": True}, "z": {"NULL": True},
    "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]}, "bs": {"BS": [b"x", b"y"]},
    "l": {"L": [{"S": "x"}, {"N": "1"}, {"M": {"deep": {"L": [{"B": b"\x01"}]}}}]},
    "m": {"M": {"k": {"S": "v"}, "e": {"M": {}}, "u": {"S": "\u00e9\u2603"}}},
}


@pytest.fixture
def ddb(aws, monkeypatch):
    from vvolguard.adapters import aws as aws_adapter

    monkeypatch.setattr(moto_speed, "CHECK", True)
    client = aws_adapter.session("us-east-1").client("dynamodb")
    client.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                              {"AttributeName": "sk", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                   {"AttributeName": "sk", "KeyType": "RANGE"}])
    yield client
    client.delete_table(TableName=TABLE)


def test_every_item_operation_and_value_kind_gives_moto_s_own_bytes(ddb):
    key = {"pk": ITEM["pk"], "sk": ITEM["sk"]}
    before = moto_speed.TAKEN["fast"]
    ddb.put_item(TableName=TABLE, Item=ITEM)
    ddb.put_item(TableName=TABLE, Item={**key, "sk": {"S": "POLICY#c"}})
    got = ddb.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]
    assert got == ITEM
    assert ddb.get_item(TableName=TABLE, Key={"pk": {"S": "none"}, "sk": {"S": "x"}}).get("Item") is None
    q = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": ITEM["pk"]},
                  Limit=1, ReturnConsumedCapacity="TOTAL")
    assert q["Items"] == [ITEM] and q["Count"] == 1 and q["LastEvaluatedKey"] == key, q
    assert ddb.scan(TableName=TABLE)["Items"][0] == ITEM
    assert ddb.batch_get_item(RequestItems={TABLE: {"Keys": [key]}})["Responses"][TABLE] == [ITEM]
    assert ddb.transact_get_items(TransactItems=[{"Get": {"TableName": TABLE, "Key": key}}])["Responses"][0]["Item"] == ITEM
    new = ddb.update_item(TableName=TABLE, Key=key, UpdateExpression="SET n = n + :one",
                          ExpressionAttributeValues={":one": {"N": "1"}}, ReturnValues="ALL_NEW")["Attributes"]
    assert new["n"] == {"N": "43"} and new["b"] == ITEM["b"]
    ddb.transact_write_items(TransactItems=[{"Update": {"TableName": TABLE, "Key": key,
                                                        "UpdateExpression": "REMOVE z"}}])
    ddb.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": {**key, "sk": {"S": "POLICY#b"}}}}]})
    old = ddb.delete_item(TableName=TABLE, Key=key, ReturnValues="ALL_OLD")["Attributes"]
    assert old["l"] == ITEM["l"] and "z" not in old
    # 12 responses written by the shortcut, each compared byte for byte with moto's own (CHECK)
    assert moto_speed.TAKEN["fast"] - before == 12


def test_errors_and_other_operations_take_moto_s_own_way(ddb):
    before = moto_speed.TAKEN["fast"]
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(TableName=TABLE, Item={"pk": {"S": "a"}, "sk": {"S": "b"}}, ConditionExpression="attribute_exists(pk)")
    ddb.describe_table(TableName=TABLE)  # timestamps: moto's serializer
    assert moto_speed.TAKEN["fast"] == before


def test_the_comparison_catches_a_shortcut_that_writes_other_bytes(ddb, monkeypatch):
    """If the shortcut ever wrote a different body, CHECK fails the call (moto answers 500)."""
    import json

    from botocore.exceptions import ClientError

    ddb.put_item(TableName=TABLE, Item=ITEM)
    monkeypatch.setattr(moto_speed, "json", type("J", (), {"dumps": staticmethod(lambda v: json.dumps(v) + " ")}))
    with pytest.raises((ClientError, AssertionError)):
        ddb.get_item(TableName=TABLE, Key={"pk": ITEM["pk"], "sk": ITEM["sk"]})
