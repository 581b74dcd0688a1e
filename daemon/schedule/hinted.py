"""One claimed stream's turn: skip it, read its hints, walk it — or a mix, in that order.

    hints of the stream's connector, unread  -> a targeted read first (by id)
    a new sync Done (trigger: sync)          -> counted once; walked when the spacing
                                                (full_scan_every_syncs) says so, else
                                                covered by its hinted reads alone
    a new sync, hints on, the connector's
    Bindbee id not yet learned               -> walked (its hints cannot be found)
    a 413 asked for a walk (walk_forced_at)  -> walked now
    a walk for a sync, hints on              -> first wait up to bindbee.hint_grace_seconds
                                                for the sync's ids, read them, then walk
    reads dearer than the walks, or a hint
    that cannot be read by id                -> walk instead
    an interval stream between its polls     -> only the hint; its due time is put back
    only the outbox holds rows (a failed
    hints_read send, a read killed mid-way)  -> the outbox is sent; no walk
    hints (or a 413) newer than the start of
    the walk that just completed             -> due again now

Everything else is the pass as before (``rules.skip_until`` decides when a sync stream is
up to date). The turn runs on the stream's lease; the counts it writes are fenced.
"""

from __future__ import annotations

import time
from typing import Any

from daemon.models import Hint, StreamState
from daemon.ops import metrics
from daemon.runtime import Runtime
from daemon.schedule.registry import Stream
from daemon.schedule.rules import skip_until
from daemon.stream import StreamPass
from daemon.stream.hint_measure import HintMeasure
from daemon.stream.hint_rules import spacing_now, walk_due
from daemon.timestamps import normalize_time, parse_time

_BELL_SECONDS = 0.25  # a hint stored by another replica rings no bell here: look again


class StreamTurn:
    """What one claimed pass of ``stream`` does; ``run`` returns the next due time, or None
    when a scan ran (the caller's rule for a success applies)."""

    def __init__(
        self, runtime: Runtime, stream: Stream, state: StreamState, log: Any, interval: float
    ) -> None:
        self.runtime = runtime
        self.stream = stream
        self.state = state
        self.log = log
        self.interval = interval
        settings = runtime.settings
        self.model = settings.models[stream.model]
        self.trigger = self.model.trigger
        self.hints_on = settings.webhook.enabled
        self.ran = False  # True once it read or scanned (not a skip)
        ids = runtime.connector_ids
        self.connector_id = ids.bindbee_id(stream.connector) if self.hints_on else None

    def run(self) -> float | None:
        store, state, key = self.runtime.store, self.state, self.stream.key
        now = time.time()
        hint_due = store.take_hint_due(key) if self.hints_on else None
        up_to_date = skip_until(self.trigger, state, self.interval, now, lambda: store.pending(key))
        if self._between_polls(hint_due, now):
            up_to_date = hint_due
        # Due only because the outbox holds rows (a hints_read batch or marker whose send
        # failed, a read killed mid-way): send them, no walk; the safety net stays.
        outbox_only = None
        if up_to_date is None and self.trigger == "sync":
            outbox_only = skip_until(self.trigger, state, self.interval, now, lambda: False)
        cid = self.connector_id
        hints = store.unread_hints(key, cid) if cid is not None else []
        new_sync = self._new_sync()
        walk_reason = self._count(new_sync) if new_sync is not None else None
        if new_sync is not None and self.hints_on and cid is None:
            # Its hints cannot be found without the connector's Bindbee id (no list read
            # succeeded here yet): the sync is walked, never covered by reads not made.
            walk_reason = walk_reason or "the connector's Bindbee id is not known yet"
        if self.hints_on and not state.in_progress and store.walk_state(key).forced:
            walk_reason = walk_reason or "a hint could not be read (413)"
        if up_to_date is not None and not hints and new_sync is None and walk_reason is None:
            metrics.PASSES_SKIPPED.labels(*self.stream.labels, "up_to_date").inc()
            return up_to_date
        stream_pass = self.runtime.stream_pass(self.stream.connector, self.stream.model)
        self.ran = True
        if cid is not None and walk_reason is not None and new_sync is not None:
            hints = self._grace(cid, new_sync) or hints
        if cid is not None and hints:
            models = list(self.runtime.settings.models)
            result = stream_pass.read_hints(cid, models, hints)
            if result.walk_reason is not None:
                metrics.HINTS_WALKED.labels(*self.stream.labels).inc()
                self.log.info("hints_walked", reason=result.walk_reason)
                walk_reason = walk_reason or result.walk_reason
        if new_sync is not None and walk_reason is None:
            store.cover_sync(key, new_sync)  # its hinted reads cover it: no walk
            self.log.info("sync_covered_by_hints", sync_start_time=new_sync)
            assert state.last_full_scan_at is not None
            return state.last_full_scan_at + self.interval
        if up_to_date is not None and walk_reason is None:
            return up_to_date
        if outbox_only is not None and walk_reason is None:
            stream_pass.publish_outbox()
            self.log.info("outbox_only", action="published, no walk")
            return outbox_only
        self._walk(stream_pass, walk_reason)
        return self._after_walk()

    def _after_walk(self) -> float | None:
        """Due now when a hint arrived after the scan just completed had started (its ids
        unread, or a 413 forcing a walk): it must not wait for the next interval. None: the
        caller's rule for a success."""
        if not self.hints_on:
            return None
        store, key = self.runtime.store, self.stream.key
        state = store.state(key)
        started = state.last_full_scan_started_at
        if state.in_progress or started is None:
            return None
        forced_at = store.walk_state(key).forced_at
        late = forced_at is not None and forced_at > started
        cid = self.connector_id
        if not late and cid is not None:
            late = bool(store.unread_hints(key, cid))  # only hints since ``started``
        if late:
            self.log.info("hints_after_walk_start", action="due now")
            return time.time()
        return None

    def _between_polls(self, hint_due: float | None, now: float) -> bool:
        """An interval stream a hint made due before its poll: read the hint only."""
        state = self.state
        return (
            self.trigger != "sync"
            and hint_due is not None
            and hint_due > now
            and not state.in_progress
            and state.resync_requested_at is None
        )

    def _new_sync(self) -> str | None:
        """The Bindbee sync (its start time) this turn must decide about: Done, not yet
        covered, the stream fully scanned once, no scan or resync in the way."""
        state = self.state
        if (
            self.trigger != "sync"
            or state.last_full_scan_at is None
            or state.in_progress
            or state.resync_requested_at is not None
            or state.requested_sync is None
            or state.requested_sync == state.sync_bookmark
        ):
            return None
        return state.requested_sync

    def _count(self, sync: str) -> str | None:
        """Count the sync (once, fleet-wide); why it is walked, or None (reads only)."""
        walk = self.runtime.store.count_sync(self.stream.key, sync)
        spacing = spacing_now(self.model.full_scan_every_syncs, walk.spacing)
        metrics.WALK_SPACING.labels(*self.stream.labels).set(spacing)
        if not walk_due(syncs=walk.syncs, spacing=spacing, forced=walk.forced):
            self.log.info("sync_counted", syncs=walk.syncs, spacing=spacing, walk=False)
            return None
        return f"sync {walk.syncs} since the last walk, spacing {spacing}"

    def _grace(self, connector_id: str, sync: str) -> list[Hint]:
        """Wait up to ``bindbee.hint_grace_seconds`` for a hint received since the sync
        started (its ids come just after its Done); the unread hints then."""
        store, runtime = self.runtime.store, self.runtime
        grace = runtime.settings.bindbee.hint_grace_seconds
        try:
            since = parse_time(normalize_time(sync)).timestamp()
        except ValueError:
            since = time.time()
        deadline = time.monotonic() + grace
        # The store is asked outside the bell's lock (intake notifies under it, from the
        # webhook's threads); a ring between the check and the wait costs one short wait.
        while store.hints_since(connector_id, since) == 0 and not runtime.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with runtime.hint_bell:
                runtime.hint_bell.wait(min(left, _BELL_SECONDS))
        return store.unread_hints(self.stream.key, connector_id)

    def _walk(self, stream_pass: StreamPass, walk_reason: str | None) -> None:
        """The pass as before: resume or start a scan; a full one when walking."""
        state, store, cid = self.state, self.runtime.store, self.connector_id
        resync = state.resync_requested_at is not None
        if resync:
            self.log.info("resync_started", requested_at=state.resync_requested_at)
        measure = None
        if cid is not None and state.last_full_scan_started_at is not None:
            measure = HintMeasure(store, self.stream.key, cid, state.last_full_scan_started_at)
        stream_pass.run(
            force_full=self.trigger == "sync" or resync or walk_reason is not None,
            sync=state.requested_sync if self.trigger == "sync" else None,
            measure=measure,
        )
