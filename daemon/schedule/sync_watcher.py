"""The sync watcher: reads Bindbee's connectors list and asks for a full scan after a sync.

Bindbee's data changes only when it syncs a connector, so a sync-triggered stream spends
data requests only when its connector shows ``sync_status: Done`` with a
``last_sync_start_time`` other than the stream's sync bookmark (``sync_rule.decide``).
The list is read every ``bindbee.sync_check_interval_seconds`` and whenever a webhook
hints at a sync (``poke``); hints are only hints: the decision always comes from the
list, and reads are at least ``min_gap_seconds`` apart, so a flood of (forged or
replayed) deliveries costs a few list requests, never a data scan.

The watcher keeps no state of its own that matters after a restart: bookmarks live in
the state store and move only when a scan completed and its events are on Kafka.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from daemon.errors import ChangefeedError, ScanInterrupted
from daemon.models import StreamKey, StreamState
from daemon.ops import metrics
from daemon.schedule.sync_rule import Action, decide
from daemon.source.connectors import ConnectorDirectory, ConnectorInfo, ConnectorListing

log = structlog.get_logger("daemon.schedule.sync_watcher")

# changefeed_connector_status values, for alert rules: 1 = fine.
CONNECTOR_STATUS_VALUES = {"ok": 1, "syncing": 1, "failed": 0, "blocked": 0, "missing": 0}


@dataclass(frozen=True, slots=True)
class WatchedStream:
    """A sync-triggered stream and how to find its connector in the list."""

    key: StreamKey
    display: str  # the connector's display name (metrics, logs)
    token: str | None = None  # matched by connector_token (configured connectors)
    connector_id: str | None = None  # matched by Bindbee id (discovered connectors)


class SyncFollower:
    """Turns one connectors listing into scan requests for the streams it concerns.

    ``request(key, sync_start_time)`` must start (or queue) a full scan of the stream;
    ``known_sync(connector)`` afterwards tells that scan which sync it covers.
    """

    def __init__(
        self,
        *,
        streams: Callable[[], Sequence[WatchedStream]],
        states: Callable[[], Sequence[StreamState]],
        request: Callable[[StreamKey, str], None],
        record_state: Callable[[StreamKey, str | None], None] | None = None,
    ) -> None:
        self._streams = streams
        self._states = states
        self._request = request
        self._record_state = record_state
        self._lock = threading.Lock()
        self._done: dict[str, str] = {}  # connector key -> last Done sync's start time
        self._blocked: dict[str, str] = {}  # connector key -> why no scans
        self._failed_seen: set[tuple[str, str | None]] = set()
        self._last_action: dict[StreamKey, Action] = {}

    def known_sync(self, connector: str) -> str | None:
        """The start time of the newest sync seen Done for this connector, if any."""
        with self._lock:
            return self._done.get(connector)

    def blocked(self, connector: str) -> str | None:
        """Why the connector gets no scans (relink needed, inactive), or None."""
        with self._lock:
            return self._blocked.get(connector)

    def blocked_connectors(self) -> dict[str, str]:
        """Every connector that gets no scans now, with the reason."""
        with self._lock:
            return dict(self._blocked)

    def apply(self, listing: ConnectorListing) -> list[StreamKey]:
        """Decide for every watched stream; return the streams asked to scan."""
        states = {s.key: s for s in self._states()}
        requested: list[StreamKey] = []
        for stream in self._streams():
            info = _find(listing, stream)
            state = states.get(stream.key)
            bookmark = state.sync_bookmark if state is not None else None
            decision = decide(info, bookmark)
            self._note(stream, info, decision.action, decision.sync_start_time, decision.reason)
            # Kept in the store too, so `status` (another process) can say why.
            held = decision.reason if decision.action is Action.BLOCKED else None
            current = state.connector_state if state is not None else None
            if self._record_state is not None and held != current:
                self._record_state(stream.key, held)
            if not decision.should_scan:
                continue
            assert decision.sync_start_time is not None
            if (
                state is not None
                and state.in_progress
                and state.scan_kind == "full"
                and state.scan_sync == decision.sync_start_time
            ):
                continue  # the scan running now already covers this sync
            requested.append(stream.key)
            log.info(
                "sync_scan_requested",
                connector=stream.display,
                model=stream.key.model,
                sync_start_time=decision.sync_start_time,
                bookmark=bookmark,
            )
            self._request(stream.key, decision.sync_start_time)
        return requested

    def _note(
        self,
        stream: WatchedStream,
        info: ConnectorInfo | None,
        action: Action,
        start: str | None,
        reason: str,
    ) -> None:
        connector = stream.key.connector
        metrics.SYNC_DECISIONS.labels(stream.display, stream.key.model, action.value).inc()
        with self._lock:
            if info is not None and (info.sync_status or "").casefold() == "done" and start:
                self._done[connector] = start
            was_blocked = connector in self._blocked
            if action is Action.BLOCKED:
                self._blocked[connector] = reason
            else:
                self._blocked.pop(connector, None)
            failed_new = action is Action.FAILED and (connector, start) not in self._failed_seen
            if failed_new:
                self._failed_seen.add((connector, start))
            previous = self._last_action.get(stream.key)
            self._last_action[stream.key] = action
        status = _status_label(info, action)
        for value in CONNECTOR_STATUS_VALUES:
            metrics.CONNECTOR_STATUS.labels(stream.display, value).set(1 if value == status else 0)
        if action is Action.BLOCKED and not was_blocked:
            log.error("connector_blocked", connector=stream.display, reason=reason)
        elif was_blocked and action is not Action.BLOCKED:
            log.info("connector_unblocked", connector=stream.display)
        if failed_new:
            metrics.SYNC_FAILED.labels(stream.display).inc()
            log.warning("connector_sync_failed", connector=stream.display, reason=reason)
        if action is Action.UNKNOWN and previous is not Action.UNKNOWN:
            log.warning("connector_sync_state_unknown", connector=stream.display, reason=reason)


def _find(listing: ConnectorListing, stream: WatchedStream) -> ConnectorInfo | None:
    if stream.connector_id is not None:
        return listing.by_id(stream.connector_id)
    if stream.token is not None:
        return listing.by_token(stream.token)
    return None


def _status_label(info: ConnectorInfo | None, action: Action) -> str:
    if info is None:
        return "missing"
    if action is Action.BLOCKED:
        return "blocked"
    if action is Action.FAILED:
        return "failed"
    if action is Action.WAIT:
        return "syncing"
    return "ok"


class SyncWatcher:
    """A thread that reads the connectors list on a timer and when poked."""

    def __init__(
        self,
        directory: ConnectorDirectory,
        on_listing: Callable[[ConnectorListing, bool], object],
        *,
        interval_seconds: float,
        min_gap_seconds: float = 5.0,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        leader: Callable[[], bool] | None = None,
        read_when_not_leader: bool = False,
    ) -> None:
        self._directory = directory
        # Replicas sharing a store read the list once per fleet: a timed check runs only
        # on the replica holding the watcher's lease (``leader()`` takes or renews it).
        # A webhook hint is read by whichever replica got it (at most one read per gap).
        # Each replica still reads it once at start (until a read succeeds), so that it
        # learns its connectors' Bindbee ids; that read follows no syncs unless it leads.
        self._leader = leader
        # Discovery needs the list on every replica: then each reads it on the interval,
        # and only the leader's (or a hinted) read follows syncs (``on_listing``'s flag).
        self._read_always = read_when_not_leader
        self._on_listing = on_listing
        self._interval = interval_seconds
        self._min_gap = min_gap_seconds
        self._stop = stop or threading.Event()
        self._clock = clock
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.first_check = threading.Event()  # set once the first read finished (or failed)
        self.checks = 0
        self.last_ok: float | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        """Check once now, then on the interval (0: only when poked)."""
        self._thread = threading.Thread(target=self._loop, name="sync-watcher", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A webhook hinted at a sync: read the list soon (at most one read per gap)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (it never holds a page or a transaction)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the watcher's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """False while the last read of the list failed."""
        return not self._failing

    def check_now(self, follow: bool = True) -> ConnectorListing | None:
        """Read the list and apply it (``follow``: its syncs too); None (logged, counted)
        when the read failed."""
        try:
            listing = self._directory.list()
        except ScanInterrupted:
            return None
        except ChangefeedError as exc:
            self.checks += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            metrics.SYNC_WATCHER_UP.set(0)
            if not self._failing:
                # One warning per outage, not one per check.
                log.warning("sync_check_failed", error=self.last_error)
            self._failing = True
            return None
        self.checks += 1  # counted once the read is done: tests wait on completed reads
        if self._failing:
            log.info("sync_check_recovered")
        self._failing = False
        self.last_error = None
        self.last_ok = time.time()
        metrics.SYNC_WATCHER_UP.set(1)
        metrics.SYNC_WATCHER_LAST_OK.set(self.last_ok)
        try:
            self._on_listing(listing, follow)
        except ChangefeedError as exc:
            log.error("sync_check_apply_failed", error=f"{type(exc).__name__}: {exc}")
        return listing

    def _loop(self) -> None:
        last_read = -float("inf")
        next_check = self._clock()
        first = True  # one read at start, whatever the interval: syncs made while down
        while not self._stop.is_set():
            if not first:
                if self._interval <= 0:
                    self._wake.wait()
                elif next_check > self._clock():
                    self._wake.wait(next_check - self._clock())
            first = False
            if self._stop.is_set():
                return
            hinted = self._wake.is_set()
            self._wake.clear()
            follow = hinted or self._leader is None or self._leader()
            # Every replica reads the list until one read succeeded, whoever leads: it
            # learns the Bindbee ids of its connectors there (a hint names a connector by
            # that id), so any replica can read the hints of a stream it claims.
            if not follow and not self._read_always and self.last_ok is not None:
                self.first_check.set()  # another replica reads the list
                next_check = self._clock() + (self._interval if self._interval > 0 else 0)
                continue
            gap = self._min_gap - (self._clock() - last_read)
            if gap > 0 and self._stop.wait(gap):
                return
            self._wake.clear()  # hints during the gap are covered by this read
            last_read = self._clock()
            try:
                self.check_now(follow)
            finally:
                self.first_check.set()
            if self._interval > 0:
                next_check = last_read + self._interval
