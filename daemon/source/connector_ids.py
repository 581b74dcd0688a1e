"""Bindbee's id of each connector the daemon follows, learned from the connectors list.

A webhook names its connector by Bindbee's id (``connector.id``); a configured connector
is known by its token, a discovered one by that id already. Each read of the connectors
list (the sync watcher's) teaches the id for each configured token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from daemon.settings import ConnectorSettings
from daemon.source.connectors import ConnectorListing


class ConnectorIds:
    """Connector store key <-> Bindbee id; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, str] = {}

    def learn(self, listing: ConnectorListing, connectors: Iterable[ConnectorSettings]) -> bool:
        """Learn the ids of ``connectors`` from ``listing``; True when one is new."""
        found = {}
        for connector in connectors:
            if connector.bindbee_id is not None:
                found[connector.key] = connector.bindbee_id
            elif connector.token is not None:
                info = listing.by_token(connector.token)
                if info is not None:
                    found[connector.key] = info.id
        with self._lock:
            new = any(self._by_key.get(k) != v for k, v in found.items())
            self._by_key.update(found)
        return new

    def bindbee_id(self, connector: ConnectorSettings) -> str | None:
        """Bindbee's id of ``connector`` (None until a listing named it)."""
        if connector.bindbee_id is not None:
            return connector.bindbee_id
        with self._lock:
            return self._by_key.get(connector.key)

    def keys_of(self, bindbee_id: str) -> list[str]:
        """The store keys of the connectors with this Bindbee id (usually one)."""
        with self._lock:
            return [key for key, value in self._by_key.items() if value == bindbee_id]
