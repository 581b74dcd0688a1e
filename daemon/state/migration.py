"""Schema migrations (Alembic, configured in code): the one source of the schema version.

``migrate`` upgrades a store to the head revision inside one transaction that first
takes the backend's migration lock (PostgreSQL: an advisory lock; SQLite: BEGIN
IMMEDIATE), so replicas starting together upgrade once and the others wait, then find
nothing to do.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from daemon.errors import StateStoreError
from daemon.state.dialects import Backend, backend_for, opening, reason
from daemon.state.schema import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision under migrations/versions (a test holds the two together). Known
# without Alembic, so a process whose store is current never imports it (~20 MB of RSS).
HEAD_REVISION = "0005_compact_rows"


def _config(connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The revision this version of the daemon needs."""
    return HEAD_REVISION


def script_head() -> str | None:
    """The newest revision Alembic finds under migrations/versions."""
    return _script().get_current_head()


def store_revision(connection: sa.Connection) -> str | None:
    """The revision a store is at (None: empty, or written by 0.1.0)."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    table = sa.table(VERSION_TABLE, sa.column("version_num"))
    return connection.execute(sa.select(table.c.version_num)).scalar()


def upgrade(backend: Backend) -> str:
    """Bring the store to the head revision under the migration lock; returns it."""
    try:
        with opening(backend), backend.engine.begin() as connection:
            backend.migration_lock(connection)
            _check_known(backend, store_revision(connection))
            from alembic import command

            command.upgrade(_config(connection), "head")
            revision = store_revision(connection)
    except StateStoreError:
        raise
    except Exception as exc:  # a revision refusing the store: rolled back, say why
        raise StateStoreError(
            f"state store {backend.where}: migration failed: {reason(exc, backend.engine.url)}"
        ) from None
    assert revision is not None
    return revision


def ensure_current(backend: Backend, *, auto_migrate: bool) -> str:
    """At open: the store's revision, upgrading it first if allowed; refuses otherwise."""
    with opening(backend), backend.engine.connect() as connection:
        current = store_revision(connection)
    head = head_revision()
    if current == head:
        return current
    _check_known(backend, current)
    if not auto_migrate:
        raise StateStoreError(
            f"state store {backend.where} is at schema revision {current or 'none'}, this "
            f"version needs {head}: run `lms-changefeed migrate` first "
            "(state.auto_migrate is false)"
        )
    return upgrade(backend)


def _check_known(backend: Backend, revision: str | None) -> None:
    try:
        known = revision is None or _script().get_revision(revision) is not None
    except Exception:  # alembic raises for a revision it has no script for
        known = False
    if not known:
        raise StateStoreError(
            f"state store {backend.where} is at schema revision {revision}, which this "
            "version does not know (written by a newer lms-changefeed?)"
        )


def migrate(target: Any) -> str:
    """Upgrade the store of ``target`` (Settings, StateSettings, a URL or a SQLite path)
    to the head revision; returns the revision it is at."""
    backend = backend_for(target)
    try:
        return upgrade(backend)
    finally:
        backend.close()


def current_revision(target: Any) -> str | None:
    """The schema revision of the store of ``target`` (None: empty, or 0.1.0)."""
    backend = backend_for(target)
    try:
        with opening(backend), backend.engine.connect() as connection:
            return store_revision(connection)
    finally:
        backend.close()
