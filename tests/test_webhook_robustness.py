import json, threading
import pytest
from tests.conftest import ec2_client, managed_volumes, attached_volume_ids

def test_probe(webhook, vvg):
    code, body = webhook.send("vm.preboot", "vm-1")
    print(code, body)
    print(managed_volumes()["vvol-1"])
    code, body = webhook.send("vm.preboot", "vm-1", event_id="t-1")
    print(code, body)
    r = vvg("audit", "verify"); print(r)
    import boto3
    for it in boto3.client("dynamodb", region_name="us-east-1").scan(TableName="vvg-audit")["Items"]:
        print(it)
    assert 0
