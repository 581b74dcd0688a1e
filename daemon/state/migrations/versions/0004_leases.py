"""Leases and shared due times: replicas on one PostgreSQL share the streams.

``changefeed_leases`` holds one row per claimed piece of work (``stream:<sid>`` for a
stream's pass, ``sync-watcher`` for the one connectors-list reader of a fleet): who holds
it, with which token, until when. ``changefeed_replicas`` is each live process's
heartbeat (its free workers make claims fair). On the stream row, ``due_at`` is when the
stream is next due (NULL: now), ``requested_at``/``requested_sync`` the last request for
a scan (a Bindbee sync, a webhook hint) and ``resync_requested_at`` an operator's
`resync` until a full scan started after it completes. New tables and nullable columns:
existing stores keep every row, and every stream is due at once after the upgrade.

Revision ID: 0004_leases
Revises: 0003_rejected_items
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_leases"
down_revision = "0003_rejected_items"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("changefeed_streams", sa.Column("due_at", sa.Double))
    op.add_column("changefeed_streams", sa.Column("requested_at", sa.Double))
    op.add_column("changefeed_streams", sa.Column("requested_sync", sa.Text))
    op.add_column("changefeed_streams", sa.Column("resync_requested_at", sa.Double))
    op.create_index("changefeed_streams_due", "changefeed_streams", ["due_at"])
    op.create_table(
        "changefeed_leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("acquired_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
    )
    op.create_table(
        "changefeed_replicas",
        sa.Column("replica", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("heartbeat_at", sa.Double, nullable=False),
        sa.Column("workers", sa.Integer, nullable=False),
        sa.Column("busy", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("changefeed_replicas")
    op.drop_table("changefeed_leases")
    op.drop_index("changefeed_streams_due", "changefeed_streams")
    with op.batch_alter_table("changefeed_streams") as batch:
        batch.drop_column("resync_requested_at")
        batch.drop_column("requested_sync")
        batch.drop_column("requested_at")
        batch.drop_column("due_at")
