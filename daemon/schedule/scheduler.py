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

This module ties the parts to APScheduler and to the process's life (start, reload,
probes, shutdown):

    registry.py   the streams this process knows: configured, discovered, reloaded
    claims.py     the claim loop, the heartbeat, the sync watcher's leadership
    runner.py     one pass on the pool: outcome -> next due time, lease given back
    hinted.py     what a claimed pass does: skip, read its hints, count its sync, walk
    intake.py     webhook hints in: stored before the 200, their streams made due
    rules.py      the pure rules those apply (next due time, intervals, jitter, ...)
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime
from typing import Literal

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from daemon import log as daemon_log
from daemon.errors import ChangefeedError
from daemon.models import StreamKey
from daemon.ops import metrics
from daemon.runtime import Runtime
from daemon.schedule.claims import Claims
from daemon.schedule.intake import HintIntake
from daemon.schedule.registry import StreamHealth, StreamRegistry, restart_needed
from daemon.schedule.rules import blocked, worker_count
from daemon.schedule.runner import PassRunner, build_pass
from daemon.schedule.sync_watcher import SyncFollower, SyncWatcher
from daemon.settings import Settings
from daemon.source.connectors import ConnectorDirectory, ConnectorListing
from daemon.stream import StreamPass

__all__ = ["Reason", "Scheduler", "StreamHealth"]

log = structlog.get_logger("daemon.schedule.scheduler")

Reason = Literal["start", "interval", "sync", "retry"]


class Scheduler:
    """Claims due streams from the shared schedule and runs them in a bounded pool."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        store = runtime.store
        self.replica = store.owner
        lock = threading.RLock()
        self._registry = StreamRegistry(lock)
        self._registry.apply(settings)
        self.workers = worker_count(
            settings.scheduler.max_workers,
            settings.bindbee.discover_connectors,
            len(self._registry),
        )
        self._runner = PassRunner(runtime, self.workers, lock, self._wake_at)
        self.watcher: SyncWatcher | None = None
        self._claims = Claims(
            runtime, self._registry, self._runner, lock, self._wake_at, lambda: self.watcher
        )
        # Jobs only read the schedule and submit: the claim loop and the heartbeat each
        # get one thread, so a slow database read never delays a lease renewal.
        self._scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(1), "heartbeat": JobExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        self.hints = HintIntake(runtime, self._registry.snapshot, self._wake_at, self._poke)
        self.follower = SyncFollower(
            streams=lambda: self._registry.watched(self.runtime.settings),
            states=store.states,
            request=self.request,
            record_state=store.set_connector_state,
        )

    # -- the streams -------------------------------------------------------------

    @property
    def passes(self) -> dict[StreamKey, StreamPass]:
        """A StreamPass per stream, built from the current settings."""
        return {
            key: build_pass(self.runtime, stream)
            for key, stream in self._registry.snapshot().items()
        }

    @property
    def health(self) -> dict[StreamKey, StreamHealth]:
        """Each stream's in-memory health."""
        return {key: stream.health for key, stream in self._registry.snapshot().items()}

    def running(self, key: StreamKey) -> bool:
        """True while this process runs a pass of ``key``."""
        return self._runner.running(key)

    @property
    def alive(self) -> bool:
        """True while the scheduler thread runs."""
        return bool(self._scheduler.running)

    def _added(self, keys: list[StreamKey]) -> None:
        # New streams get a row in the shared schedule: due at once unless another
        # replica scanned them. Before start, ``start`` does it for every stream.
        if keys and self._scheduler.running:
            self.runtime.store.ensure_streams(keys)
            self._wake_at(time.time())

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
        self._claims.heartbeat()
        keys = list(self._registry.snapshot())
        store.ensure_streams(keys)
        self._scheduler.start()
        lease = settings.state.lease_seconds
        self._scheduler.add_job(
            self._claims.heartbeat,
            "interval",
            seconds=lease / 3,
            id="heartbeat",
            name="renew leases",
            executor="heartbeat",
        )
        # With webhooks the list is read too: it gives each configured connector's
        # Bindbee id, by which hints name connectors.
        if (
            any(m.trigger == "sync" for m in settings.models.values())
            or settings.bindbee.discover_connectors
            or settings.webhook.enabled
        ):
            self.watcher = self._start_watcher(settings)
            self.watcher.first_check.wait(first_check_timeout)
        self._scheduler.add_job(
            self._claims.tick,
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
            first=[self._registry.name(k) for k in keys[:20]],
        )

    def _start_watcher(self, settings: Settings) -> SyncWatcher:
        watcher = SyncWatcher(
            ConnectorDirectory.over(
                self.runtime.client.transport,
                timeout_seconds=min(settings.bindbee.timeout_seconds, 30.0),
            ),
            self.on_listing,
            interval_seconds=settings.bindbee.sync_check_interval_seconds,
            min_gap_seconds=settings.bindbee.sync_check_min_gap_seconds,
            stop=self.runtime.stop,
            leader=self._claims.lead_watcher,
            read_when_not_leader=settings.bindbee.discover_connectors,
        )
        watcher.start()
        return watcher

    def _poke(self) -> None:
        if self.watcher is not None:
            self.watcher.poke()

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
        stream = self._registry.get(key)
        if stream is None:
            return False
        trigger = self.runtime.settings.models[stream.model].trigger
        if blocked(trigger, self.runtime.store.state(key, count=False).connector_state):
            metrics.PASSES_SKIPPED.labels(*stream.labels, "blocked").inc()
            return False
        self.request(key)
        return True

    # -- syncs, discovery, reload -----------------------------------------------

    def on_listing(self, listing: ConnectorListing, follow: bool = True) -> None:
        """A fresh connectors list: follow new connectors, drop gone ones, and (``follow``:
        the sync watcher's leader, or a hinted read) turn completed syncs into requests."""
        settings = self.runtime.settings
        if settings.bindbee.discover_connectors:
            self._added(self._registry.discover(listing, settings))
        connectors = [s.connector for s in self._registry.snapshot().values()]
        self.runtime.connector_ids.learn(listing, connectors)
        self.hints.learned()
        if follow:
            self.follower.apply(listing)

    def reload(self, settings: Settings) -> None:
        """New settings (SIGHUP): intervals, triggers and connectors apply to the next pass."""
        old = self.runtime.settings
        # The intervals as they were, to tell which ones got shorter.
        before = {key: s.interval(old) for key, s in self._registry.snapshot().items()}
        self.runtime.settings = settings
        needs_restart = restart_needed(old, settings, has_watcher=self.watcher is not None)
        if needs_restart:
            log.warning("reload_partial", apply_after_restart=needs_restart)
        self._added(self._registry.apply(settings))
        streams = list(self._registry.snapshot().values())
        now = time.time()
        for stream in streams:
            interval = stream.interval(settings)
            trigger = settings.models[stream.model].trigger
            metrics.STREAM_TRIGGER.labels(*stream.labels, trigger).set(interval)
            if interval < before.get(stream.key, interval):
                # A shorter interval counts from now, not from the next pass the old one
                # set; a longer one applies from the next pass.
                self._runner.shorten(stream.key)  # a running pass's end applies it
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
        for key in self._runner.stop():  # claimed and submitted but never started
            with contextlib.suppress(ChangefeedError):
                self.runtime.store.release(key)
        clean = self._runner.wait_idle(timeout)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if clean:
            # Leaving the fleet frees this replica's leases (the watcher's too) at once.
            with contextlib.suppress(ChangefeedError):
                self.runtime.store.retire()
        metrics.SYNC_WATCHER_LEADER.labels(self.replica).set(0)
        return clean
