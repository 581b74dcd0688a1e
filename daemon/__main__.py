"""``python -m daemon``: the ``lms-changefeed`` command line (``daemon.cli``)."""

import sys

from daemon.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
