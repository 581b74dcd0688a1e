"""What the daemon remembers: per-record snapshots, scan checkpoints and the outbox, and
the shared schedule its replicas coordinate through (leases, replicas, due times).

One store (``store.StateStore``), written against one schema (``schema``) over
SQLAlchemy Core, on SQLite by default or PostgreSQL (``state.url``); ``dialects`` holds
the little that differs. The store is composed of one part per job (``snapshots``,
``scans``, ``leases``, ``replicas``, ``due``, ``hints``) over one SQL runner (``sql``).
``SnapshotStore`` (``protocol``) is the part a stream pass uses. Alembic revisions
(``migrations``) are the schema version.
"""

from __future__ import annotations

from typing import Any

from daemon.state.dialects import StoreMissing, backend_for
from daemon.state.leases import STREAM_LEASE_PREFIX, stream_lease_name
from daemon.state.migration import current_revision, ensure_current, head_revision, migrate
from daemon.state.protocol import SnapshotStore
from daemon.state.rows import LoadedRow, dump_headers, load_headers
from daemon.state.store import StateStore

__all__ = [
    "STREAM_LEASE_PREFIX",
    "LoadedRow",
    "SnapshotStore",
    "StateStore",
    "StoreMissing",
    "current_revision",
    "dump_headers",
    "head_revision",
    "load_headers",
    "migrate",
    "open_store",
    "require_store",
    "stream_lease_name",
]


def open_store(
    state: Any,
    *,
    auto_migrate: bool | None = None,
    create: bool = True,
    owner: str | None = None,
) -> StateStore:
    """The store of ``state`` (StateSettings: PostgreSQL when ``url`` is set, else the
    SQLite file at ``path``; or a URL / path), at the head schema revision.

    A store behind the head is upgraded first when ``auto_migrate`` (default:
    ``state.auto_migrate``) is true; otherwise StateStoreError asks for
    ``lms-changefeed migrate``.

    ``create=False`` (the inspecting commands: ``status``, ``reset``) refuses with
    StoreMissing when the SQLite file does not exist, and creates nothing on disk.
    ``owner`` names this process in the leases it takes (default: host name and pid).
    """
    if auto_migrate is None:
        auto_migrate = bool(getattr(state, "auto_migrate", True))
    backend = backend_for(state, create=create)
    try:
        ensure_current(backend, auto_migrate=auto_migrate)
    except BaseException:
        backend.close()
        raise
    return StateStore(
        backend, owner=owner, lease_seconds=float(getattr(state, "lease_seconds", 30.0))
    )


def require_store(state: Any) -> None:
    """Raise StoreMissing unless the store of ``state`` exists; creates nothing."""
    backend_for(state, create=False).close()
