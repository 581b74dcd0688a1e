"""When passes run: timers, Bindbee syncs and webhook hints, one pass per stream at a time.

Each stream has an APScheduler job: for ``trigger: interval`` it polls every
``poll_interval_seconds`` (with jitter); for ``trigger: sync`` that interval is only the
safety net, and the sync watcher asks for a full scan as soon as the connector's sync is
Done. Jobs and requests only *trigger*; passes run on a bounded pool of workers. A
stream never runs twice at once: a sync request that arrives while its pass runs queues
exactly one trailing pass (``TriggerLatch``), a timer tick is counted as skipped.
Failed passes retry with the shared back-off; shutdown lets running passes reach a page
boundary.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from daemon.backoff import delay_after, exponential
from daemon.errors import ChangefeedError, ScanInterrupted, StreamFatalError, StreamHeldElsewhere
from daemon.models import StreamKey, StreamState
from daemon.ops import metrics
from daemon.runtime import Runtime
from daemon.schedule.discovery import discovered
from daemon.schedule.sync_rule import TriggerLatch
from daemon.schedule.sync_watcher import SyncFollower, SyncWatcher, WatchedStream
from daemon.settings import ConnectorSettings, Settings
from daemon.source.connectors import ConnectorDirectory, ConnectorListing
from daemon.stream import StreamPass

log = structlog.get_logger("daemon.schedule.scheduler")

RETRY_BASE_SECONDS = 2.0  # the first retry after a failed pass; doubles per failure
Reason = Literal["start", "interval", "sync", "retry"]


@dataclass(slots=True)
class StreamHealth:
    """In-memory health of one stream, for probes and logs."""

    failures: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None
    failing_since: float | None = None
    running_since: float | None = None
    last_success: float | None = None


@dataclass(slots=True)
class _Stream:
    connector: ConnectorSettings
    model: str
    latch: TriggerLatch = field(default_factory=TriggerLatch)
    health: StreamHealth = field(default_factory=StreamHealth)

    @property
    def key(self) -> StreamKey:
        return StreamKey(self.connector.key, self.model)

    @property
    def labels(self) -> tuple[str, str]:
        return (self.connector.name, self.model)


class Scheduler:
    """Runs every stream on its trigger in a bounded thread pool."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self._lock = threading.RLock()
        self._streams: dict[StreamKey, _Stream] = {}
        self._discovered: list[ConnectorSettings] = []
        self._pool = ThreadPoolExecutor(settings.scheduler.max_workers, thread_name_prefix="stream")
        # Jobs only trigger (a dictionary lookup and a submit): two threads are plenty, and
        # a job is never "already running" for long enough to be skipped with a warning.
        self._scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 4, "misfire_grace_time": None},
            timezone="UTC",
        )
        self._idle = threading.Condition()
        self._running = 0
        self.follower = SyncFollower(
            streams=self._watched,
            states=runtime.store.states,
            request=self.request,
            record_state=runtime.store.set_connector_state,
        )
        self.watcher: SyncWatcher | None = None
        self._set_streams(settings.connectors)

    # -- the streams -------------------------------------------------------------

    @property
    def passes(self) -> dict[StreamKey, StreamPass]:
        """A StreamPass per stream, built from the current settings."""
        with self._lock:
            return {key: self._pass(stream) for key, stream in self._streams.items()}

    @property
    def health(self) -> dict[StreamKey, StreamHealth]:
        """Each stream's in-memory health."""
        with self._lock:
            return {key: stream.health for key, stream in self._streams.items()}

    def _pass(self, stream: _Stream) -> StreamPass:
        runtime = self.runtime
        return StreamPass(
            runtime.settings,
            stream.connector,
            stream.model,
            source=runtime.client,
            store=runtime.store,
            sink=runtime.sink,
            stop=runtime.stop,
        )

    def _watched(self) -> list[WatchedStream]:
        settings = self.runtime.settings
        with self._lock:
            streams = list(self._streams.values())
        return [
            WatchedStream(
                s.key,
                s.connector.name,
                token=s.connector.token.get_secret_value() if s.connector.token else None,
                connector_id=s.connector.bindbee_id,
            )
            for s in streams
            if settings.models[s.model].trigger == "sync"
        ]

    def _set_streams(
        self, connectors: tuple[ConnectorSettings, ...] | list[ConnectorSettings]
    ) -> list[StreamKey]:
        """Make the streams (connector x model) these; new ones are scheduled, gone ones
        unscheduled (their state is kept)."""
        settings = self.runtime.settings
        wanted = {
            StreamKey(c.key, model): (c, model)
            for c in [*connectors, *self._discovered]
            for model in settings.models
        }
        with self._lock:
            for key in list(self._streams):
                if key not in wanted:
                    del self._streams[key]
                    with contextlib.suppress(Exception):
                        self._scheduler.remove_job(str(key))
                    log.info("stream_removed", stream=str(key))
            added = []
            for key, (connector, model) in wanted.items():
                current = self._streams.get(key)
                if current is None:
                    self._streams[key] = _Stream(connector, model)
                    added.append(key)
                else:
                    current.connector = connector  # a new token or name applies next pass
        if self._scheduler.running:
            for key in added:
                self._schedule(key, first=True)
        return added

    # -- scheduling --------------------------------------------------------------

    def start(self, *, first_check_timeout: float = 10.0) -> None:
        """Start the sync watcher when a model follows syncs, then schedule every stream.

        The watcher's first read of the connectors list comes first (bounded by
        ``first_check_timeout``), so an initial sync already knows which Bindbee sync it
        covers and is not followed by a second scan for the same sync.
        """
        self._scheduler.start()
        settings = self.runtime.settings
        if any(m.trigger == "sync" for m in settings.models.values()) or (
            settings.bindbee.discover_connectors
        ):
            self.watcher = SyncWatcher(
                ConnectorDirectory(
                    settings.bindbee.base_url,
                    settings.bindbee.api_key,
                    timeout_seconds=min(settings.bindbee.timeout_seconds, 30.0),
                    stop=self.runtime.stop,
                ),
                self.on_listing,
                interval_seconds=settings.bindbee.sync_check_interval_seconds,
                min_gap_seconds=settings.bindbee.sync_check_min_gap_seconds,
                stop=self.runtime.stop,
            )
            self.watcher.start()
            self.watcher.first_check.wait(first_check_timeout)
        for key in list(self._streams):
            self._schedule(key, first=True)
        log.info("scheduler_started", streams=[self._name(k) for k in self._streams])

    def _name(self, key: StreamKey) -> str:
        stream = self._streams.get(key)
        return f"{stream.connector.name}/{stream.model}" if stream else str(key)

    def _schedule(self, key: StreamKey, *, first: bool = False) -> None:
        settings = self.runtime.settings
        stream = self._streams[key]
        model = settings.models[stream.model]
        interval = self._interval(stream)
        metrics.STREAM_TRIGGER.labels(*stream.labels, model.trigger).set(interval)
        now = datetime.now().astimezone()
        next_run = now
        if model.trigger == "sync" and first:
            next_run = now + timedelta(seconds=self._safety_net_wait(key, interval))
        trigger = IntervalTrigger(
            seconds=interval, jitter=min(settings.scheduler.jitter_seconds, interval / 2)
        )
        self._scheduler.add_job(
            self.trigger,
            trigger,
            args=[key, "interval"],
            id=str(key),
            name=f"poll {self._name(key)}",
            next_run_time=next_run,
            replace_existing=True,
        )

    def _interval(self, stream: _Stream) -> float:
        override = stream.connector.poll_interval_seconds.get(stream.model)
        models = self.runtime.settings.models
        return override if override is not None else models[stream.model].poll_interval_seconds

    def _safety_net_wait(self, key: StreamKey, interval: float) -> float:
        """Seconds until a sync-triggered stream's first timer pass: 0 for a stream with
        no completed full scan (its initial sync) or a scan to resume."""
        try:
            state: StreamState = self.runtime.store.state(key)
        except ChangefeedError:
            return 0.0  # the pass itself will report the store's trouble
        if state.in_progress or state.last_full_scan_at is None:
            return 0.0
        return max(0.0, state.last_full_scan_at + interval - time.time())

    @property
    def alive(self) -> bool:
        """True while the scheduler thread runs."""
        return bool(self._scheduler.running)

    def request(self, key: StreamKey, sync: str | None = None) -> None:
        """A Bindbee sync of the stream's connector is Done: scan it now (or right after
        the pass running now)."""
        self.trigger(key, "sync")

    def trigger(self, key: StreamKey, reason: Reason = "interval") -> bool:
        """Start a pass of ``key`` unless one runs; True if one was started or queued."""
        if self.runtime.stop.is_set():
            return False
        with self._lock:
            stream = self._streams.get(key)
        if stream is None:
            return False
        blocked = self.follower.blocked(stream.connector.key)
        if blocked is not None:
            metrics.PASSES_SKIPPED.labels(*stream.labels, "blocked").inc()
            return False
        if reason == "interval" and stream.latch.running:
            # A timer tick during a pass adds nothing: the pass reads everything anyway.
            metrics.PASSES_SKIPPED.labels(*stream.labels, "already_running").inc()
            return False
        if not stream.latch.trigger():
            metrics.PASSES_SKIPPED.labels(*stream.labels, "queued").inc()
            return True
        try:
            self._pool.submit(self._run_until_settled, stream)
        except RuntimeError:  # the pool is shut down: we are stopping
            stream.latch.cancel_pending()
            stream.latch.finish()
            return False
        return True

    def _run_until_settled(self, stream: _Stream) -> None:
        trailing = False
        while True:
            if self.runtime.stop.is_set():
                stream.latch.cancel_pending()
            elif not trailing or self._still_needed(stream):
                self._run(stream)
            else:
                metrics.PASSES_SKIPPED.labels(*stream.labels, "up_to_date").inc()
            trailing = True
            if not stream.latch.finish():
                return

    def _still_needed(self, stream: _Stream) -> bool:
        """A queued trailing pass of a sync-triggered stream runs only when a sync newer
        than the one the last pass covered is Done (or a scan is left to resume)."""
        if self.runtime.settings.models[stream.model].trigger != "sync":
            return True
        known = self.follower.known_sync(stream.connector.key)
        try:
            state = self.runtime.store.state(stream.key)
        except ChangefeedError:
            return True  # let the pass meet (and report) the store's trouble
        return known is None or state.in_progress or state.sync_bookmark != known

    def _run(self, stream: _Stream) -> None:
        health = stream.health
        with self._idle:
            self._running += 1
        health.running_since = time.monotonic()
        key = stream.key
        settings = self.runtime.settings
        model = settings.models[stream.model]
        bound = log.bind(connector=stream.connector.name, model=stream.model)
        try:
            self._pass(stream).run(
                force_full=model.trigger == "sync",
                sync=self.follower.known_sync(stream.connector.key),
            )
        except ScanInterrupted as exc:
            bound.info("scan_interrupted", reason=str(exc))
        except StreamHeldElsewhere as exc:
            bound.debug("stream_held_elsewhere", reason=str(exc))
        except StreamFatalError as exc:
            self._failed(stream, exc, settings.scheduler.fatal_backoff_seconds)
        except ChangefeedError as exc:  # retriable, and anything not known to be fatal
            if self.runtime.stop.is_set():
                # Shutdown cut a send or a wait short: the outbox keeps the page.
                bound.info("scan_interrupted", reason=f"{type(exc).__name__}: {exc}")
            else:
                self._failed(stream, exc, self._retry_delay(stream, health.failures + 1))
        except Exception as exc:  # a bug in one stream must not stop the rest
            bound.exception("stream_crashed")
            self._failed(stream, exc, self._retry_delay(stream, health.failures + 1))
        else:
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
            if model.trigger == "sync":
                # The safety net counts from this scan, not from the process start.
                self._next_timer(key, self._interval(stream))
        finally:
            health.running_since = None
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _retry_delay(self, stream: _Stream, failures: int) -> float:
        # Never later than the next regular poll: a retry must not wait longer than no failure.
        cap = min(self._interval(stream), self.runtime.settings.scheduler.retry_backoff_max_seconds)
        return delay_after(exponential(RETRY_BASE_SECONDS, cap), failures)

    def _next_timer(self, key: StreamKey, delay: float) -> None:
        if self.runtime.stop.is_set():
            return
        next_run = datetime.now().astimezone() + timedelta(seconds=delay)
        # The job may be gone when shutdown (or a reload) races with this.
        with contextlib.suppress(Exception):
            self._scheduler.modify_job(str(key), next_run_time=next_run)

    def _failed(self, stream: _Stream, exc: BaseException, delay: float) -> None:
        health = stream.health
        health.failures += 1
        same = health.last_error is not None and health.last_error_kind == type(exc).__name__
        health.last_error = f"{type(exc).__name__}: {exc}"
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
        self._next_timer(stream.key, delay)

    # -- syncs, discovery, reload -----------------------------------------------

    def on_listing(self, listing: ConnectorListing) -> None:
        """A fresh connectors list: follow new connectors, drop gone ones, apply syncs."""
        settings = self.runtime.settings
        if settings.bindbee.discover_connectors:
            found = discovered(listing, settings.connectors, settings.bindbee.discover_filter)
            if [c.key for c in found] != [c.key for c in self._discovered] or any(
                a != b for a, b in zip(found, self._discovered, strict=False)
            ):
                self._discovered = found
                added = self._set_streams(settings.connectors)
                if added:
                    log.info("connectors_discovered", streams=[self._name(k) for k in added])
        self.follower.apply(listing)

    def reload(self, settings: Settings) -> None:
        """New settings (SIGHUP): intervals, triggers and connectors apply to the next pass."""
        old = self.runtime.settings
        self.runtime.settings = settings
        # What the process built once at start: changes there wait for a restart.
        needs_restart = [
            name
            for name, changed in (
                ("bindbee", _without_polling(settings) != _without_polling(old)),
                ("kafka", settings.kafka != old.kafka),
                ("state", settings.state != old.state),
                ("http", settings.http != old.http),
                ("webhook", settings.webhook != old.webhook),
                (
                    "scheduler.max_workers",
                    settings.scheduler.max_workers != old.scheduler.max_workers,
                ),
                ("the set of models", settings.models.keys() != old.models.keys()),
                (
                    "trigger: sync without a running sync watcher",
                    self.watcher is None
                    and any(m.trigger == "sync" for m in settings.models.values()),
                ),
            )
            if changed
        ]
        if needs_restart:
            log.warning("reload_partial", apply_after_restart=needs_restart)
        added = set(self._set_streams(settings.connectors))
        with self._lock:
            keys = [k for k in self._streams if k not in added]
        for key in keys:
            stream = self._streams.get(key)
            if stream is None:
                continue
            job = self._scheduler.get_job(str(key))
            interval = self._interval(stream)
            model = settings.models[stream.model]
            metrics.STREAM_TRIGGER.labels(*stream.labels, model.trigger).set(interval)
            if job is not None and getattr(job.trigger, "interval", None) != timedelta(
                seconds=interval
            ):
                self._scheduler.reschedule_job(
                    str(key),
                    trigger=IntervalTrigger(
                        seconds=interval,
                        jitter=min(settings.scheduler.jitter_seconds, interval / 2),
                    ),
                )
        log.info("config_reloaded", streams=len(self._streams))

    # -- probes and shutdown -----------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Alive: the scheduler runs and no scan has been stuck too long."""
        if not self.alive:
            return False, "scheduler is not running"
        bound = self.runtime.settings.scheduler.stuck_scan_seconds
        now = time.monotonic()
        for key, health in self.health.items():
            if health.running_since is not None and now - health.running_since > bound:
                return False, f"{key}: scan running for {now - health.running_since:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready: the state store answers and Kafka metadata is reachable."""
        try:
            self.runtime.store.ping()
            self.runtime.sink.check_ready()
        except ChangefeedError as exc:
            return False, str(exc)
        return True, "ok"

    def shutdown(self, timeout: float) -> bool:
        """Stop scheduling, let running scans reach a page boundary; True if all did in time."""
        self.runtime.stop.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop(timeout=1.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


def _without_polling(settings: Settings) -> object:
    # bindbee fields a reload cannot apply (the client, limiter and watcher are built once).
    return settings.bindbee.model_dump(exclude={"discover_connectors", "discover_filter"})
