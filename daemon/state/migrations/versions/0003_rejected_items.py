"""Poison records: the dead-lettered contents of each stream, so each goes out once.

``changefeed_rejected`` holds one row per distinct bad item content (its fingerprint)
that a stream published to the dead-letter topic: when first seen, why, the record it
stands for when known, and the last scan that met it. A new table: existing stores are
untouched.

Revision ID: 0003_rejected_items
Revises: 0002_sync_bookmark
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_rejected_items"
down_revision = "0002_sync_bookmark"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changefeed_rejected",
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("fingerprint", sa.Text, primary_key=True),
        sa.Column("first_seen", sa.Double, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record_id", sa.Text),
        sa.Column("scan", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("changefeed_rejected")
