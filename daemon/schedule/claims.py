"""This replica's side of the shared schedule: claiming due streams, renewing leases,
leading the sync watcher.

``tick`` (the claim loop) reads the fleet's view of the schedule and claims, by lease, at
most this replica's fair share (``fleet.claim_budget``) of the due streams for its free
workers. ``heartbeat`` announces the replica and renews its leases every third of a
lease; a lease it lost fences the pass holding it at its next write. ``lead_watcher``
holds the one fleet-wide lease on reading Bindbee's connectors list.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

import structlog

from daemon.errors import ChangefeedError
from daemon.models import DueStream, FleetView
from daemon.ops import metrics
from daemon.runtime import Runtime
from daemon.schedule.fleet import WATCHER_LEASE, claim_budget
from daemon.schedule.registry import Stream, StreamRegistry
from daemon.schedule.rules import Timing, blocked, next_regular
from daemon.schedule.runner import PassRunner
from daemon.schedule.sync_watcher import SyncWatcher

log = structlog.get_logger("daemon.schedule.claims")


class Claims:
    """Claims, heartbeat and watcher leadership for one replica (``store.owner``).

    ``wake(when)`` asks the claim loop to run again no later than ``when``; ``watcher()``
    is the sync watcher once started (None before, or without one).
    """

    def __init__(
        self,
        runtime: Runtime,
        registry: StreamRegistry,
        runner: PassRunner,
        lock: threading.RLock,
        wake: Callable[[float], None],
        watcher: Callable[[], SyncWatcher | None],
    ) -> None:
        self.runtime = runtime
        self.replica = runtime.store.owner
        self._registry = registry
        self._runner = runner
        self._lock = lock
        self._wake = wake
        self._watcher = watcher
        self._started_at = time.time()
        self._store_failing = False

    # -- the claim loop --------------------------------------------------------------

    def tick(self) -> None:
        """Claim this replica's share of the due streams for its free workers."""
        if self.runtime.stop.is_set():
            return
        now = time.time()
        view = self._fleet(now)
        if view is None:
            return
        with self._lock:  # the streams and the running passes, seen together
            known = self._registry.snapshot()
            free = self._runner.workers - self._runner.busy()
            candidates = [d for d in view.due if d.key in known and not self._runner.running(d.key)]
        budget = claim_budget(view, self.replica, free, len(candidates))
        for due in candidates:
            if budget <= 0 or self.runtime.stop.is_set():
                break
            claimed = self._claim(known[due.key], due, now)
            if claimed is None:
                return  # the store failed, or we are stopping
            budget -= claimed
        if view.next_due is not None:
            self._wake(view.next_due)

    def _fleet(self, now: float) -> FleetView | None:
        """The fleet's view of the schedule, or None while the store does not answer
        (reported once per outage)."""
        try:
            view = self.runtime.store.fleet(now)
        except ChangefeedError as exc:
            if not self._store_failing:
                log.warning("state_store_unavailable", error=str(exc))
            self._store_failing = True
            return None
        if self._store_failing:
            log.info("state_store_recovered")
            self._store_failing = False
        metrics.REPLICAS_LIVE.labels(self.replica).set(len(view.replicas))
        metrics.LEASES_HELD.labels(self.replica).set(
            sum(1 for lease in view.leases if lease.owner == self.replica)
        )
        return view

    def _claim(self, stream: Stream, due: DueStream, now: float) -> int | None:
        """Claim ``due`` and submit its pass: 1 when it runs here, 0 when it does not
        (held by the sync watcher, or another replica was quicker), None to stop
        claiming (the store failed, or the pool is shut down)."""
        store = self.runtime.store
        settings = self.runtime.settings
        try:
            if blocked(settings.models[stream.model].trigger, due.connector_state):
                metrics.PASSES_SKIPPED.labels(*stream.labels, "blocked").inc()
                timing = Timing.of(settings, stream.connector, stream.model)
                store.postpone(due.key, next_regular(timing, now))
                return 0
            if not store.claim(due.key, due_only=True):
                return 0  # another replica was quicker, or it is no longer due
        except ChangefeedError as exc:
            log.warning("state_store_unavailable", error=str(exc))
            return None
        if not self._runner.submit(stream):
            with contextlib.suppress(ChangefeedError):
                store.release(due.key)
            return None
        return 1

    # -- leases ----------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Announce this replica and renew its leases (every third of a lease)."""
        store = self.runtime.store
        try:
            lost = store.heartbeat(
                time.time(),
                workers=self._runner.workers,
                busy=self._runner.busy(),
                host=store.host,
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
        self._drop_dead_watcher()

    def _drop_dead_watcher(self) -> None:
        # A watcher thread that died must not keep the fleet's lease alive: give it up so
        # another replica reads the connectors list.
        watcher = self._watcher()
        store = self.runtime.store
        if (
            watcher is not None
            and not watcher.running
            and not self.runtime.stop.is_set()
            and store.holds(WATCHER_LEASE)
        ):
            log.error("sync_watcher_stopped", action="lease released")
            with contextlib.suppress(ChangefeedError):
                store.release_named(WATCHER_LEASE)
            metrics.SYNC_WATCHER_LEADER.labels(self.replica).set(0)

    def lead_watcher(self) -> bool:
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
