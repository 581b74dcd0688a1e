"""``run`` (the daemon) and ``poll`` (one bounded pass over the selected streams)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from daemon.cli.common import EXIT_FAILED, EXIT_OK, interrupted_or, settings_for
from daemon.errors import ChangefeedError, LeaseLost, StreamHeldElsewhere, UsageError
from daemon.service import StopOnSignal
from daemon.settings import Settings
from daemon.stream import PassResult, StreamPass

if TYPE_CHECKING:
    from daemon.runtime import Runtime

# poll asks Kafka for metadata first: an unreachable broker fails every stream at once
# (one line each) instead of costing a bootstrap timeout per stream after fetching pages.
_POLL_KAFKA_CHECK_SECONDS = 5.0


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: every stream on its schedule until SIGTERM (exit 0) or SIGINT (130)."""
    settings = settings_for(args)
    from daemon.service import run_daemon

    return run_daemon(settings, config_path=args.config)


def check_selection(settings: Settings, connector: str | None, model: str | None) -> None:
    """Refuse a ``--connector`` or ``--model`` this configuration does not poll."""
    if connector is not None and connector not in {c.name for c in settings.connectors}:
        configured = ", ".join(c.name for c in settings.connectors) or "none"
        raise UsageError(
            f"--connector: no connector named {connector!r} is configured "
            f"(configured: {configured})"
        )
    if model is not None and model not in settings.models:
        raise UsageError(
            f"--model: model {model!r} is not configured "
            f"(configured: {', '.join(settings.models)})"
        )


def _progress() -> Progress:
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    progress.start()
    return progress


def _page_reporter(
    progress: Progress | None, stream_pass: StreamPass
) -> Callable[[PassResult], None] | None:
    """Updates a progress line after each page (on a terminal only)."""
    if progress is None:
        return None
    task: TaskID = progress.add_task(str(stream_pass.key), total=None)

    def on_page(result: PassResult) -> None:
        s = result.stats
        progress.update(
            task,
            description=f"{result.key} {result.kind}: {s.pages} pages, {s.items} items, "
            f"{s.created} created, {s.updated} updated",
        )

    return on_page


def _summary(result: PassResult) -> str:
    s = result.stats
    return (
        f"{result.key}: {result.kind} scan #{result.scan_number}: {s.pages} pages, "
        f"{s.items} items, {s.created} created, {s.updated} updated, {s.deleted} deleted, "
        f"{s.unchanged} unchanged, {s.stale} stale"
        + (f"; DELETE GUARD: {result.delete_guard}" if result.delete_guard else "")
    )


def _run_one(
    runtime: Runtime, stream_pass: StreamPass, full: bool, progress: Progress | None
) -> bool:
    """One stream's pass, reported in one line; False when it failed."""
    try:
        result = stream_pass.run(force_full=full, on_page=_page_reporter(progress, stream_pass))
    except LeaseLost as exc:
        print(f"{stream_pass.key}: FAILED: {exc}", file=sys.stderr)
        return False
    except StreamHeldElsewhere as exc:
        print(f"{stream_pass.key}: skipped: {exc}")
        return True
    except ChangefeedError as exc:
        print(f"{stream_pass.key}: FAILED: {exc}", file=sys.stderr)
        return False
    finally:
        # The lease goes back at once (a running daemon's replicas may want the stream);
        # the shared due time stays as the daemon set it.
        with contextlib.suppress(ChangefeedError):
            runtime.store.release(stream_pass.key)
    print(_summary(result))
    return True


def cmd_poll(args: argparse.Namespace) -> int:
    """One pass over the selected streams, then exit; 1 if any stream failed, 130 on
    Ctrl-C (the pass in flight stops at a page boundary)."""
    from daemon.runtime import Runtime

    settings = settings_for(args)
    check_selection(settings, args.connector, args.model)
    runtime = Runtime.open(settings)
    signals = StopOnSignal(runtime.stop)
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
            return interrupted_or(EXIT_FAILED, signals.received)
        progress = _progress() if sys.stdout.isatty() else None
        ok = [_run_one(runtime, p, args.full, progress) for p in passes]
    finally:
        if progress is not None:
            progress.stop()
        runtime.close()
    return interrupted_or(EXIT_OK if all(ok) else EXIT_FAILED, signals.received)
