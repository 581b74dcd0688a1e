"""Command line: ``lms-changefeed run | poll | status | resync | reset | migrate | tail |
schema | check-config | dev | broker``.

One module per command group: ``run`` (run, poll), ``status`` (+ ``status_view``, the
tables), ``streams`` (resync, reset), ``tail``, ``admin`` (check-config, migrate, schema),
``dev`` (dev, broker: the `sim` extra); ``parser`` holds the arguments.

Exit codes: 0 fine (SIGTERM ends ``run`` with 0), 1 a stream or command failed, 2 refused
(``errors.Refused``: bad config or arguments, no or unmigrated state store, unknown
stream, no confirmation, a missing extra), 130 interrupted (SIGINT, Ctrl-C).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from daemon.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_REFUSED
from daemon.cli.parser import build_parser, command_of
from daemon.errors import ChangefeedError, Refused

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lms-changefeed`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(command_of(args)(args))
    except Refused as exc:
        print(f"lms-changefeed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ChangefeedError as exc:
        print(f"lms-changefeed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
