"""Command line: ``lms-changefeed run | poll | status | reset | tail | check-config | dev``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import structlog
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from daemon import log as logsetup
from daemon.errors import ChangefeedError, ConfigError, StreamHeldElsewhere
from daemon.settings import CONFIG_ENV, Settings, load_settings
from daemon.stream import PassResult

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


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
    from daemon.ops.health import HealthServer
    from daemon.runtime import Runtime
    from daemon.schedule.scheduler import Scheduler

    log = structlog.get_logger("daemon")
    runtime = Runtime.open(settings)
    scheduler = Scheduler(runtime)
    signals = _StopOnSignal(runtime.stop)
    health = None
    if settings.http.enabled:
        health = HealthServer(
            settings.http.host,
            settings.http.port,
            liveness=scheduler.liveness,
            readiness=scheduler.readiness,
        )
        try:
            health.start()
        except BaseException:
            runtime.close()
            raise
        log.info("http_listening", host=settings.http.host, port=health.port)
    scheduler.start()
    runtime.stop.wait()
    log.info(
        "shutting_down",
        signal=signals.received,
        timeout_s=settings.scheduler.shutdown_timeout_seconds,
    )
    clean = scheduler.shutdown(settings.scheduler.shutdown_timeout_seconds)
    if health is not None:
        health.stop()
    if not clean:
        # A page is still in flight (a slow request or send). Its rows are not committed,
        # so the next start sends it again; waiting longer would only earn a SIGKILL.
        log.error("stopped", clean=False, reason="a scan did not reach a page boundary in time")
        sys.stderr.flush()
        os._exit(EXIT_FAILED)
    runtime.close()
    log.info("stopped", clean=True)
    return EXIT_OK


class _StopOnSignal:
    """First SIGTERM/SIGINT asks for a graceful stop; a second one exits at once."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: str | None = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            os._exit(128 + signum)
        self.received = signal.Signals(signum).name
        self.stop.set()


def cmd_poll(args: argparse.Namespace) -> int:
    """One pass over the selected streams, then exit; non-zero if any stream failed."""
    from daemon.runtime import Runtime

    settings = _settings(args)
    if args.connector:
        settings.connector(args.connector)
    if args.model and args.model not in settings.models:
        raise ConfigError("models", f"model {args.model!r} is not configured")
    runtime = Runtime.open(settings)
    _StopOnSignal(runtime.stop)
    failed = 0
    progress = _progress() if sys.stdout.isatty() else None
    try:
        passes = runtime.passes(
            [args.connector] if args.connector else None, [args.model] if args.model else None
        )
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
            except StreamHeldElsewhere as exc:
                print(f"{stream_pass.key}: skipped: {exc}")
                continue
            except ChangefeedError as exc:
                failed += 1
                print(f"{stream_pass.key}: FAILED: {exc}", file=sys.stderr)
                continue
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


def cmd_status(args: argparse.Namespace) -> int:
    """A table per stream: watermark, records, last full scan, scan in progress, guard, error."""
    from rich.console import Console
    from rich.table import Table

    from daemon.runtime import open_store

    settings = load_settings(args.config)
    store = open_store(settings.state)
    try:
        states = store.states()
    finally:
        store.close()
    table = Table(title=f"lms-changefeed streams ({settings.state.path})")
    for column in (
        "stream",
        "watermark",
        "records",
        "last full scan",
        "scan in progress",
        "delete guard",
        "last error",
    ):
        table.add_column(column)
    unhealthy = False
    for st in states:
        progress = (
            f"{st.scan_kind} #{st.scan_number} {st.scan_phase}, {st.scan_pages} pages"
            if st.in_progress
            else "-"
        )
        unhealthy |= bool(st.delete_guard or st.last_error)
        table.add_row(
            str(st.key),
            st.watermark or "-",
            str(st.records),
            _ts(st.last_full_scan_at),
            progress,
            st.delete_guard or "-",
            f"{st.last_error} ({_ts(st.last_error_at)})" if st.last_error else "-",
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return EXIT_FAILED if unhealthy else EXIT_OK


def cmd_reset(args: argparse.Namespace) -> int:
    """Forget a stream's snapshot and watermark: its next pass is an initial sync."""
    from daemon.models import StreamKey
    from daemon.runtime import open_store

    settings = load_settings(args.config)
    if not args.yes:
        print("refusing to reset without --yes", file=sys.stderr)
        return EXIT_FAILED
    store = open_store(settings.state)
    try:
        store.reset(StreamKey(args.connector, args.model))
    finally:
        store.close()
    print(f"reset {args.connector}/{args.model}")
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    """Pretty-print the events of a topic."""
    from daemon.dev.tail import tail

    bootstrap = args.bootstrap or load_settings(args.config).kafka.bootstrap_servers
    stop = threading.Event()
    _StopOnSignal(stop)
    return tail(
        bootstrap, args.topic, from_beginning=args.from_beginning, limit=args.limit, stop=stop
    )


def cmd_dev(args: argparse.Namespace) -> int:
    """Broker + simulator + daemon + a mutator + tail, until Ctrl-C."""
    from daemon.dev.stack import run_dev

    return run_dev(Path(args.config) if args.config else Path("config/dev.yaml"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="lms-changefeed",
        description="Polls the Bindbee LMS API and publishes change events to Kafka.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help=f"YAML config file (default: ${CONFIG_ENV})")
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "run the daemon")
    poll = add("poll", cmd_poll, "one pass over every stream, then exit")
    poll.add_argument("--connector")
    poll.add_argument("--model")
    poll.add_argument("--full", action="store_true", help="force a full scan")
    add("status", cmd_status, "show each stream's watermark, records and scan state")
    reset = add("reset", cmd_reset, "forget one stream's state (next pass is an initial sync)")
    reset.add_argument("--connector", required=True)
    reset.add_argument("--model", required=True)
    reset.add_argument("--yes", action="store_true")
    tail = add("tail", cmd_tail, "pretty-print the events of a topic")
    tail.add_argument("--topic", required=True)
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--bootstrap", help="host:port (default: kafka.bootstrap_servers)")
    tail.add_argument("--limit", type=int, default=None, help="stop after N events")
    add("check-config", cmd_check_config, "validate the configuration and exit")
    add("dev", cmd_dev, "run broker, simulator and daemon locally with demo data")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lms-changefeed`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"lms-changefeed: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ChangefeedError as exc:
        print(f"lms-changefeed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
