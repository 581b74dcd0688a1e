"""The argument parser: every command, its options and their help.

A command names its function as ``"module:function"`` and is imported only when it runs
(``command_of``): building the parser imported every command's modules (tail's Kafka
consumer and rich console, the operator tables...), 60 ms of CPU added to each ``poll``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from daemon.settings import CONFIG_ENV

Command = Callable[[argparse.Namespace], int]
_CONFIG_HELP = f"YAML config file (default: ${CONFIG_ENV})"


def command_of(args: argparse.Namespace) -> Command:
    """The function of the parsed command (its module imported now)."""
    module, name = str(args.func).split(":")
    command: Command = getattr(importlib.import_module(module), name)
    return command


def _positive(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else -1
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, not {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, not {text!r}")
    return int(text)


class _Commands:
    """Adds subcommands that each take ``--config`` and name their function."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(self, name: str, func: str, help_: str) -> argparse.ArgumentParser:
        """``func``: ``"module:function"``, imported when the command runs."""
        p = self._sub.add_parser(name, help=help_, description=help_)
        # SUPPRESS: without it the subcommand's default (None) would undo a --config given
        # before the subcommand.
        p.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)
        p.set_defaults(func=func)
        return p


def _stream_filter(p: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    p.add_argument("--connector", required=required, help=f"connector name {what}")
    p.add_argument("--model", required=required, help=f"model, e.g. enrollments {what}")


def _add_operator_commands(commands: _Commands) -> None:
    commands.add(
        "run", "daemon.cli.run:cmd_run", "run the daemon (SIGTERM stops it: exit 0; Ctrl-C: 130)"
    )
    poll = commands.add("poll", "daemon.cli.run:cmd_poll", "one pass over every stream, then exit")
    _stream_filter(poll, required=False, what="(default: every configured one)")
    poll.add_argument("--full", action="store_true", help="force a full scan")
    shown = commands.add(
        "status",
        "daemon.cli.status:cmd_status",
        "show each stream's watermark, records and scan state",
    )
    _stream_filter(shown, required=False, what="to show only (default: all)")
    resync = commands.add(
        "resync",
        "daemon.cli.streams:cmd_resync",
        "ask the running daemon for a full scan that compares with the stored snapshot "
        "(only real differences become events; `reset` re-sends everything)",
    )
    resync.add_argument(
        "--connector", help="connector of the streams to resync (alone: all its models)"
    )
    resync.add_argument(
        "--model", help="model to resync, e.g. enrollments (alone: for every connector)"
    )
    resync.add_argument(
        "--all", action="store_true", help="resync every stream the state store knows"
    )
    reset = commands.add(
        "reset",
        "daemon.cli.streams:cmd_reset",
        "forget one stream's state (next pass is an initial sync)",
    )
    _stream_filter(reset, required=True, what="of the stream to reset")
    reset.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)"
    )
    commands.add(
        "migrate",
        "daemon.cli.admin:cmd_migrate",
        "upgrade the state store's schema (under a lock), then exit",
    )
    schema = commands.add(
        "schema",
        "daemon.cli.admin:cmd_schema",
        "print the JSON Schemas of the events (docs/schemas)",
    )
    schema.add_argument("--model", help="only this model's schemas, e.g. enrollments")
    schema.add_argument(
        "--base-uri", help="schema ids under this URI (default: kafka.schema_base_uri, or URNs)"
    )
    commands.add(
        "check-config", "daemon.cli.admin:cmd_check_config", "validate the configuration and exit"
    )


def _add_tail(commands: _Commands) -> None:
    tail = commands.add(
        "tail", "daemon.cli.tail:cmd_tail", "print the events of a topic, one line each"
    )
    tail.add_argument(
        "--topic", required=True, action="append", help="topic to read (repeat for several)"
    )
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest event (default: new)"
    )
    tail.add_argument(
        "--bootstrap", help="Kafka host:port (default: kafka.bootstrap_servers of the config)"
    )
    tail.add_argument(
        "--limit",
        type=_positive,
        default=None,
        help="stop after N events (with --from-beginning: or at the end of what exists)",
    )


def _add_dev_commands(commands: _Commands) -> None:
    dev = commands.add(
        "dev",
        "daemon.cli.dev:cmd_dev",
        "run broker, simulator and daemon locally with demo data (needs the `sim` extra)",
    )
    dev.add_argument(
        "--seed", type=int, default=None, help="mutator seed, to repeat a run (default: random)"
    )
    dev.add_argument(
        "--verbose", action="store_true", help="show every initial-sync event, not a count"
    )
    dev.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (state, logs) on exit"
    )
    broker = commands.add(
        "broker",
        "daemon.cli.dev:cmd_broker",
        "start a standalone Kafka broker (tansu, in memory) and print its address until "
        "Ctrl-C (needs the `sim` extra)",
    )
    broker.add_argument(
        "--port", type=_port, default=9092, help="port to listen on (default 9092; 0: any free)"
    )
    broker.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="lms-changefeed",
        description="Polls the Bindbee LMS API and publishes change events to Kafka.",
        epilog="exit codes: 0 ok (SIGTERM too), 1 failed, 2 refused (config, arguments, "
        "no or unmigrated store, unknown stream, missing extra), 130 interrupted (Ctrl-C)",
    )
    parser.add_argument("--config", default=None, help=_CONFIG_HELP)
    commands = _Commands(parser)
    _add_operator_commands(commands)
    _add_tail(commands)
    _add_dev_commands(commands)
    return parser
