"""Command line: ``python -m retrievalguard_fast {demo,certify,attack,train,compare,bench,info}``.

``demo`` certifies the embedded default (scikit-learn's digits and a shipped noise-trained
model); ``certify`` runs a user's model and data; ``attack`` attacks them (the empirical upper
bound beside the certificates); ``train`` makes a model under noise; ``compare`` sets certify
runs side by side. :mod:`.options` parses the arguments, :mod:`.commands` calls the
library with them (:func:`~..runs.certify_to_folder`, :func:`~..runs.attack_to_folder`) and
prints what it returns; this module dispatches and turns errors into exit statuses.

Errors in the input exit with status 2 and one line saying what is wrong, in the command line's
words (``--debug`` shows the traceback); Ctrl-C exits with status 130, keeping every result so far.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..errors import InputError
from ..runs import RunInterrupted
from ..runs.coordinator import one_line, rank_prefix
from ..runs.distributed import GroupStopped, launched
from .commands import COMMANDS
from .options import build_parser

__all__ = ["main", "build_parser"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and argv[1:2] not in (["-h"], ["--help"]):
        # Everything after "bench" belongs to the benchmarks (argparse would take a leading
        # option such as --device for its own and refuse it).
        args = argparse.Namespace(command="bench", bench_args=argv[1:], debug=False)
    else:
        args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RunInterrupted as exc:
        print(exc.for_cli(), file=sys.stderr)
        return 130
    except GroupStopped as exc:  # another rank failed and said why; this one only stops
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:
        if args.debug:
            raise
        print(f"error: {rank_prefix()}{exc.for_cli()}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        if args.debug:
            raise
        print(f"error: {rank_prefix()}{str(exc).splitlines()[0]} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        if args.debug or not launched():
            raise
        # Under torchrun every rank's traceback would interleave in one console; one line each.
        print(f"error: {rank_prefix()}{one_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
