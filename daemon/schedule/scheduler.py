"""When passes run: one shared schedule in the state store, claimed fairly by replicas.

Each stream's next due time lives in the store (``due_at``): after a pass it is the
poll interval later (for ``trigger: sync`` the safety net), after a failure the
back-off, and a request (a Bindbee sync Done, a webhook hint, an operator's ``resync``)
makes it due at once. Every ``scheduler.claim_interval_seconds`` (and at once after a
request or when the next stream falls due) this replica's APScheduler job reads the due
streams and claims, by lease, at most its fair share (``fleet.claim_budget``) for its
free workers; passes run on a bounded pool. A lease is renewed by a heartbeat job and
checked by every write of the pass, so a stream is never scanned by two replicas at
once and a dead replica's streams are free after ``state.lease_seconds``. With SQLite
the same code runs in one process. Shutdown lets running passes reach a page boundary.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from daemon import log as daemon_log
from daemon.backoff import delay_after, exponential
from daemon.errors import (
    ChangefeedError,
    LeaseLost,
    ScanInterrupted,
    StreamFatalError,
    StreamHeldElsewhere,
)
from daemon.models import StreamKey, StreamState
from daemon.ops import metrics
from daemon.runtime import Runtime
from daemon.schedule.discovery import discovered
from daemon.schedule.fleet import WATCHER_LEASE, claim_budget
from daemon.schedule.sync_watcher import SyncFollower, SyncWatcher, WatchedStream
from daemon.settings import ConnectorSettings, Settings
from daemon.source.connectors import ConnectorDirectory, ConnectorListing
from daemon.stream import StreamPass

log = structlog.get_logger("daemon.schedule.scheduler")

RETRY_BASE_SECONDS = 2.0  # the first retry after a failed pass; doubles per failure
DEFAULT_MAX_WORKERS = 32  # scheduler.max_workers unset: one per stream, at most this
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
    health: StreamHealth = field(default_factory=StreamHealth)

    @property
    def key(self) -> StreamKey:
        return StreamKey(self.connector.key, self.model)

    @property
    def labels(self) -> tuple[str, str]:
        return (self.connector.name, self.model)


class Scheduler:
    """Claims due streams from the shared schedule and runs them in a bounded pool."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        store = runtime.store
        self.replica = store.owner
        self._lock = threading.RLock()
        self._streams: dict[StreamKey, _Stream] = {}
        self._discovered: list[ConnectorSettings] = []
        self._active: set[StreamKey] = set()
        self._futures: dict[StreamKey, Future[None]] = {}
        self._shortened: set[StreamKey] = set()  # running passes whose interval a reload cut
        self._idle = threading.Condition(self._lock)
        self._started_at = time.time()
        # Jobs only read the schedule and submit: the claim loop and the heartbeat each
        # get one thread, so a slow database read never delays a lease renewal.
        self._scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(1), "heartbeat": JobExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        self._set_streams(settings.connectors)
        # Unset: one per stream, at most 32; discovered connectors come later, so a
        # discovering process starts with the cap.
        self.workers = settings.scheduler.max_workers or (
            DEFAULT_MAX_WORKERS
            if settings.bindbee.discover_connectors
            else min(DEFAULT_MAX_WORKERS, max(1, len(self._streams)))
        )
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="stream")
        self.follower = SyncFollower(
            streams=self._watched,
            states=store.states,
            request=self.request,
            record_state=store.set_connector_state,
        )
        self.watcher: SyncWatcher | None = None
        self._store_failing = False

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

    def running(self, key: StreamKey) -> bool:
        """True while this process runs a pass of ``key``."""
        with self._lock:
            return key in self._active

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
        """Make the streams (connector x model) these; new ones get a row in the shared
        schedule (due at once unless another replica scanned them), gone ones are no
        longer claimed here (their state is kept)."""
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
                    log.info("stream_removed", stream=str(key))
            added = []
            for key, (connector, model) in wanted.items():
                current = self._streams.get(key)
                if current is None:
                    self._streams[key] = _Stream(connector, model)
                    added.append(key)
                else:
                    current.connector = connector  # a new token or name applies next pass
            for key in added:
                stream = self._streams[key]
                trigger = settings.models[stream.model].trigger
                metrics.STREAM_TRIGGER.labels(*stream.labels, trigger).set(self._interval(stream))
        if added and self._scheduler.running:
            self.runtime.store.ensure_streams(added)
            self._wake_at(time.time())
        return added

    # -- scheduling --------------------------------------------------------------

    def start(self, *, first_check_timeout: float = 10.0) -> None:
        """Join the fleet, start the sync watcher when a model follows syncs, then claim.

        The watcher's first read of the connectors list comes first (bounded by
        ``first_check_timeout``), so an initial sync already knows which Bindbee sync it
        covers and is not followed by a second scan for the same sync.
        """
        settings = self.runtime.settings
        store = self.runtime.store
        daemon_log.set_replica(self.replica)
        metrics.REPLICA_INFO.labels(self.replica).set(1)
        store.free_own_leases()
        self._heartbeat()
        with self._lock:
            keys = list(self._streams)
        store.ensure_streams(keys)
        self._scheduler.start()
        lease = settings.state.lease_seconds
        self._scheduler.add_job(
            self._heartbeat,
            "interval",
            seconds=lease / 3,
            id="heartbeat",
            name="renew leases",
            executor="heartbeat",
        )
        if any(m.trigger == "sync" for m in settings.models.values()) or (
            settings.bindbee.discover_connectors
        ):
            self.watcher = SyncWatcher(
                ConnectorDirectory.over(
                    self.runtime.client.transport,
                    timeout_seconds=min(settings.bindbee.timeout_seconds, 30.0),
                ),
                self.on_listing,
                interval_seconds=settings.bindbee.sync_check_interval_seconds,
                min_gap_seconds=settings.bindbee.sync_check_min_gap_seconds,
                stop=self.runtime.stop,
                leader=self._lead_watcher,
                read_when_not_leader=settings.bindbee.discover_connectors,
            )
            self.watcher.start()
            self.watcher.first_check.wait(first_check_timeout)
        self._scheduler.add_job(
            self._tick,
            "interval",
            seconds=settings.scheduler.claim_interval_seconds,
            id="claim",
            name="claim due streams",
            next_run_time=datetime.now(UTC),
        )
        log.info(
            "scheduler_started",
            streams=len(keys),
            workers=self.workers,
            lease_s=lease,
            first=[self._name(k) for k in keys[:20]],
        )

    def _name(self, key: StreamKey) -> str:
        stream = self._streams.get(key)
        return f"{stream.connector.name}/{stream.model}" if stream else str(key)

    def _interval(self, stream: _Stream) -> float:
        override = stream.connector.poll_interval_seconds.get(stream.model)
        models = self.runtime.settings.models
        return override if override is not None else models[stream.model].poll_interval_seconds

    def _next_regular(self, stream: _Stream, now: float) -> float:
        interval = self._interval(stream)
        jitter = min(self.runtime.settings.scheduler.jitter_seconds, interval / 2)
        return now + interval + (random.uniform(0, jitter) if jitter > 0 else 0.0)

    @property
    def alive(self) -> bool:
        """True while the scheduler thread runs."""
        return bool(self._scheduler.running)

    def _wake_at(self, when: float) -> None:
        """Run the claim loop no later than ``when`` (a request, a stream falling due)."""
        if self.runtime.stop.is_set():
            return
        job = self._scheduler.get_job("claim") if self._scheduler.running else None
        if job is None or job.next_run_time is None:
            return
        at = datetime.fromtimestamp(when, UTC)
        if at < job.next_run_time:
            # The job may be gone when shutdown races with this.
            with contextlib.suppress(Exception):
                self._scheduler.modify_job("claim", next_run_time=at)

    def request(self, key: StreamKey, sync: str | None = None) -> None:
        """Scan ``key`` as soon as a replica is free: a Bindbee sync (``sync`` is its start
        time) is Done, or a hint. A request during the stream's pass keeps it due, so
        exactly one pass follows."""
        self.runtime.store.request_scan(key, time.time(), sync=sync)
        self._wake_at(time.time())

    def trigger(self, key: StreamKey, reason: Reason = "interval") -> bool:
        """Ask for a pass of ``key`` now; False when it is unknown, or its connector is
        held by the sync watcher (relink needed, inactive)."""
        if self.runtime.stop.is_set():
            return False
        with self._lock:
            stream = self._streams.get(key)
        if stream is None:
            return False
        if self._blocked(stream, self.runtime.store.state(key).connector_state):
            metrics.PASSES_SKIPPED.labels(*stream.labels, "blocked").inc()
            return False
        self.request(key)
        return True

    def _blocked(self, stream: _Stream, connector_state: str | None) -> bool:
        trigger = self.runtime.settings.models[stream.model].trigger
        return trigger == "sync" and connector_state is not None

    def _tick(self) -> None:
        """Claim this replica's share of the due streams for its free workers."""
        store = self.runtime.store
        if self.runtime.stop.is_set():
            return
        now = time.time()
        try:
            view = store.fleet(now)
        except ChangefeedError as exc:
            if not self._store_failing:
                log.warning("state_store_unavailable", error=str(exc))
            self._store_failing = True
            return
        if self._store_failing:
            log.info("state_store_recovered")
            self._store_failing = False
        metrics.REPLICAS_LIVE.labels(self.replica).set(len(view.replicas))
        metrics.LEASES_HELD.labels(self.replica).set(
            sum(1 for lease in view.leases if lease.owner == self.replica)
        )
        with self._lock:
            known = dict(self._streams)
            free = self.workers - len(self._active)
            candidates = [d for d in view.due if d.key in known and d.key not in self._active]
        budget = claim_budget(view, self.replica, free, len(candidates))
        for due in candidates:
            if budget <= 0 or self.runtime.stop.is_set():
                break
            stream = known[due.key]
            try:
                if self._blocked(stream, due.connector_state):
                    metrics.PASSES_SKIPPED.labels(*stream.labels, "blocked").inc()
                    store.postpone(due.key, self._next_regular(stream, now))
                    continue
                if not store.claim(due.key, due_only=True):
                    continue  # another replica was quicker, or it is no longer due
            except ChangefeedError as exc:
                log.warning("state_store_unavailable", error=str(exc))
                return
            try:
                with self._lock:  # shutdown sees the stream and its future together
                    self._active.add(due.key)
                    self._futures[due.key] = self._pool.submit(self._run, stream)
            except RuntimeError:  # the pool is shut down: we are stopping
                with self._lock:
                    self._active.discard(due.key)
                with contextlib.suppress(ChangefeedError):
                    store.release(due.key)
                return
            budget -= 1
        if view.next_due is not None:
            self._wake_at(view.next_due)

    def _heartbeat(self) -> None:
        """Announce this replica and renew its leases (every third of a lease)."""
        with self._lock:
            busy = len(self._active)
        store_host = self.runtime.store.host
        try:
            lost = self.runtime.store.heartbeat(
                time.time(),
                workers=self.workers,
                busy=busy,
                host=store_host,
                pid=os.getpid(),
                started_at=self._started_at,
            )
        except ChangefeedError as exc:
            log.warning("heartbeat_failed", error=str(exc))
            return
        if lost:
            # The pass holding one is fenced at its next write; the watcher re-claims.
            log.warning(
                "leases_lost", leases=lost, lease_s=self.runtime.settings.state.lease_seconds
            )
        if WATCHER_LEASE in lost:
            metrics.SYNC_WATCHER_LEADER.labels(self.replica).set(0)
        watcher = self.watcher
        store = self.runtime.store
        if (
            watcher is not None
            and not watcher.running
            and not self.runtime.stop.is_set()
            and store.holds(WATCHER_LEASE)
        ):
            # A watcher thread that died must not keep the fleet's lease alive: give it up
            # so another replica reads the connectors list.
            log.error("sync_watcher_stopped", action="lease released")
            with contextlib.suppress(ChangefeedError):
                store.release_named(WATCHER_LEASE)
            metrics.SYNC_WATCHER_LEADER.labels(self.replica).set(0)

    def _lead_watcher(self) -> bool:
        """True while this replica is the fleet's one reader of the connectors list."""
        store = self.runtime.store
        was = store.holds(WATCHER_LEASE)
        try:
            leader = store.claim_named(WATCHER_LEASE)
        except ChangefeedError as exc:
            log.warning("state_store_unavailable", error=str(exc))
            return False
        if leader and not was:
            log.info("sync_watcher_leader")
        metrics.SYNC_WATCHER_LEADER.labels(self.replica).set(1 if leader else 0)
        return leader

    def _up_to_date(self, stream: _Stream, state: StreamState) -> float | None:
        """For a sync-triggered stream with nothing new to scan: when its safety net is due
        (the pass is skipped); None when the pass must run."""
        if self.runtime.settings.models[stream.model].trigger != "sync":
            return None
        if state.in_progress or state.resync_requested_at is not None:
            return None
        if state.last_full_scan_at is None:
            return None
        if state.requested_sync is not None and state.requested_sync != state.sync_bookmark:
            return None
        safety_net = state.last_full_scan_at + self._interval(stream)
        if safety_net <= time.time() or self.runtime.store.pending(stream.key):
            return None
        return safety_net

    def _run(self, stream: _Stream) -> None:
        health = stream.health
        health.running_since = time.monotonic()
        key = stream.key
        store = self.runtime.store
        settings = self.runtime.settings
        bound = log.bind(connector=stream.connector.name, model=stream.model)
        next_due: float | None = None
        seen: float | None = None
        try:
            model = settings.models[stream.model]
            state = store.state(key)
            seen = state.requested_at
            skip_until = self._up_to_date(stream, state)
            if skip_until is not None:
                metrics.PASSES_SKIPPED.labels(*stream.labels, "up_to_date").inc()
                next_due = skip_until
                return
            resync = state.resync_requested_at is not None
            if resync:
                bound.info("resync_started", requested_at=state.resync_requested_at)
            self._pass(stream).run(
                force_full=model.trigger == "sync" or resync,
                sync=state.requested_sync if model.trigger == "sync" else None,
            )
        except LeaseLost as exc:
            metrics.LEASE_LOST.labels(self.replica, *stream.labels).inc()
            bound.warning("lease_lost", reason=str(exc))
        except ScanInterrupted as exc:
            bound.info("scan_interrupted", reason=str(exc))
            next_due = time.time()  # due at once, for whichever replica runs next
        except StreamHeldElsewhere as exc:
            bound.debug("stream_held_elsewhere", reason=str(exc))
        except StreamFatalError as exc:
            next_due = self._failed(stream, exc, settings.scheduler.fatal_backoff_seconds)
        except ChangefeedError as exc:  # retriable, and anything not known to be fatal
            if self.runtime.stop.is_set():
                # Shutdown cut a send or a wait short: the outbox keeps the page.
                bound.info("scan_interrupted", reason=f"{type(exc).__name__}: {exc}")
                next_due = time.time()
            else:
                delay = self._retry_delay(stream, health.failures + 1)
                next_due = self._failed(stream, exc, delay)
        except Exception as exc:  # a bug in one stream must not stop the rest
            bound.exception("stream_crashed")
            next_due = self._failed(stream, exc, self._retry_delay(stream, health.failures + 1))
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
            # For trigger: sync the safety net counts from this scan, not the process start.
            next_due = self._next_regular(stream, time.time())
            if store.state(key).resync_requested_at is not None:
                # The scan finished was one resumed from before the request: the full scan
                # the operator asked for comes next, not an interval later.
                next_due = time.time()
        finally:
            with self._idle:  # a reload sees this pass either running or released
                if key in self._shortened:
                    # The interval was shortened during the pass: it counts from now.
                    self._shortened.discard(key)
                    if next_due is not None:
                        next_due = min(next_due, time.time() + self._interval(stream))
                try:
                    store.release(key, next_due=next_due, seen_request=seen)
                except ChangefeedError as exc:
                    # The lease expires by itself; the stream stays due for the next holder.
                    bound.warning("lease_release_failed", error=str(exc))
                health.running_since = None
                self._active.discard(key)
                self._futures.pop(key, None)
                self._idle.notify_all()
            self._wake_at(time.time() if next_due is None else min(next_due, time.time() + 1))

    def _retry_delay(self, stream: _Stream, failures: int) -> float:
        # Never later than the next regular poll: a retry must not wait longer than no failure.
        cap = min(self._interval(stream), self.runtime.settings.scheduler.retry_backoff_max_seconds)
        return delay_after(exponential(RETRY_BASE_SECONDS, cap), failures)

    def _failed(self, stream: _Stream, exc: BaseException, delay: float) -> float:
        """Count and report a failed pass; returns when the stream is due again."""
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
        return time.time() + delay

    # -- syncs, discovery, reload -----------------------------------------------

    def on_listing(self, listing: ConnectorListing, follow: bool = True) -> None:
        """A fresh connectors list: follow new connectors, drop gone ones, and (``follow``:
        the sync watcher's leader, or a hinted read) turn completed syncs into requests."""
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
        if follow:
            self.follower.apply(listing)

    def reload(self, settings: Settings) -> None:
        """New settings (SIGHUP): intervals, triggers and connectors apply to the next pass."""
        old = self.runtime.settings
        with self._lock:  # the intervals as they were, to tell which ones got shorter
            before = {key: self._interval(stream) for key, stream in self._streams.items()}
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
                (
                    "scheduler.claim_interval_seconds",
                    settings.scheduler.claim_interval_seconds
                    != old.scheduler.claim_interval_seconds,
                ),
                (
                    "scheduler.replica_id",
                    settings.scheduler.replica_id != old.scheduler.replica_id,
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
        self._set_streams(settings.connectors)
        with self._lock:
            streams = list(self._streams.values())
        now = time.time()
        for stream in streams:
            model = settings.models[stream.model]
            interval = self._interval(stream)
            metrics.STREAM_TRIGGER.labels(*stream.labels, model.trigger).set(interval)
            if interval < before.get(stream.key, interval):
                # A shorter interval counts from now, not from the next pass the old one
                # set; a longer one applies from the next pass.
                with self._lock:
                    if stream.key in self._active:
                        self._shortened.add(stream.key)  # its pass's end applies it
                try:
                    self.runtime.store.bring_forward(stream.key, now + interval)
                except ChangefeedError as exc:
                    log.warning("state_store_unavailable", error=str(exc))
        self._wake_at(now)
        log.info("config_reloaded", streams=len(streams))

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
        """Stop claiming, let running scans reach a page boundary, leave the fleet (its
        leases free at once for the other replicas); True if every scan stopped in time."""
        self.runtime.stop.set()
        if self._scheduler.running:
            # Stop claiming; the heartbeat keeps renewing the running passes' leases until
            # they reach a page boundary.
            with contextlib.suppress(Exception):
                self._scheduler.remove_job("claim")
        if self.watcher is not None:
            self.watcher.stop(timeout=1.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            # Claimed and submitted but never started: nothing to wait for.
            cancelled = [k for k, f in self._futures.items() if f.cancelled()]
            for key in cancelled:
                self._active.discard(key)
                self._futures.pop(key, None)
        for key in cancelled:
            with contextlib.suppress(ChangefeedError):
                self.runtime.store.release(key)
        deadline = time.monotonic() + timeout
        clean = True
        with self._idle:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    clean = False
                    break
                self._idle.wait(left)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if clean:
            # Leaving the fleet frees this replica's leases (the watcher's too) at once.
            with contextlib.suppress(ChangefeedError):
                self.runtime.store.retire()
        metrics.SYNC_WATCHER_LEADER.labels(self.replica).set(0)
        return clean


def _without_polling(settings: Settings) -> object:
    # bindbee fields a reload cannot apply (the client, limiter and watcher are built once).
    return settings.bindbee.model_dump(exclude={"discover_connectors", "discover_filter"})
