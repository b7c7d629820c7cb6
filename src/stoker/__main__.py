"""`python -m stoker <command>`; see `python -m stoker --help`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stoker", description="stoker's command-line tools."
    )
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    demo = commands.add_parser("demo", help="preprocess sample images, compare with Pillow, time")
    demo.add_argument("--seconds", type=float, default=2.5, help="timing per figure (default 2.5)")
    args = parser.parse_args(argv)

    from stoker import _demo

    return _demo.run(seconds=args.seconds)


if __name__ == "__main__":
    sys.exit(main())
