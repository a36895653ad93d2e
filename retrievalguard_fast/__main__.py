"""Command line: ``python -m retrievalguard_fast <command>``."""

from __future__ import annotations

import argparse
import json
import sys


def _info(_args: argparse.Namespace) -> int:
    import retrievalguard_fast as rgf

    print(json.dumps({"version": rgf.__version__, **rgf.build_info()}, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrievalguard_fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="print what was compiled in and which devices are usable")
    p_info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
