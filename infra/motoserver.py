"""The local stack's AWS emulation: moto's server, with infra.moto_patches installed.

The emulation is a development tool, not part of what is deployed: its process tunes Python's cyclic
garbage collector as the test processes do (docs/test-speed.md). moto keeps every emulated resource as a
graph of Python objects, and with the default thresholds the collector walks them again and again."""
from __future__ import annotations

import gc
import sys

from infra.moto_patches import install


def main() -> None:
    install()
    from moto.server import main as moto_main

    gc.freeze()  # moto's modules and models, loaded by now, live as long as the server
    gc.set_threshold(50_000, 20, 100)
    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
