import json, logging
from tests.test_webhook_robustness import *

def test_dbg(webhook, svc, hooks, caplog):
    add_policies(webhook.settings, """
volumes:
  - {volume_id: vvol-1b, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, attach_on: preboot, detach_on: postboot}
""")
    hooks.faults["AttachVolume"] = after_first(FAULTS["request_limit_exceeded"])
    caplog.set_level(logging.DEBUG, logger="vvg")
    caplog.set_level(logging.DEBUG, logger="pynamodb")
    code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-two")
    print("RESULT", code, body)
    for v in ("vvol-1", "vvol-1b"):
        it = policy("vm-1", v); print("RESULT", v, it.busy_event, it.busy_until, it.state_version, it.attached)
    for r in caplog.records:
        m = r.getMessage()
        if "TransactWrite" in m or r.name.startswith("vvg"): print("LOG", r.name, m[:1500])
