"""Bindbee's sync cycle: when the data behind the API changes, and what says so.

Bindbee serves what the last sync of a connector stored. Two modes:

- ``live``: a ``/_sim`` change is visible at once and counts as an instant
  sync (``last_sync_start_time`` moves, ``sync_status`` stays ``Done``);
- ``scheduled``: changes are staged (``staging.py``) and a sync applies them
  when it completes, stamping ``modified_at`` with its completion time.

A sync (``start``, or every ``interval_seconds``) shows ``Syncing`` for
``duration_seconds``, then ends ``Done`` (staged changes applied; with
``touches_all`` every record's ``modified_at`` moves too) or ``Failed``
(nothing applied, the changes stay staged). Each step can send a webhook.
Sync ends and interval syncs run on one timer thread, started on first need;
every step runs under the state lock.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bindbee_sim.connectors import Connector
from bindbee_sim.data import Dataset
from bindbee_sim.ids import UuidV7Source, stable_key, uuid7
from bindbee_sim.times import MonotonicUtc, format_us
from bindbee_sim.webhooks import WebhookSender

SyncMode = Literal["live", "scheduled"]
SYNC_MODES: tuple[str, ...] = ("live", "scheduled")
_HISTORY = 1000  # syncs remembered for GET /_sim/syncs and wait()
log = logging.getLogger("bindbee_sim.syncs")


class Refused(Exception):
    """The request conflicts with the current state (a 409): a sync is running, the
    connector is inactive, a name or token is taken."""


@dataclass
class SyncSettings:
    """How syncs behave; changeable at run time through ``/_sim/config``."""

    mode: str = "live"
    interval_seconds: float = 0.0
    """Automatic syncs every this many seconds per connector; 0: on demand only."""
    duration_seconds: float = 1.0
    """How long ``sync_status`` stays ``Syncing``."""
    touches_all: bool = False
    """Every sync rewrites every record's ``modified_at`` (content unchanged)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting."""
        if self.mode not in SYNC_MODES:
            raise ValueError(f"sync mode must be one of {list(SYNC_MODES)}")
        if self.interval_seconds < 0:
            raise ValueError("sync interval seconds must be >= 0")
        if self.duration_seconds < 0:
            raise ValueError("sync duration seconds must be >= 0")


@dataclass
class Sync:
    """One sync of one connector."""

    sync_id: str
    connector: str
    sync_type: str
    """``MANUAL`` (asked for) or ``AUTOMATED`` (interval, or a live-mode change)."""
    started_at: str
    fail: bool
    staged: int
    """Staged changes the sync took when it started."""
    status: str = "Syncing"
    finished_at: str | None = None
    applied: int = 0
    """Records it created, changed or deleted."""
    touched_all: bool = False
    apply_seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The sync as ``/_sim/syncs`` shows it."""
        return asdict(self)


class _Timeline:
    """Callbacks due at monotonic times, run under ``cond``'s lock by one daemon thread."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def at(self, due: float, action: Callable[[], None]) -> None:
        """Run ``action`` at monotonic time ``due`` (callers hold the lock)."""
        heapq.heappush(self._heap, (due, next(self._seq), action))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bindbee-sim-syncs", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def clear(self) -> None:
        """Forget every pending callback (callers hold the lock)."""
        self._heap.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Drop pending callbacks and stop the thread (a later ``at`` starts a new one)."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._thread = None
            self._closed = False

    def _run(self) -> None:
        with self._cond:
            while not self._closed and self._thread is threading.current_thread():
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, action = heapq.heappop(self._heap)
                    try:
                        action()
                    except Exception:  # one broken step must not stop every later sync
                        log.exception("simulated sync step failed")
                    continue
                self._cond.wait(None if not self._heap else self._heap[0][0] - now)


class SyncCycle:
    """Runs syncs over the datasets and reports them (callers hold ``lock``)."""

    def __init__(
        self,
        lock: threading.RLock,
        datasets: Mapping[str, Dataset],
        settings: SyncSettings,
        clock: MonotonicUtc,
        webhooks: WebhookSender | None = None,
        org_name: str = "Simulated Org",
        seed: int = 1,
    ) -> None:
        self.lock = lock
        self.cond = threading.Condition(lock)
        self.datasets = datasets
        self.settings = settings
        self.clock = clock
        self.webhooks = webhooks
        self.org_name = org_name
        key = stable_key(seed, "webhook")
        self.webhook_id = uuid7(1_700_000_000_000, key >> 52, key)
        self._ids = UuidV7Source()
        self._running: dict[str, Sync] = {}
        self._history: OrderedDict[str, Sync] = OrderedDict()
        self._timeline = _Timeline(self.cond)
        self._generation = 0
        with lock:
            self.arm_all()

    # ---- control -----------------------------------------------------------------

    def start(self, name: str, fail: bool = False, sync_type: str = "MANUAL") -> Sync:
        """Begin a sync of connector ``name``; raises ``Refused``."""
        ds = self.datasets[name]
        conn = ds.connector
        if name in self._running:
            raise Refused(f"a sync of {name!r} is already running")
        if not conn.is_active:
            raise Refused(f"connector {name!r} is not active")
        now = self.clock.now_us()
        sync = self._remember(
            Sync(self._ids.new(), name, sync_type, format_us(now), fail, staged=ds.staging.take())
        )
        self._running[name] = sync
        conn.sync_status = "Syncing"
        conn.last_sync_start_us = now
        self._emit("connector_sync_started", conn, sync, self._status_data(conn, "Syncing"))
        due = time.monotonic() + self.settings.duration_seconds
        self._timeline.at(due, lambda: self._finish(name, sync))
        return sync

    def wait(self, sync_id: str, timeout: float) -> Sync:
        """Block until the sync has ended (or ``timeout``); returns it either way."""
        with self.cond:
            sync = self._history[sync_id]
            self.cond.wait_for(lambda: sync.status != "Syncing", timeout)
            return sync

    def instant(self, name: str, affected: list[str]) -> None:
        """A live-mode change of ``affected`` records counts as a completed sync."""
        ds = self.datasets[name]
        if name in self._running:
            return  # the running sync reports its own end
        now = self.clock.now_us()
        conn = ds.connector
        sync = self._remember(
            Sync(
                self._ids.new(),
                name,
                "AUTOMATED",
                format_us(now),
                False,
                staged=0,
                status="Done",
                finished_at=format_us(now),
                applied=len(affected),
            )
        )
        conn.last_sync_start_us = now
        conn.sync_status = "Done"
        if self.settings.touches_all:
            ds.touch(now)
            sync.touched_all = True
        self._emit("connector_sync_started", conn, sync, self._status_data(conn, "Syncing"))
        self._emit("connector_synced", conn, sync, self._status_data(conn, "Done"))
        if affected:
            self._emit("connector_data_modified", conn, sync, list(affected))

    def send_event(self, name: str, event: str, data: Any, sync_id: str | None = None) -> int:
        """Send one event for connector ``name`` in Bindbee's envelope, outside any sync
        cycle (a remembered ``sync_id`` names that sync; otherwise a new AUTOMATED one).
        Returns the delivery id; raises ``Refused`` without a webhook URL."""
        if self.webhooks is None:
            raise Refused("no webhook URL is configured")
        conn = self.datasets[name].connector
        sync = self._history.get(sync_id) if sync_id is not None else None
        if sync is None:
            now = format_us(self.clock.now_us())
            sync = Sync(sync_id or self._ids.new(), name, "AUTOMATED", now, False, staged=0)
        return self._emit(event, conn, sync, data)

    def history(self) -> list[dict[str, Any]]:
        """The syncs remembered, oldest first."""
        return [s.as_dict() for s in self._history.values()]

    def running(self, name: str) -> bool:
        """Whether connector ``name`` is syncing."""
        return name in self._running

    def reset(self) -> None:
        """Forget running syncs and history; re-arm interval syncs."""
        self._running.clear()
        self._history.clear()
        self._timeline.clear()
        self.rearm()
        self.cond.notify_all()

    def rearm(self) -> None:
        """Restart every connector's interval chain (after the interval changed)."""
        self._generation += 1
        self.arm_all()

    def close(self) -> None:
        """Stop the timer thread (running syncs never end)."""
        self._timeline.close()

    # ---- interval syncs ----------------------------------------------------------

    def arm_all(self) -> None:
        """Schedule interval syncs of every connector (when an interval is set)."""
        for name in self.datasets:
            self.arm(name)

    def arm(self, name: str) -> None:
        """Schedule the next interval sync of ``name`` one interval from now."""
        interval = self.settings.interval_seconds
        conn = self.datasets[name].connector
        if interval <= 0:
            conn.next_sync_start_us = None
            return
        self._arm_at(name, time.monotonic() + interval, self._generation)

    def _arm_at(self, name: str, due: float, generation: int) -> None:
        conn = self.datasets[name].connector
        conn.next_sync_start_us = self.clock.now_us() + int((due - time.monotonic()) * 1e6)
        self._timeline.at(due, lambda: self._due(name, due, generation))

    def _due(self, name: str, due: float, generation: int) -> None:
        if generation != self._generation or name not in self.datasets:
            return
        interval = self.settings.interval_seconds
        if interval <= 0:
            self.datasets[name].connector.next_sync_start_us = None
            return
        with contextlib.suppress(Refused):  # inactive, or still syncing: skip this slot
            self.start(name, sync_type="AUTOMATED")
        self._arm_at(name, max(due + interval, time.monotonic()), generation)

    # ---- the end of a sync ---------------------------------------------------------

    def _finish(self, name: str, sync: Sync) -> None:
        if self._running.get(name) is not sync:
            return  # forgotten by a reset
        del self._running[name]
        ds = self.datasets[name]
        conn = ds.connector
        done = self.clock.now_us()
        sync.finished_at = format_us(done)
        error = (
            "simulated failure"
            if sync.fail
            else None
            if conn.status == "COMPLETE"
            else f"connector status is {conn.status}"
        )
        if error is not None:
            ds.staging.give_back()
            sync.status = conn.sync_status = "Failed"
            sync.error = error
            self._emit(
                "connector_sync_error",
                conn,
                sync,
                self._status_data(conn, "Failed"),
                {"failed_at": sync.finished_at, "message": "Sync failed", "detail": error},
            )
        else:
            began = time.perf_counter()
            affected = ds.staging.apply_taken(done)
            if self.settings.touches_all:
                ds.touch(done)
                sync.touched_all = True
            sync.apply_seconds = round(time.perf_counter() - began, 6)
            ids = [record_id for per_model in affected.values() for record_id in per_model]
            sync.applied = len(ids)
            sync.status = conn.sync_status = "Done"
            self._emit("connector_synced", conn, sync, self._status_data(conn, "Done"))
            if ids:
                self._emit("connector_data_modified", conn, sync, ids)
        self.cond.notify_all()

    # ---- helpers -------------------------------------------------------------------

    def _remember(self, sync: Sync) -> Sync:
        self._history[sync.sync_id] = sync
        while len(self._history) > _HISTORY:
            oldest = next(iter(self._history))
            if self._history[oldest].status == "Syncing":
                break  # still awaited: keep it
            del self._history[oldest]
        return sync

    def _status_data(self, conn: Connector, display_status: str) -> dict[str, Any]:
        return {
            "id": conn.id,
            "integration_name": conn.integration_name,
            "category": "LMS",
            "display_status": display_status,
            "last_sync_start_time": format_us(conn.last_sync_start_us or 0),
        }

    def _emit(
        self,
        event: str,
        conn: Connector,
        sync: Sync,
        data: Any,
        error: dict[str, Any] | None = None,
    ) -> int:
        if self.webhooks is None:
            return 0
        envelope: dict[str, Any] = {
            "webhook": {
                "webhook_id": self.webhook_id,
                "url": self.webhooks.policy.url,
                "event": event,
            },
            "connector": conn.webhook_view(self.org_name),
            "data": data,
            "sync": {
                "sync_id": sync.sync_id,
                "sync_type": sync.sync_type,
                "sync_name": f"{conn.name} {sync.sync_type.lower()} sync",
            },
        }
        if error is not None:
            envelope["error"] = error
        return self.webhooks.send(envelope, conn.name)
