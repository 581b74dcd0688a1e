"""Sync bookmarks: which Bindbee sync a stream's last full scan, and its current one, cover.

A sync-triggered stream scans after each completed Bindbee sync; ``sync_bookmark`` is
the ``last_sync_start_time`` of the sync its last completed full scan covered, and
``scan_sync`` the one the scan in progress covers (moved to the bookmark when the scan
completes). Existing streams start with no bookmark: their first sync seen Done is
scanned (comparing, not re-sending). ``connector_state`` is why the sync watcher holds the
stream's scans (relink needed, inactive, sync failed), for ``status``.

Revision ID: 0002_sync_bookmark
Revises: 0001_baseline
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_sync_bookmark"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default) on both databases: no table rebuild.
    op.add_column("changefeed_streams", sa.Column("sync_bookmark", sa.Text))
    op.add_column("changefeed_streams", sa.Column("scan_sync", sa.Text))
    op.add_column("changefeed_streams", sa.Column("connector_state", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("changefeed_streams") as batch:
        batch.drop_column("connector_state")
        batch.drop_column("scan_sync")
        batch.drop_column("sync_bookmark")
