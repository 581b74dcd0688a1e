"""Hints: Bindbee's connector_data_modified deliveries as durable work, and walk spacing.

``changefeed_hints`` holds each verified delivery's ids (deduplicated by sync id + body
digest), ``changefeed_hint_reads`` which stream has read which hint; new columns on
``changefeed_streams`` count the syncs since the last completed walk
(``full_scan_every_syncs``), keep when a 413 last forced a walk (``walk_forced_at``) and
the last walk's ``hint_missed``. New tables and columns with defaults: existing stores
keep every row and walk every sync, as before.

Revision ID: 0006_sync_hints
Revises: 0005_compact_rows
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_sync_hints"
down_revision = "0005_compact_rows"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("walk_syncs", sa.Integer, "0"),
    ("walk_counted_sync", sa.Text, None),
    ("walk_spacing", sa.Integer, "1"),
    ("walk_forced_at", sa.Double, None),
    ("hint_missed", sa.Integer, None),
    ("hint_missed_total", sa.Integer, "0"),
    ("due_before_hint", sa.Double, None),
)


def upgrade() -> None:
    for name, kind, default in _COLUMNS:
        if default is None:
            op.add_column("changefeed_streams", sa.Column(name, kind))
        else:
            op.add_column(
                "changefeed_streams",
                sa.Column(name, kind, nullable=False, server_default=default),
            )
    op.create_table(
        "changefeed_hints",
        sa.Column("hid", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("connector_id", sa.Text, nullable=False),
        sa.Column("sync_id", sa.Text),
        sa.Column("dedupe", sa.Text, nullable=False, unique=True),
        sa.Column("ids", sa.LargeBinary, nullable=False),
        sa.Column("walk", sa.Integer, nullable=False, server_default="0"),
        sa.Column("received_at", sa.Double, nullable=False),
    )
    op.create_index(
        "changefeed_hints_connector", "changefeed_hints", ["connector_id", "received_at"]
    )
    op.create_index("changefeed_hints_received", "changefeed_hints", ["received_at"])
    op.create_table(
        "changefeed_hint_reads",
        sa.Column("hid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("done_at", sa.Double, nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("changefeed_hint_reads")
    op.drop_index("changefeed_hints_received", "changefeed_hints")
    op.drop_index("changefeed_hints_connector", "changefeed_hints")
    op.drop_table("changefeed_hints")
    with op.batch_alter_table("changefeed_streams") as batch:
        for name, _kind, _default in reversed(_COLUMNS):
            batch.drop_column(name)
