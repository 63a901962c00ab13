"""``python -m s3torch <verb>`` (also the ``s3torch`` console script).

Each verb is one module in this package (``ls.py``, ``cp.py``, ...) defining ``HELP`` (one
line for the verb list), ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are found by listing the package, so a new verb is a new file; names starting
with ``_`` are helpers, not verbs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType
from typing import List, Optional

from .._text import shown_lines
from ._common import EXIT_CODES, CLIError, exit_code_for


def _verb_names() -> List[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def _verbs(only: Optional[str] = None) -> List[ModuleType]:
    return [importlib.import_module(f"{__name__}.{name}") for name in _verb_names() if only in (None, name)]


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``s3torch`` argument parser, with a subcommand for every verb module (``only``: for
    that verb alone, which is all ``main`` imports to run it: the others' modules cost a
    command ~10 ms of start-up)."""
    parser = argparse.ArgumentParser(
        prog="s3torch",
        description="s3torch's command line: list, inspect, verify, copy and remove DCP checkpoints on S3, "
        "share an object by a presigned URL, show and check the configuration a client would use, "
        "and run a local S3 server.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for module in _verbs(only):
        name = module.__name__.rsplit(".", 1)[1]
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``s3torch`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = argv[0] if argv and argv[0] in _verb_names() else None  # else the whole list (help, errors)
    args = build_parser(verb).parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print(f"s3torch {args.verb}: interrupted", file=sys.stderr)
        return 130
    except CLIError as e:
        print(f"s3torch {args.verb}: {shown_lines(str(e))}", file=sys.stderr)
        return e.code
    except Exception as e:  # S3 errors and the like: one line, no traceback
        code = exit_code_for(e)
        if code is None:
            raise
        print(f"s3torch {args.verb}: {shown_lines(str(e))}", file=sys.stderr)
        return code
