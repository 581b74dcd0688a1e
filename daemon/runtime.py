"""The long-lived parts of one daemon process, opened and closed in one place."""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass, field

from daemon.settings import ConnectorSettings, Settings, StateSettings
from daemon.sink.kafka import KafkaSink
from daemon.source.client import BindbeeClient
from daemon.source.connector_ids import ConnectorIds
from daemon.source.connectors import ConnectorDirectory
from daemon.source.discovery import discovered
from daemon.state import StateStore
from daemon.state import open_store as _open_store
from daemon.stream import ScanProgressBook, StreamPass

GIL_SWITCH_SECONDS = 0.0005
"""How long a thread may hold the GIL while another waits for it (CPython's default is
5 ms). A pass's page walker wakes on each response while the pass's thread diffs and
commits in Python: with the default, a response could wait up to 5 ms for the GIL,
close to what the API takes to answer it. Measured with bench/'s full scan of 20,000 against
a bare walk just before and after each: median ratio 1.22 at 5 ms, 1.12 at 0.5 ms."""


def open_store(state: StateSettings, owner: str | None = None) -> StateStore:
    """The configured state store: PostgreSQL when ``state.url`` is set, else SQLite.

    A store behind the schema head is migrated first unless ``state.auto_migrate`` is
    false (then StateStoreError asks for ``lms-changefeed migrate``). ``owner`` names
    this process in the leases it takes.
    """
    return _open_store(state, owner=owner)


@dataclass
class Runtime:
    """Settings plus the store, API client and Kafka sink every stream shares.

    ``scan_progress`` is what this process published of each stream's scan in progress:
    a StreamPass may live for one pass, but a scan resumed after a failed pass in this
    process must still count the earlier pages in its marker. Build passes with
    ``stream_pass`` so they share it.
    """

    settings: Settings
    store: StateStore
    client: BindbeeClient
    sink: KafkaSink
    stop: threading.Event = field(default_factory=threading.Event)
    scan_progress: ScanProgressBook = field(default_factory=ScanProgressBook)
    # Bindbee's id of each followed connector (webhooks name connectors by it), and a
    # bell rung when a hint is stored here (a walk waiting for its sync's ids wakes).
    connector_ids: ConnectorIds = field(default_factory=ConnectorIds)
    hint_bell: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def open(cls, settings: Settings, stop: threading.Event | None = None) -> Runtime:
        """Open the state store and create (not connect) the client and the sink; set
        the process's GIL switch interval (``GIL_SWITCH_SECONDS``)."""
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        stop = stop or threading.Event()
        store = open_store(settings.state, settings.scheduler.replica_id)
        try:
            store.free_dead_leases()  # a killed predecessor here need not be waited out
        except BaseException:
            store.close()
            raise
        return cls(
            settings=settings,
            store=store,
            client=BindbeeClient(
                settings.bindbee,
                stop=stop,
                connections_per_connector=settings.bindbee.connections_per_connector,
            ),
            sink=KafkaSink(settings.kafka, stop=stop),
            stop=stop,
        )

    def connectors(self) -> list[ConnectorSettings]:
        """The configured connectors, plus the discovered ones with
        ``bindbee.discover_connectors`` (one read of the connectors list)."""
        configured = list(self.settings.connectors)
        bindbee = self.settings.bindbee
        if not bindbee.discover_connectors:
            return configured
        # Over the client's transport: one pool per process, the bindbee.* retry policy.
        listing = ConnectorDirectory.over(self.client.transport).list()
        return configured + discovered(listing, configured, bindbee.discover_filter)

    def passes(
        self, connectors: list[str] | None = None, models: list[str] | None = None
    ) -> list[StreamPass]:
        """One StreamPass per connector x model, optionally filtered by connector name."""
        return [
            self.stream_pass(connector, model)
            for connector in self.connectors()
            if connectors is None or connector.name in connectors
            for model in self.settings.models
            if models is None or model in models
        ]

    def stream_pass(self, connector: ConnectorSettings, model: str) -> StreamPass:
        """The StreamPass of one stream (connector x model) over this runtime's parts."""
        return StreamPass(
            self.settings,
            connector,
            model,
            source=self.client,
            store=self.store,
            sink=self.sink,
            stop=self.stop,
            progress=self.scan_progress,
        )

    def close(self) -> None:
        """Flush and close everything; safe to call twice."""
        for close in (self.sink.close, self.client.close, self.store.close):
            # Closing must not mask why we are exiting.
            with contextlib.suppress(Exception):
                close()
