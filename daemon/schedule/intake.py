"""Taking hints in: a verified ``connector_data_modified`` becomes durable work.

``receive`` runs on the webhook listener's worker thread before the delivery is answered:
the hint is written to the state store (a replay, same dedupe key, adds nothing), then
the streams of its connector are made due at once (any replica may read it: the store
says which stream read which hint). A hint for a connector whose Bindbee id is not known
yet makes the sync watcher read the list; once it names the connector, the hint is routed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import structlog

from daemon.models import StreamKey
from daemon.ops.webhook import IdsHint
from daemon.runtime import Runtime
from daemon.schedule.registry import Stream

log = structlog.get_logger("daemon.schedule.intake")

_MAX_UNROUTED = 1000  # connector ids waiting for a listing: bounded against made-up ids


class HintIntake:
    """Stores hints and asks for their reads; ``streams()`` are the streams this process
    schedules, ``wake(when)`` runs the claim loop, ``poke()`` makes the watcher read."""

    def __init__(
        self,
        runtime: Runtime,
        streams: Callable[[], Mapping[StreamKey, Stream]],
        wake: Callable[[float], None],
        poke: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        self._streams = streams
        self._wake = wake
        self._poke = poke
        self._lock = threading.Lock()
        self._unrouted: set[str] = set()

    def receive(self, hint: IdsHint) -> None:
        """Make ``hint`` durable (raises StateStoreError: the delivery answers 500 and
        Bindbee retries), then ask for its reads."""
        runtime = self.runtime
        if not hint.ids and hint.walk_reason is None:
            return  # a sync that changed nothing: nothing to read
        now = time.time()
        added = runtime.store.add_hint(
            hint.connector_id,
            hint.sync_id,
            hint.dedupe,
            hint.ids,
            walk=hint.walk_reason is not None,
            now=now,
            retention_seconds=runtime.settings.webhook.hint_retention_seconds,
        )
        with runtime.hint_bell:
            runtime.hint_bell.notify_all()
        if not added:
            # Routed again all the same: the first delivery's process may have died between
            # storing it and asking for its reads. A hint already read is not read again.
            log.info("hint_replayed", connector_id=hint.connector_id, sync_id=hint.sync_id)
        elif hint.walk_reason is not None:
            log.warning("hint_walks_instead", connector_id=hint.connector_id,
                        sync_id=hint.sync_id, reason=hint.walk_reason)  # fmt: skip
        self.route(hint.connector_id)

    def route(self, connector_id: str) -> bool:
        """Make the streams of Bindbee connector ``connector_id`` due for their hints;
        False when no followed connector has that id (yet)."""
        ids = self.runtime.connector_ids
        streams = self._streams().items()
        keys = [k for k, s in streams if ids.bindbee_id(s.connector) == connector_id]
        if not keys:
            with self._lock:
                if len(self._unrouted) < _MAX_UNROUTED:
                    self._unrouted.add(connector_id)
            self._poke()
            return False
        now = time.time()
        self.runtime.store.request_hint(keys, now)
        self._wake(now)
        return True

    def learned(self) -> None:
        """A listing taught connector ids: route the hints that waited for one."""
        with self._lock:
            waiting = list(self._unrouted)
        for connector_id in waiting:
            if self.route(connector_id):
                with self._lock:
                    self._unrouted.discard(connector_id)

    def too_large(self) -> None:
        """A delivery over the body limit (413) cannot be verified nor say its connector:
        every stream walks now, and again after a walk in progress that started before it."""
        keys = list(self._streams())
        now = time.time()
        self.runtime.store.force_walk(keys, now)
        self._wake(now)
        log.warning("hint_too_large", action="every stream walks", streams=len(keys))
