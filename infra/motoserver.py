"""The local stack's AWS emulation: moto's server, with infra.moto_patches installed.

The emulation is a development tool, not part of what is deployed: its process tunes Python's cyclic
garbage collector as the test processes do (docs/test-speed.md). moto keeps every emulated resource as a
graph of Python objects, and with the default thresholds the collector walks them again and again."""
from __future__ import annotations

import gc
import os
import sys

from infra.moto_patches import install


def _exit_now(signum: object, frame: object) -> None:
    """SIGTERM / SIGINT end the process at once: the emulation keeps nothing to save, and tearing down
    moto's object graphs at interpreter exit took half a second of each local stack's stop."""
    os._exit(0)


def main() -> None:
    install()
    if os.environ.get("VVG_MOTO_SHORTCUTS") == "1":  # the tests' stacks (infra/moto_speed.py)
        from infra.moto_speed import install as install_shortcuts

        install_shortcuts()
    import moto.server
    from moto.server import main as moto_main

    moto.server.signal_handler = _exit_now  # what moto's main installs for SIGINT and SIGTERM

    gc.freeze()  # moto's modules and models, loaded by now, live as long as the server
    gc.set_threshold(50_000, 20, 100)
    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
