"""One stream as a pass sees it: its settings, topics and parts, and its outbox sends.

Every send goes through the outbox: what is sent was committed first (a page's events, a
batch of deletes, a scan's marker), and is cleared from the outbox only once Kafka has
acknowledged it. A failed send leaves it there for the next pass to send first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from daemon.models import ChangeEvent, Message, StreamKey
from daemon.settings import ConnectorSettings, ModelSettings, Settings
from daemon.sink.events import to_messages
from daemon.source.pagination import PageSource
from daemon.state import SnapshotStore
from daemon.stream.progress import ScanProgress


class EventSink:
    """What a pass needs from Kafka (``daemon.sink.kafka.KafkaSink``)."""

    def publish(  # pragma: no cover - protocol
        self, messages: Sequence[Message]
    ) -> Mapping[tuple[str, int], int] | None:
        """Send and flush; returns (topic, partition) -> the last acknowledged offset."""
        raise NotImplementedError

    def ensure_topics(self, topics: Sequence[str]) -> None:  # pragma: no cover - protocol
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class StreamContext:
    """One (connector, model) stream: what its passes read, and where they write."""

    key: StreamKey
    name: str  # connector name / model: for people, metrics and topics
    settings: Settings
    connector: ConnectorSettings
    model: ModelSettings
    topic: str
    dead_letter_topic: str
    control_topic: str | None  # None with kafka.scan_markers off
    source: PageSource
    store: SnapshotStore
    sink: EventSink
    stop: threading.Event
    clock: Callable[[], float]

    @classmethod
    def build(
        cls,
        settings: Settings,
        connector: ConnectorSettings,
        model: str,
        *,
        source: PageSource,
        store: SnapshotStore,
        sink: EventSink,
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> StreamContext:
        kafka = settings.kafka
        return cls(
            # The store knows a stream by the connector's key (its Bindbee id when
            # discovered); people, metrics and topics by its name.
            key=StreamKey(connector.key, model),
            name=f"{connector.name}/{model}",
            settings=settings,
            connector=connector,
            model=settings.models[model],
            topic=kafka.topic_for(connector.name, model),
            dead_letter_topic=kafka.dead_letter_topic,
            control_topic=kafka.control_topic if kafka.scan_markers else None,
            source=source,
            store=store,
            sink=sink,
            stop=stop,
            clock=clock,
        )

    @property
    def labels(self) -> tuple[str, str]:
        """The stream's metric labels: connector name, model."""
        return (self.connector.name, self.key.model)

    @property
    def topics(self) -> list[str]:
        """Every topic a pass may write to."""
        topics = [self.topic, self.dead_letter_topic]
        if self.control_topic is not None:
            topics.append(self.control_topic)
        return topics

    def messages(self, events: list[ChangeEvent]) -> list[Message]:
        """The data-topic messages of ``events``."""
        tombstones = self.model.emit_tombstones
        base = self.settings.kafka.schema_base_uri
        messages: list[Message] = []
        for event in events:
            messages.extend(
                to_messages(event, self.topic, tombstone=tombstones, schema_base_uri=base)
            )
        return messages

    def publish(
        self, messages: list[Message], progress: ScanProgress, *, clear: bool = True
    ) -> None:
        """Send what was just committed to the outbox, then forget it there. ``clear=False``:
        the caller's next commit replaces the outbox (and so forgets it) instead."""
        # A failure here leaves them in the outbox for the next pass to send first.
        if not messages:
            return
        # Still ours? A replica paused since the commit must not send an older page after
        # the new holder's newer one.
        self.store.check_lease(self.key)
        acked = self.sink.publish(messages)
        if clear:
            self.store.clear_pending(self.key)
        progress.acked(self.topic, acked)

    def publish_pending(
        self,
        log: structlog.BoundLogger,
        progress: ScanProgress | None,
        *,
        event: str = "outbox_published",
    ) -> None:
        """Send what the outbox holds (an earlier pass's page, or a scan's marker);
        ``progress`` is the scan it belongs to (None: it belongs to no scan counted here)."""
        pending = self.store.pending(self.key)
        if pending:
            self.store.check_lease(self.key)
            acked = self.sink.publish(pending)
            self.store.clear_pending(self.key)
            if progress is not None:
                progress.acked(self.topic, acked)
            log.info(event, messages=len(pending))
