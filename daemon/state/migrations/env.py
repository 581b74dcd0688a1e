"""Alembic environment: always given a connection by daemon.state.migration.

Run programmatically (no alembic.ini): ``migration.upgrade`` opens the transaction,
takes the backend's migration lock, then hands the connection over in
``config.attributes["connection"]``; the revisions run inside that transaction.
"""

from __future__ import annotations

from alembic import context

from daemon.state.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `lms-changefeed migrate` (daemon.state.migrate)")
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite's DDL is transactional too: the whole upgrade commits or nothing does.
    transactional_ddl=True,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
