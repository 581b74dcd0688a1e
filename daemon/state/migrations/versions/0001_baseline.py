"""Baseline: the four changefeed_* tables, or a 0.1.0 store converted in place.

0.1.0 wrote two different layouts, both converted here without losing a row (stream
checkpoints, records, scan marks and the outbox of messages not yet sent all survive):

- SQLite: ``meta`` (schema_version 1 or 2), ``streams``, ``records``, ``seen`` and
  ``outbox``. Renamed to the changefeed_* names; ``meta`` is dropped (Alembic's version
  table is the schema version now). Schema 1 kept the scan marks in ``records.scan``.
- PostgreSQL: unversioned ``changefeed_streams``, ``changefeed_records`` with the scan
  marks in a ``scan`` column, ``changefeed_outbox``. The marks move to
  ``changefeed_seen``.

Anything else (an empty database) gets the tables created.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-05-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

# The tables as this revision creates them (frozen here: later revisions change them).
_meta = sa.MetaData()
_TABLES = (
    sa.Table(
        "changefeed_streams",
        _meta,
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("connector", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("watermark", sa.Text),
        sa.Column("scan_number", sa.Integer, nullable=False, server_default="0"),
        sa.Column("scan_kind", sa.Text),
        sa.Column("scan_phase", sa.Text),
        sa.Column("scan_cursor", sa.Text),
        sa.Column("scan_pages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("scan_since", sa.Text),
        sa.Column("scan_started_at", sa.Double),
        sa.Column("scan_max_modified", sa.Text),
        sa.Column("last_full_scan_started_at", sa.Double),
        sa.Column("last_full_scan_at", sa.Double),
        sa.Column("last_scan_at", sa.Double),
        sa.Column("delete_guard", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", sa.Double),
        sa.UniqueConstraint("connector", "model"),
    ),
    sa.Table(
        "changefeed_records",
        _meta,
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("modified_at", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sqlite_with_rowid=False,
    ),
    sa.Table(
        "changefeed_seen",
        _meta,
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("scan", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    ),
    sa.Table(
        "changefeed_outbox",
        _meta,
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("value", sa.LargeBinary),
        sa.Column("headers", sa.LargeBinary, nullable=False),
        sqlite_with_rowid=False,
    ),
)
_SQLITE_010 = ("streams", "records", "seen", "outbox")


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if bind.dialect.name == "sqlite" and "meta" in tables:
        version = bind.execute(
            sa.text("SELECT value FROM meta WHERE key = 'schema_version'")
        ).scalar()
        if version not in ("1", "2"):
            raise RuntimeError(f"unknown 0.1.0 state store schema_version {version!r}")
        for name in _SQLITE_010:
            if name in tables:
                op.execute(f"ALTER TABLE {name} RENAME TO changefeed_{name}")
        op.execute("DROP TABLE meta")
        tables = set(sa.inspect(bind).get_table_names())
    for table in _TABLES:
        if table.name not in tables:
            table.create(bind)
    columns = {c["name"] for c in sa.inspect(bind).get_columns("changefeed_records")}
    if "scan" in columns:
        # SQLite schema 1 and PostgreSQL 0.1.0: the scan marks move to their own table.
        op.execute(
            "INSERT INTO changefeed_seen (sid, id, scan) "
            "SELECT sid, id, scan FROM changefeed_records"
        )
        op.execute("ALTER TABLE changefeed_records DROP COLUMN scan")


def downgrade() -> None:
    for table in reversed(_TABLES):
        table.drop(op.get_bind(), checkfirst=True)
