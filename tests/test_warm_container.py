"""The event handler's warm service is built once per process, also when the first requests come at once (the
local gateway serves each request on its own thread; the boot storm of bench/fleet.py does the same). Built
several times, each copy re-read its hosts and re-assumed their provider roles, and each build re-bound the
models under the requests already running (docs/benchmarks.md, the storm floor)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor


def test_concurrent_first_requests_build_one_event_service(monkeypatch):
    from vvolguard.handlers import events as handler_module
    from vvolguard.services import root

    built = []

    class Root:
        def __init__(self) -> None:
            self.events = object()

    def build(*_a, **_k):
        time.sleep(0.05)  # as a real build takes a while: every thread arrives before the first is done
        built.append(1)
        return Root()

    monkeypatch.setattr(root.Services, "build", classmethod(lambda cls, *a, **k: build()))
    handler_module.reset()
    start = threading.Barrier(8)

    def first_request(_):
        start.wait()
        return handler_module.service()

    try:
        with ThreadPoolExecutor(8) as pool:
            services = list(pool.map(first_request, range(8)))
    finally:
        handler_module.reset()
    assert len(built) == 1 and len({id(s) for s in services}) == 1
