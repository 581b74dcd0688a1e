"""Running claimed streams: one pass each on a bounded pool, then its next due time.

A claimed stream's pass runs on a worker thread. Its outcome (``rules.outcome_of``, from
the exception's class alone) gives the next due time (``rules.next_due``), written when
the lease is given back; failures are counted in the stream's health, reported once per
outage, and recorded in the store for ``status``. What the pass does (skip, read hints,
walk) is the stream's turn (``hinted.StreamTurn``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog

from daemon.errors import ChangefeedError, ScanInterrupted
from daemon.models import StreamKey, StreamState
from daemon.ops import metrics
from daemon.runtime import Runtime
from daemon.schedule.hinted import StreamTurn
from daemon.schedule.registry import Stream
from daemon.schedule.rules import (
    Outcome,
    Timing,
    failure_delay,
    next_due,
    outcome_of,
    shortened_due,
)
from daemon.stream import StreamPass

log = structlog.get_logger("daemon.schedule.runner")


def build_pass(runtime: Runtime, stream: Stream) -> StreamPass:
    """The StreamPass of ``stream``, from the runtime's one factory."""
    return runtime.stream_pass(stream.connector, stream.model)


class PassRunner:
    """Runs passes on ``workers`` threads and releases each stream with its next due time.

    ``lock`` is shared with the stream registry; ``wake(when)`` asks the claim loop to
    look again no later than ``when`` (a released stream may be due soon).
    """

    def __init__(
        self,
        runtime: Runtime,
        workers: int,
        lock: threading.RLock,
        wake: Callable[[float], None],
    ) -> None:
        self.runtime = runtime
        self.workers = workers
        self._wake = wake
        self._lock = lock
        self._idle = threading.Condition(lock)
        self._active: set[StreamKey] = set()
        self._futures: dict[StreamKey, Future[None]] = {}
        self._shortened: set[StreamKey] = set()  # running passes whose interval a reload cut
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="stream")

    # -- what runs -----------------------------------------------------------------

    def running(self, key: StreamKey) -> bool:
        """True while this process runs (or has submitted) a pass of ``key``."""
        with self._lock:
            return key in self._active

    def busy(self) -> int:
        """How many passes run or wait for a worker."""
        with self._lock:
            return len(self._active)

    def submit(self, stream: Stream) -> bool:
        """Run a pass of the claimed ``stream``; False when the pool is shut down (we
        are stopping: the caller gives the lease back)."""
        key = stream.key
        try:
            with self._lock:  # shutdown sees the stream and its future together
                self._active.add(key)
                self._futures[key] = self._pool.submit(self.run, stream)
        except RuntimeError:
            with self._lock:
                self._active.discard(key)
            return False
        return True

    def shorten(self, key: StreamKey) -> None:
        """A reload shortened ``key``'s interval: a running pass applies it at its end."""
        with self._lock:
            if key in self._active:
                self._shortened.add(key)

    # -- one pass --------------------------------------------------------------------

    def run(self, stream: Stream) -> None:
        """One pass of a claimed stream, then its lease back with the next due time."""
        stream.health.running_since = time.monotonic()
        bound = log.bind(connector=stream.connector.name, model=stream.model)
        due: float | None = None
        seen: float | None = None
        try:
            state = self.runtime.store.state(stream.key, count=False)
            seen = state.requested_at
            due = self._skip_or_pass(stream, state, bound)
        except Exception as exc:  # a bug in one stream must not stop the rest
            if not isinstance(exc, ChangefeedError):
                bound.exception("stream_crashed")
            due = self._after_error(stream, exc, bound)
        finally:
            self._release(stream, due, seen, bound)

    def _timing(self, stream: Stream) -> Timing:
        # The settings of the moment: a reload during a pass applies at its end.
        return Timing.of(self.runtime.settings, stream.connector, stream.model)

    def _skip_or_pass(self, stream: Stream, state: StreamState, bound: Any) -> float:
        """Skip the pass (up to date), read its hints only, or run it (``hinted``); its
        next due time."""
        turn = StreamTurn(self.runtime, stream, state, bound, self._timing(stream).interval)
        due = turn.run()
        if turn.ran:
            self._succeeded(stream)
        if due is not None:
            return due
        due = next_due(
            Outcome.SUCCEEDED,
            self._timing(stream),
            time.time(),
            resync_pending=self._resync_pending(stream.key),
        )
        assert due is not None  # a success always sets the next due time
        return due

    def _resync_pending(self, key: StreamKey) -> bool:
        # The scan that finished was one resumed from before an operator's resync: the
        # full scan asked for comes next, not an interval later.
        try:
            return self.runtime.store.state(key, count=False).resync_requested_at is not None
        except ChangefeedError:
            return False  # the regular due time; the request stays in the store

    def _succeeded(self, stream: Stream) -> None:
        health = stream.health
        if health.failures:
            log.info(
                "stream_recovered",
                connector=stream.connector.name,
                model=stream.model,
                failures=health.failures,
                failing_s=round(time.monotonic() - (health.failing_since or 0.0), 1),
            )
        health.failures = 0
        health.last_error = None
        health.last_error_kind = None
        health.last_success = time.monotonic()

    def _after_error(self, stream: Stream, exc: Exception, bound: Any) -> float | None:
        """Log and count a pass that raised ``exc``; its next due time."""
        outcome = outcome_of(exc, stopping=self.runtime.stop.is_set())
        timing = self._timing(stream)
        failures = stream.health.failures + 1
        if outcome is Outcome.LEASE_LOST:
            metrics.LEASE_LOST.labels(self.runtime.store.owner, *stream.labels).inc()
            bound.warning("lease_lost", reason=str(exc))
        elif outcome is Outcome.HELD_ELSEWHERE:
            bound.debug("stream_held_elsewhere", reason=str(exc))
        elif outcome is Outcome.INTERRUPTED:
            # A ChangefeedError that shutdown cut short names its class; ScanInterrupted
            # says itself why.
            reason = str(exc) if isinstance(exc, ScanInterrupted) else _described(exc)
            bound.info("scan_interrupted", reason=reason)
        else:
            delay = failure_delay(outcome, timing, failures)
            assert delay is not None  # fatal, failed and crashed back off
            self._record_failure(stream, exc, delay)
        return next_due(outcome, timing, time.time(), failures=failures)

    def _record_failure(self, stream: Stream, exc: Exception, delay: float) -> None:
        """Count and report a failed pass that is retried in ``delay`` seconds."""
        health = stream.health
        health.failures += 1
        same = health.last_error is not None and health.last_error_kind == type(exc).__name__
        health.last_error = _described(exc)
        health.last_error_kind = type(exc).__name__
        if health.failures == 1:
            health.failing_since = time.monotonic()
        metrics.STREAM_UP.labels(*stream.labels).set(0)
        # One warning per outage and stream: the retries of the same failure are INFO.
        emit = log.info if same else log.warning
        emit(
            "scan_failed",
            connector=stream.connector.name,
            model=stream.model,
            error=health.last_error,
            failures=health.failures,
            retry_in_s=round(delay, 1),
        )
        try:
            self.runtime.store.record_error(stream.key, health.last_error, time.time())
        except ChangefeedError as store_exc:
            log.error("state_store_unavailable", error=str(store_exc))

    def _release(self, stream: Stream, due: float | None, seen: float | None, bound: Any) -> None:
        """Give the lease back with the next due time (None: as the store has it)."""
        key = stream.key
        with self._idle:  # a reload sees this pass either running or released
            if key in self._shortened:
                self._shortened.discard(key)
                due = shortened_due(due, time.time(), self._timing(stream).interval)
            try:
                self.runtime.store.release(key, next_due=due, seen_request=seen)
            except ChangefeedError as exc:
                # The lease expires by itself; the stream stays due for the next holder.
                bound.warning("lease_release_failed", error=str(exc))
            stream.health.running_since = None
            self._active.discard(key)
            self._futures.pop(key, None)
            self._idle.notify_all()
        now = time.time()
        self._wake(now if due is None else min(due, now + 1))

    # -- shutdown ------------------------------------------------------------------

    def stop(self) -> list[StreamKey]:
        """Take no more passes; the streams claimed and submitted but never started
        (their leases are the caller's to give back)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            cancelled = [k for k, f in self._futures.items() if f.cancelled()]
            for key in cancelled:
                self._active.discard(key)
                self._futures.pop(key, None)
        return cancelled

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no pass runs; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
