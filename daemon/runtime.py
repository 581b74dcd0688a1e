"""The long-lived parts of one daemon process, opened and closed in one place."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

from daemon.settings import Settings, StateSettings
from daemon.sink.kafka import KafkaSink
from daemon.source.client import BindbeeClient
from daemon.state.sqlite import SnapshotStore, SqliteSnapshotStore
from daemon.stream import StreamPass


def open_store(state: StateSettings) -> SnapshotStore:
    """The configured state store: PostgreSQL when ``state.url`` is set, else SQLite."""
    if state.url is not None:
        from daemon.state.postgres import PostgresSnapshotStore

        return PostgresSnapshotStore(state.url.get_secret_value())
    return SqliteSnapshotStore(state.path)


@dataclass
class Runtime:
    """Settings plus the store, API client and Kafka sink every stream shares."""

    settings: Settings
    store: SnapshotStore
    client: BindbeeClient
    sink: KafkaSink
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, settings: Settings, stop: threading.Event | None = None) -> Runtime:
        """Open the state store and create (not connect) the client and the sink."""
        stop = stop or threading.Event()
        store = open_store(settings.state)
        return cls(
            settings=settings,
            store=store,
            client=BindbeeClient(settings.bindbee, stop=stop),
            sink=KafkaSink(settings.kafka),
            stop=stop,
        )

    def passes(
        self, connectors: list[str] | None = None, models: list[str] | None = None
    ) -> list[StreamPass]:
        """One StreamPass per configured connector x model, optionally filtered."""
        return [
            StreamPass(
                self.settings,
                connector,
                model,
                source=self.client,
                store=self.store,
                sink=self.sink,
                stop=self.stop,
            )
            for connector in self.settings.connectors
            if connectors is None or connector.name in connectors
            for model in self.settings.models
            if models is None or model in models
        ]

    def close(self) -> None:
        """Flush and close everything; safe to call twice."""
        for close in (self.sink.close, self.client.close, self.store.close):
            # Closing must not mask why we are exiting.
            with contextlib.suppress(Exception):
                close()
