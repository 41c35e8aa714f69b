"""The ``raystream`` command: a parser with one sub-command group per module.

To add a group (``sql``, ``status``, ``dlq``, ``generate``, ``demo``...), write a module in
``raystream/cli/`` with a ``register(subparsers, common)`` function that adds its parser and sets
``handler`` (``(argparse.Namespace) -> int``) with ``set_defaults``, then add the module to
``GROUPS`` below. Group modules import heavy dependencies (Ray, Kafka clients) inside their
handlers, so ``raystream --help`` stays fast.

Every handler receives ``args.home`` (a :class:`~pathlib.Path`): ``--home``, else
``$RAYSTREAM_HOME``, else ``~/.raystream``. This is the one place that reads that variable.
raystream errors print as ``error: <message>`` with exit code 1; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Protocol

from raystream.cli import demo, dev, dlq, generate, sql, status
from raystream.errors import RaystreamError

HOME_ENV = "RAYSTREAM_HOME"
DEFAULT_HOME = "~/.raystream"


class CommandGroup(Protocol):
    """What a command-group module provides."""

    def register(self, subparsers: Any, common: argparse.ArgumentParser) -> None:
        """Add the group's parser to ``subparsers``; pass ``common`` as a parent to each parser."""


#: The command groups, in help order: one line per group.
GROUPS: tuple[CommandGroup, ...] = (dev, demo, generate, status, dlq, sql)


def common_options() -> argparse.ArgumentParser:
    """Options accepted before or after any sub-command (``raystream dev up --debug``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks on errors",
    )
    common.add_argument(
        "--home",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help=f"raystream's state directory (default: ${HOME_ENV} or {DEFAULT_HOME})",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full ``raystream`` parser with every registered group."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="raystream",
        description="A stream processor for event-driven microservices, on Ray and Kafka.",
        parents=[common],
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in GROUPS:
        group.register(subparsers, common)
    return parser


def resolve_home(cli_home: Path | None, environ: dict[str, str] | os._Environ[str]) -> Path:
    """``--home``, else ``$RAYSTREAM_HOME``, else ``~/.raystream``, with ``~`` expanded."""
    if cli_home is not None:
        return cli_home.expanduser()
    return Path(environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def main(argv: list[str] | None = None) -> int:
    """Run the ``raystream`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # No command (or a group without its action): show the relevant help.
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return 2
    debug = bool(getattr(args, "debug", False))
    args.home = resolve_home(getattr(args, "home", None), os.environ)
    try:
        return int(handler(args))
    except RaystreamError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
