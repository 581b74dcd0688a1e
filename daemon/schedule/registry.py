"""The streams this process schedules: configured connectors, discovered ones, reloads.

A stream is a connector x a model. The registry holds them with their in-memory health;
a new connectors list (discovery) or new settings (SIGHUP) replace the set, and the
caller learns which streams are new so it can give them a row in the shared schedule.
Streams that are gone are no longer claimed here; their state in the store is kept.
``restart_needed`` tells which changed settings a reload cannot apply.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from daemon.models import StreamKey
from daemon.ops import metrics
from daemon.schedule.sync_watcher import WatchedStream
from daemon.settings import ConnectorSettings, Settings
from daemon.source.connectors import ConnectorInfo
from daemon.source.discovery import discovered

log = structlog.get_logger("daemon.schedule.registry")


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
class Stream:
    """One scheduled stream: its connector's settings of the moment, its model, its health."""

    connector: ConnectorSettings
    model: str
    health: StreamHealth = field(default_factory=StreamHealth)

    @property
    def key(self) -> StreamKey:
        return StreamKey(self.connector.key, self.model)

    @property
    def labels(self) -> tuple[str, str]:
        """The metric labels: connector name, model."""
        return (self.connector.name, self.model)

    def interval(self, settings: Settings) -> float:
        """The poll interval that applies to this stream under ``settings``."""
        return settings.poll_interval(self.connector, self.model)


class StreamRegistry:
    """The streams (connector x model) this process knows, by key; thread-safe.

    ``lock`` is shared with the pass runner, so the claim loop sees the streams and the
    running passes together.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._streams: dict[StreamKey, Stream] = {}
        self._discovered: list[ConnectorSettings] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    def get(self, key: StreamKey) -> Stream | None:
        """The stream ``key``, None when this process does not schedule it."""
        with self._lock:
            return self._streams.get(key)

    def snapshot(self) -> dict[StreamKey, Stream]:
        """A copy of the streams by key, to iterate without the lock."""
        with self._lock:
            return dict(self._streams)

    def name(self, key: StreamKey) -> str:
        """``connector/model`` for logs (the key when the stream is gone)."""
        stream = self._streams.get(key)
        return f"{stream.connector.name}/{stream.model}" if stream else str(key)

    def apply(self, settings: Settings) -> list[StreamKey]:
        """Make the streams those of ``settings`` (and the discovered connectors); the
        keys of the new ones, in order. A known stream takes its connector's new
        settings (a new token or name applies from its next pass)."""
        wanted = {
            StreamKey(c.key, model): (c, model)
            for c in [*settings.connectors, *self._discovered]
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
                    self._streams[key] = Stream(connector, model)
                    added.append(key)
                else:
                    current.connector = connector
            for key in added:
                stream = self._streams[key]
                trigger = settings.models[stream.model].trigger
                interval = stream.interval(settings)
                metrics.STREAM_TRIGGER.labels(*stream.labels, trigger).set(interval)
        return added

    def discover(self, listing: Iterable[ConnectorInfo], settings: Settings) -> list[StreamKey]:
        """Follow the connectors ``listing`` offers (``bindbee.discover_connectors``);
        the keys of the new streams. Nothing changes when the same connectors are found
        with the same settings."""
        found = discovered(listing, settings.connectors, settings.bindbee.discover_filter)
        if found == self._discovered:
            return []
        self._discovered = found
        added = self.apply(settings)
        if added:
            log.info("connectors_discovered", streams=[self.name(k) for k in added])
        return added

    def watched(self, settings: Settings) -> list[WatchedStream]:
        """The sync-triggered streams, for the sync follower."""
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


def restart_needed(old: Settings, new: Settings, *, has_watcher: bool) -> list[str]:
    """What changed between ``old`` and ``new`` that a reload cannot apply: the parts the
    process built once at start (clients, pools, the store, listeners)."""
    scheduler, was = new.scheduler, old.scheduler
    changes = (
        ("bindbee", _without_discovery(new) != _without_discovery(old)),
        ("kafka", new.kafka != old.kafka),
        ("state", new.state != old.state),
        ("http", new.http != old.http),
        ("webhook", new.webhook != old.webhook),
        ("scheduler.max_workers", scheduler.max_workers != was.max_workers),
        (
            "scheduler.claim_interval_seconds",
            scheduler.claim_interval_seconds != was.claim_interval_seconds,
        ),
        ("scheduler.replica_id", scheduler.replica_id != was.replica_id),
        ("the set of models", new.models.keys() != old.models.keys()),
        (
            "trigger: sync without a running sync watcher",
            not has_watcher and any(m.trigger == "sync" for m in new.models.values()),
        ),
    )
    return [name for name, changed in changes if changed]


def _without_discovery(settings: Settings) -> object:
    # bindbee fields a reload cannot apply (the client, limiter and watcher are built once).
    return settings.bindbee.model_dump(exclude={"discover_connectors", "discover_filter"})
