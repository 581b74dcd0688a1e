"""Command line: ``lms-changefeed run | poll | status | resync | reset | migrate | tail |
schema | check-config | dev``.

Exit codes: 0 fine, 1 a stream or command failed, 2 refused (bad config or arguments, no
state store, unknown stream, no confirmation), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from daemon import log as logsetup
from daemon.errors import ChangefeedError, ConfigError, LeaseLost, StreamHeldElsewhere
from daemon.models import LeaseInfo, ReplicaInfo, StreamKey, StreamState
from daemon.service import StopOnSignal
from daemon.settings import CONFIG_ENV, KafkaSettings, Settings, load_settings
from daemon.stream import PassResult

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# poll asks Kafka for metadata first: an unreachable broker fails every stream at once
# (one line each) instead of costing a bootstrap timeout per stream after fetching pages.
_POLL_KAFKA_CHECK_SECONDS = 5.0


class UsageError(ChangefeedError):
    """The command cannot do what was asked (unknown stream, no confirmation): exit 2."""


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    logsetup.configure(settings.log.level, settings.log.format)
    return settings


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and print a one-line summary."""
    settings = load_settings(args.config)
    print(
        f"config OK: {len(settings.connectors)} connector(s) x {len(settings.models)} model(s), "
        f"kafka {settings.kafka.bootstrap_servers}, state {settings.state.path}"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: every stream on its schedule until SIGTERM/SIGINT."""
    settings = _settings(args)
    from daemon.service import run_daemon

    return run_daemon(settings, config_path=args.config)


def cmd_poll(args: argparse.Namespace) -> int:
    """One pass over the selected streams, then exit; non-zero if any stream failed."""
    from daemon.runtime import Runtime

    settings = _settings(args)
    if args.connector:
        settings.connector(args.connector)
    if args.model and args.model not in settings.models:
        raise ConfigError("models", f"model {args.model!r} is not configured")
    runtime = Runtime.open(settings)
    StopOnSignal(runtime.stop)
    failed = 0
    progress = None
    try:
        passes = runtime.passes(
            [args.connector] if args.connector else None, [args.model] if args.model else None
        )
        try:
            runtime.sink.check_ready(_POLL_KAFKA_CHECK_SECONDS)
        except ChangefeedError as exc:
            for stream_pass in passes:
                print(f"{stream_pass.key}: FAILED: {exc}; nothing was fetched", file=sys.stderr)
            return EXIT_FAILED
        progress = _progress() if sys.stdout.isatty() else None
        for stream_pass in passes:
            on_page = None
            if progress is not None:
                task = progress.add_task(str(stream_pass.key), total=None)

                def on_page(result: PassResult, task: TaskID = task) -> None:
                    progress.update(
                        task,
                        description=f"{result.key} {result.kind}: {result.stats.pages} pages, "
                        f"{result.stats.items} items, {result.stats.created} created, "
                        f"{result.stats.updated} updated",
                    )

            try:
                result = stream_pass.run(force_full=args.full, on_page=on_page)
            except LeaseLost as exc:
                failed += 1
                print(f"{stream_pass.key}: FAILED: {exc}", file=sys.stderr)
                continue
            except StreamHeldElsewhere as exc:
                print(f"{stream_pass.key}: skipped: {exc}")
                continue
            except ChangefeedError as exc:
                failed += 1
                print(f"{stream_pass.key}: FAILED: {exc}", file=sys.stderr)
                continue
            finally:
                # The lease goes back at once (a running daemon's replicas may want the
                # stream); the shared due time stays as the daemon set it.
                with contextlib.suppress(ChangefeedError):
                    runtime.store.release(stream_pass.key)
            s = result.stats
            print(
                f"{result.key}: {result.kind} scan #{result.scan_number}: {s.pages} pages, "
                f"{s.items} items, {s.created} created, {s.updated} updated, {s.deleted} deleted, "
                f"{s.unchanged} unchanged, {s.stale} stale"
                + (f"; DELETE GUARD: {result.delete_guard}" if result.delete_guard else "")
            )
    finally:
        if progress is not None:
            progress.stop()
        runtime.close()
    return EXIT_FAILED if failed else EXIT_OK


def _progress() -> Progress:
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    progress.start()
    return progress


def _ts(value: float | None) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _store_where(settings: Settings) -> str:
    return (
        "the PostgreSQL state store" if settings.state.url is not None else str(settings.state.path)
    )


def _check_streams(
    settings: Settings, known: Sequence[Any], connector: str | None, model: str | None
) -> None:
    """Refuse a connector or model that is neither configured nor in the store."""
    stored_connectors = {key.connector for key in known}
    stored_models = {key.model for key in known}
    configured = {c.name for c in settings.connectors}
    if connector is not None and connector not in configured | stored_connectors:
        raise UsageError(
            f"unknown connector {connector!r}: not configured "
            f"({', '.join(sorted(configured)) or 'none'}) and not in {_store_where(settings)}"
        )
    if model is not None and model not in set(settings.models) | stored_models:
        raise UsageError(
            f"unknown model {model!r}: not configured "
            f"({', '.join(sorted(settings.models))}) and not in {_store_where(settings)}"
        )


def _age(seconds: float) -> str:
    """A duration for people, to the unit that matters: 42s, 7m, 3h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _lease_cell(lease: LeaseInfo | None, now: float) -> str:
    """Who scans the stream and for how long; an expired lease is free for any replica
    (its holder died or stalled), so it says so rather than pass for a scan in progress."""
    if lease is None:
        return "-"
    held = f"{lease.owner} {_age(now - lease.acquired_at)}"
    return f"{held} (expired)" if lease.expires_at < now else held


def _due_cell(due_at: float | None, now: float) -> str:
    return "now" if due_at is None or due_at <= now else f"in {_age(due_at - now)}"


def _stream_rows(
    states: Sequence[StreamState],
    rejected: dict[StreamKey, int],
    leases: dict[StreamKey, LeaseInfo],
    now: float,
) -> list[tuple[str, ...]]:
    """One row per stream, in the order of ``_STATUS_COLUMNS``."""
    rows = []
    for st in states:
        progress = (
            f"{st.scan_kind} #{st.scan_number} {st.scan_phase}, {st.scan_pages} pages"
            if st.in_progress
            else "-"
        )
        rows.append(
            (
                str(st.key),
                st.watermark or "-",
                str(st.records),
                _ts(st.last_full_scan_at),
                progress,
                _lease_cell(leases.get(st.key), now),
                _due_cell(st.due_at, now),
                f"requested {_age(now - st.resync_requested_at)} ago"
                if st.resync_requested_at is not None
                else "-",
                (st.sync_bookmark or "-")
                + (f" (scanning {st.scan_sync})" if st.in_progress and st.scan_sync else ""),
                str(rejected[st.key]),
                st.delete_guard or "-",
                "; ".join(
                    part
                    for part in (
                        f"{st.last_error} ({_ts(st.last_error_at)})" if st.last_error else "",
                        f"no scans: {st.connector_state}" if st.connector_state else "",
                    )
                    if part
                )
                or "-",
            )
        )
    return rows


_STATUS_COLUMNS = (
    "stream",
    "watermark",
    "records",
    "last full scan",
    "scan in progress",
    "lease",
    "next due",
    "resync",
    "sync scanned",
    "rejected",
    "delete guard",
    "last error",
)


def _replica_rows(
    replicas: Sequence[ReplicaInfo],
    leases: dict[StreamKey, LeaseInfo],
    watcher: str | None,
    lease_seconds: float,
    now: float,
) -> list[tuple[str, ...]]:
    """One row per replica row in the store: a replica silent for longer than a lease is
    dead or stalled (its leases are free), and the row says so until it is pruned."""
    rows = []
    for r in replicas:
        held = sum(
            1 for lease in leases.values() if lease.owner == r.replica and lease.expires_at >= now
        )
        holds = [f"{held} stream(s)"] if held else []
        if watcher == r.replica:
            holds.append("sync watcher")
        silent = now - r.heartbeat_at > lease_seconds
        rows.append(
            (
                r.replica,
                r.host,
                str(r.pid),
                _ts(r.started_at),
                f"{_age(now - r.heartbeat_at)} ago" + (" (silent)" if silent else ""),
                f"{r.busy}/{r.workers}",
                ", ".join(holds) or "-",
            )
        )
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    """A table per stream: watermark, records, last full scan, scan in progress, lease
    holder, next due time, pending resync, rejected items (dead-lettered, still met),
    delete guard, error; then the replicas sharing the store."""
    from rich.console import Console
    from rich.table import Table

    from daemon.schedule.fleet import WATCHER_LEASE
    from daemon.state import current_revision, head_revision, open_store, require_store

    settings = load_settings(args.config)
    require_store(settings.state)  # an inspecting command creates no store
    revision, head = current_revision(settings.state), head_revision()
    print(f"schema revision: {revision or 'none'} (this version: {head})")
    if revision != head:
        print("the state store is not at this version's schema: run `lms-changefeed migrate`")
        return EXIT_FAILED
    store = open_store(settings.state, create=False, auto_migrate=False)
    try:
        states = store.states()
        # Poison records dead-lettered and still met (distinct contents), per stream.
        rejected = {st.key: store.rejected_count(st.key) for st in states}
        leases = store.stream_leases()
        replicas = store.replicas()
        now = time.time()
        watcher = next(
            (lease.owner for lease in store.fleet(now).leases if lease.name == WATCHER_LEASE),
            None,
        )
    finally:
        store.close()
    _check_streams(settings, [st.key for st in states], args.connector, args.model)
    states = [
        st
        for st in states
        if (args.connector is None or st.key.connector == args.connector)
        and (args.model is None or st.key.model == args.model)
    ]
    table = Table(title=f"lms-changefeed streams ({_store_where(settings)})")
    for column in _STATUS_COLUMNS:
        table.add_column(column)
    for row in _stream_rows(states, rejected, leases, now):
        table.add_row(*row)
    unhealthy = any(st.delete_guard or st.last_error or st.connector_state for st in states)
    # Not a terminal (a pipe, a log): wide enough that a row stays on one line.
    console = Console(width=240 if not sys.stdout.isatty() else None)
    console.print(table)
    if not states:
        print("no stream has state yet (the first `poll` or `run` pass records it)")
    if replicas:
        # Every process sharing the store (one for SQLite); the columns say who is alive.
        others = Table(title="replicas")
        for column in ("replica", "host", "pid", "started", "heartbeat", "busy/workers", "holds"):
            others.add_column(column)
        for row in _replica_rows(replicas, leases, watcher, settings.state.lease_seconds, now):
            others.add_row(*row)
        console.print(others)
    return EXIT_FAILED if unhealthy else EXIT_OK


def _stored_streams(
    settings: Settings, stored: Sequence[StreamKey], connector: str | None, model: str | None
) -> list[StreamKey]:
    """The stored streams a filter selects; UsageError naming what selects none."""
    try:
        _check_streams(settings, stored, connector, model)
    except UsageError as exc:
        if connector is None or model is None:
            raise
        raise UsageError(f"cannot resync {StreamKey(connector, model)}: {exc}") from None
    chosen = [
        key
        for key in stored
        if (connector is None or key.connector == connector)
        and (model is None or key.model == model)
    ]
    if not chosen:
        if connector is not None and model is not None:
            what = f"{StreamKey(connector, model)} has no"
        elif connector is not None:
            what = f"no stream of connector {connector!r} has"
        elif model is not None:
            what = f"no stream of model {model!r} has"
        else:
            what = "no stream has"
        raise UsageError(
            f"nothing to resync: {what} state in {_store_where(settings)} yet "
            "(a stream's first pass is a full scan anyway)"
        )
    return chosen


def _resync_notes(settings: Settings, state: StreamState) -> list[str]:
    """What would keep this daemon's configuration from running the requested scan."""
    notes = []
    model = settings.models.get(state.key.model)
    configured = {c.key for c in settings.connectors}
    if model is None or (
        state.key.connector not in configured and not settings.bindbee.discover_connectors
    ):
        notes.append("not configured here: only a daemon that follows it runs the scan")
    elif model.trigger == "sync" and state.connector_state:
        notes.append(f"its connector is held ({state.connector_state}): the scan waits for it")
    if state.in_progress:
        notes.append("the scan in progress finishes first")
    return notes


def cmd_resync(args: argparse.Namespace) -> int:
    """Ask the running daemon (whichever replica is free) for a full scan that compares with
    the stored snapshot: only real differences become events (``reset`` re-sends all)."""
    from daemon.state import open_store

    if args.all and (args.connector or args.model):
        raise UsageError("--all selects every stream: give it without --connector or --model")
    if not (args.all or args.connector or args.model):
        raise UsageError("resync needs --connector C [--model M], --model M, or --all")
    settings = load_settings(args.config)
    # No migration from an operator's command: a daemon of this version migrated already.
    store = open_store(settings.state, create=False, auto_migrate=False)
    try:
        states = {st.key: st for st in store.states()}
        # Every stream checked before any request: a refusal leaves the store as it was.
        keys = _stored_streams(settings, list(states), args.connector, args.model)
        now = time.time()
        for key in keys:
            store.request_scan(key, now, resync=True)
    finally:
        store.close()
    within = settings.scheduler.claim_interval_seconds
    for key in keys:
        state = states[key]
        pending = state.resync_requested_at
        said = f"already requested {_age(now - pending)} ago" if pending else "requested"
        notes = "".join(f"; note: {note}" for note in _resync_notes(settings, state))
        print(
            f"resync {key}: {said}; a running daemon starts a full scan comparing with the "
            f"stored snapshot (only real differences become events) within about {within:g}s "
            f"(scheduler.claim_interval_seconds); `lms-changefeed status` shows the request "
            f"until that scan is done{notes}"
        )
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schemas (draft 2020-12) of the events, as docs/schemas holds them."""
    from daemon.settings import LMS_MODELS
    from daemon.sink.schemas import render

    if args.model is not None and args.model not in LMS_MODELS:
        raise ConfigError(
            "--model", f"unknown model {args.model!r}; known: {', '.join(LMS_MODELS)}"
        )
    base = args.base_uri
    if base is None and (args.config or os.environ.get(CONFIG_ENV)):
        base = kafka_settings(args.config).schema_base_uri
    sys.stdout.write(render(args.model, base))
    return EXIT_OK


def _confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_reset(args: argparse.Namespace) -> int:
    """Forget a stream's snapshot and watermark: its next pass is an initial sync."""
    from daemon.state import open_store

    settings = load_settings(args.config)
    key = StreamKey(args.connector, args.model)
    store = open_store(settings.state, create=False)
    try:
        states = {st.key: st for st in store.states()}
        _check_streams(settings, list(states), args.connector, args.model)
        state = states.get(key)
        if state is None:
            print(f"nothing to reset: {key} has no state in {_store_where(settings)} yet")
            return EXIT_OK
        question = (
            f"reset {key} in {_store_where(settings)}: forget its {state.records} record(s) "
            "and watermark? Its next pass is an initial sync"
        )
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError(f"refusing to reset {key} without --yes (no terminal to ask on)")
            if not _confirm(question):
                print("not reset", file=sys.stderr)
                return EXIT_CONFIG
        store.reset(key)
    finally:
        store.close()
    print(f"reset {key}: {state.records} record(s) forgotten; its next pass is an initial sync")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the state store's schema to this version's (run/poll do it at start unless
    ``state.auto_migrate`` is false)."""
    from daemon.state import current_revision, migrate

    settings = _settings(args)
    before = current_revision(settings.state)
    after = migrate(settings.state)
    if before == after:
        print(f"state store already at schema revision {after}")
    else:
        print(f"state store migrated: {before or 'none'} -> {after}")
    return EXIT_OK


_KAFKA_ENV = "CHANGEFEED_KAFKA__"


def kafka_settings(config: Path | str | None, bootstrap: str | None = None) -> KafkaSettings:
    """Only the ``kafka`` section (file, then ``CHANGEFEED_KAFKA__*``, then ``bootstrap``):
    reading a topic needs neither the Bindbee key nor connectors."""
    import yaml
    from pydantic import ValidationError

    if config is None and os.environ.get(CONFIG_ENV):
        config = os.environ[CONFIG_ENV]
    section: dict[str, Any] = {}
    if config is not None:
        try:
            data = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("config", f"cannot read {config}: {exc.strerror or exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError):
            raise ConfigError(
                "config", f"{config} is not valid YAML (check-config says why)"
            ) from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError("config", f"{config} must hold a mapping at the top level")
        raw = (data or {}).get("kafka") or {}
        if not isinstance(raw, dict):
            raise ConfigError("kafka", "must be a mapping")
        section.update(raw)
    for name, value in os.environ.items():
        if name.startswith(_KAFKA_ENV):
            section[name[len(_KAFKA_ENV) :].lower()] = value
    if bootstrap:
        section["bootstrap_servers"] = bootstrap
    if "bootstrap_servers" not in section:
        raise ConfigError(
            "kafka.bootstrap_servers",
            f"tail needs --bootstrap HOST:PORT, or a config (--config or {CONFIG_ENV}) "
            "naming kafka.bootstrap_servers",
        )
    try:
        return KafkaSettings(**section)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in ("kafka", *first["loc"]))
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(field, message.removeprefix("Value error, ")) from None


def cmd_tail(args: argparse.Namespace) -> int:
    """Print the events of topics, one line each."""
    import logging

    from daemon.dev.tail import tail
    from daemon.sink.kafka import client_configs

    kafka = kafka_settings(args.config, args.bootstrap)
    logsetup.configure("WARNING", "auto")
    # tail says itself, in one line, when Kafka cannot be reached.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    stop = threading.Event()
    StopOnSignal(stop)
    return tail(
        client_configs(kafka),
        args.topic,
        from_beginning=args.from_beginning,
        limit=args.limit,
        stop=stop,
    )


def cmd_dev(args: argparse.Namespace) -> int:
    """Broker + simulator + daemon + a mutator + a live view of the events, until Ctrl-C."""
    from devtools.stack import DevOptions, run_dev

    return run_dev(
        DevOptions(
            config=Path(args.config) if args.config else None,
            seed=args.seed,
            verbose=args.verbose,
            keep=args.keep,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    config_help = f"YAML config file (default: ${CONFIG_ENV})"
    parser = argparse.ArgumentParser(
        prog="lms-changefeed",
        description="Polls the Bindbee LMS API and publishes change events to Kafka.",
        epilog="exit codes: 0 ok, 1 failed, 2 refused (config, arguments, no store), "
        "130 interrupted",
    )
    parser.add_argument("--config", default=None, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        # SUPPRESS: without it the subcommand's default (None) would undo a --config given
        # before the subcommand.
        p.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
        p.set_defaults(func=func)
        return p

    def stream_filter(p: argparse.ArgumentParser, *, required: bool, what: str) -> None:
        p.add_argument("--connector", required=required, help=f"connector name {what}")
        p.add_argument("--model", required=required, help=f"model, e.g. enrollments {what}")

    add("run", cmd_run, "run the daemon")
    poll = add("poll", cmd_poll, "one pass over every stream, then exit")
    stream_filter(poll, required=False, what="(default: every configured one)")
    poll.add_argument("--full", action="store_true", help="force a full scan")
    status = add("status", cmd_status, "show each stream's watermark, records and scan state")
    stream_filter(status, required=False, what="to show only (default: all)")
    resync = add(
        "resync",
        cmd_resync,
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
    reset = add("reset", cmd_reset, "forget one stream's state (next pass is an initial sync)")
    stream_filter(reset, required=True, what="of the stream to reset")
    reset.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)"
    )
    add("migrate", cmd_migrate, "upgrade the state store's schema (under a lock), then exit")
    tail = add("tail", cmd_tail, "print the events of a topic, one line each")
    tail.add_argument(
        "--topic", required=True, action="append", help="topic to read (repeat for several)"
    )
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest event (default: new)"
    )
    tail.add_argument(
        "--bootstrap", help="Kafka host:port (default: kafka.bootstrap_servers of the config)"
    )
    tail.add_argument("--limit", type=int, default=None, help="stop after N events")
    schema = add("schema", cmd_schema, "print the JSON Schemas of the events (docs/schemas)")
    schema.add_argument("--model", help="only this model's schemas, e.g. enrollments")
    schema.add_argument(
        "--base-uri", help="schema ids under this URI (default: kafka.schema_base_uri, or URNs)"
    )
    add("check-config", cmd_check_config, "validate the configuration and exit")
    dev = add("dev", cmd_dev, "run broker, simulator and daemon locally with demo data")
    dev.add_argument(
        "--seed", type=int, default=None, help="mutator seed, to repeat a run (default: random)"
    )
    dev.add_argument(
        "--verbose", action="store_true", help="show every initial-sync event, not a count"
    )
    dev.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (state, logs) on exit"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lms-changefeed`` console script."""
    from daemon.state import StoreMissing

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, StoreMissing, UsageError) as exc:
        print(f"lms-changefeed: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ChangefeedError as exc:
        print(f"lms-changefeed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
