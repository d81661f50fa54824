"""The local stack's AWS emulation: moto's server, with infra.moto_patches installed."""
from __future__ import annotations

import sys

from infra.moto_patches import install


def main() -> None:
    install()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
