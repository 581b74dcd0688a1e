"""The state store's tables: one set of names and columns for SQLite and PostgreSQL.

Every name carries the ``changefeed_`` prefix so the tables can share a PostgreSQL
database (or schema) with other applications. The Alembic revisions under
``migrations/versions`` are the source of truth for what is on disk; this module is
what the store's statements are written against and must match the head revision.
"""

from __future__ import annotations

import sqlalchemy as sa

VERSION_TABLE = "changefeed_alembic_version"

metadata = sa.MetaData()

streams = sa.Table(
    "changefeed_streams",
    metadata,
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
    sa.Column("sync_bookmark", sa.Text),
    sa.Column("scan_sync", sa.Text),
    sa.Column("connector_state", sa.Text),
    # Shared by every replica: when the stream is next due (NULL: now), the last request
    # for a scan and the sync it was for, and an operator's resync until it is done.
    sa.Column("due_at", sa.Double),
    sa.Column("requested_at", sa.Double),
    sa.Column("requested_sync", sa.Text),
    sa.Column("resync_requested_at", sa.Double),
    # Walk spacing (models.<m>.full_scan_every_syncs), shared by the replicas: syncs
    # completed since the last completed walk, the last sync counted (its
    # last_sync_start_time: counting is idempotent per sync), the current spacing (auto),
    # when a walk was last forced by a hint that could not be read (413; cleared by a walk
    # started at or after it completes), the last walk's hint_missed
    # and its running total; the due time a hint-only pass puts back.
    sa.Column("walk_syncs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("walk_counted_sync", sa.Text),
    sa.Column("walk_spacing", sa.Integer, nullable=False, server_default="1"),
    sa.Column("walk_forced_at", sa.Double),
    sa.Column("hint_missed", sa.Integer),
    sa.Column("hint_missed_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("due_before_hint", sa.Double),
    sa.UniqueConstraint("connector", "model"),
    sa.Index("changefeed_streams_due", "due_at"),
    # Every committed page updates the stream's row: room for those updates on its page.
    postgresql_with={"fillfactor": 50},
)

# The last published version of each record, keyed by (stream, id). ``hash`` and ``record``
# are packed (``codec``: 16 bytes; a zstd frame, with the stream's dictionary once it has
# one); ``remote_id`` is the record's own, for matching rejected items to stored rows.
records = sa.Table(
    "changefeed_records",
    metadata,
    sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("modified_at", sa.Text, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.Column("record", sa.LargeBinary, nullable=False),
    sa.Column("remote_id", sa.Text),
    sqlite_with_rowid=False,
    # Rows are updated only when their record changed: a tenth of the page kept free takes
    # such updates on their page (HOT: no index entry, pruned without vacuum). 80 cost
    # 35 B more per record (state 604 B/record after 3 steady scans without vacuum).
    postgresql_with={"fillfactor": 90},
)

# The ids a full scan saw, one row per committed page (or group of pages, or
# ``mark_seen`` call): a steady scan writes one narrow row per page instead of one per
# record. A full scan's deletes are the stream's records in none of its rows (one
# anti-join); the rows go when the scan ends. ``uuids``: canonical UUIDs, 16 bytes each
# (PostgreSQL), ``ids``: a JSON array of the others.
scan_ids = sa.Table(
    "changefeed_scan_ids",
    metadata,
    sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("scan", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("uuids", sa.LargeBinary),
    sa.Column("ids", sa.Text),
    sqlite_with_rowid=False,
)

# Each stream's zstd dictionary for its record blobs (``codec``), by number: a blob names
# the one it was written with. Never deleted (a number is never reused), even by reset.
dictionaries = sa.Table(
    "changefeed_dictionaries",
    metadata,
    sa.Column("num", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sid", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

# The messages of the last committed page until Kafka acknowledged them: a page's rows
# and its events are committed together, then published, then cleared, so the store never
# describes a page Kafka may not have, nor Kafka one the store does not. One row per
# stream, the messages packed and compressed (``codec.pack_messages``).
outbox = sa.Table(
    "changefeed_outbox",
    metadata,
    sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("messages", sa.LargeBinary, nullable=False),
)

# Poison records already dead-lettered, by a fingerprint of their content: the same bad
# content goes to the dead-letter topic once, not once per pass. Written with the page
# that rejected it (its message in the same outbox); ``scan`` is the last scan that saw
# it, so a full scan can tell which ones it met (and forget those it no longer meets).
# ``record_id`` is the stored record it stands for, when the item can be identified.
rejected = sa.Table(
    "changefeed_rejected",
    metadata,
    sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("fingerprint", sa.Text, primary_key=True),
    sa.Column("first_seen", sa.Double, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("record_id", sa.Text),
    sa.Column("scan", sa.Integer, nullable=False),
    sqlite_with_rowid=False,
)

# Verified connector_data_modified deliveries, written before they are answered 200
# (Bindbee never redelivers). ``connector_id`` is Bindbee's id of the connector; ``dedupe``
# (sync id + body digest) makes a replayed delivery a no-op; ``ids`` the JSON list of
# record ids; ``walk`` 1 when they cannot be read by id (over the cap, unsafe): walk.
hints = sa.Table(
    "changefeed_hints",
    metadata,
    sa.Column("hid", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("connector_id", sa.Text, nullable=False),
    sa.Column("sync_id", sa.Text),
    sa.Column("dedupe", sa.Text, nullable=False, unique=True),
    sa.Column("ids", sa.LargeBinary, nullable=False),
    sa.Column("walk", sa.Integer, nullable=False, server_default="0"),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Index("changefeed_hints_connector", "connector_id", "received_at"),
    sa.Index("changefeed_hints_received", "received_at"),  # pruning by age
)

# Which stream has read which hint (committed with the read's last rows, under the
# stream's lease): one targeted read per hint and stream, fleet-wide.
hint_reads = sa.Table(
    "changefeed_hint_reads",
    metadata,
    sa.Column("hid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("done_at", sa.Double, nullable=False),
    sqlite_with_rowid=False,
)

# Who holds a piece of work until when: ``stream:<sid>`` (a pass) or ``sync-watcher``.
# A lease not renewed by ``expires_at`` is free for anyone; every write of a pass checks
# its token (fencing), so a holder that lost its lease writes nothing more.
leases = sa.Table(
    "changefeed_leases",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("acquired_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    # Where the holder runs: a process on this host (and pid namespace) that is gone has
    # its leases freed at once by the next process there, not after the lease period.
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)

# Each running process's heartbeat: live replicas and their free workers make claims fair;
# host and pid let a restarted process free the leases of its dead predecessor at once.
replicas = sa.Table(
    "changefeed_replicas",
    metadata,
    sa.Column("replica", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("heartbeat_at", sa.Double, nullable=False),
    sa.Column("workers", sa.Integer, nullable=False),
    sa.Column("busy", sa.Integer, nullable=False),
)

# The columns a StreamState is built from, in its field order (after ``key``).
STATE_COLUMNS = (
    streams.c.watermark,
    streams.c.scan_number,
    streams.c.scan_kind,
    streams.c.scan_phase,
    streams.c.scan_cursor,
    streams.c.scan_pages,
    streams.c.scan_since,
    streams.c.scan_started_at,
    streams.c.scan_max_modified,
    streams.c.last_full_scan_started_at,
    streams.c.last_full_scan_at,
    streams.c.last_scan_at,
    streams.c.delete_guard,
    streams.c.last_error,
    streams.c.last_error_at,
    streams.c.sync_bookmark,
    streams.c.scan_sync,
    streams.c.connector_state,
    streams.c.due_at,
    streams.c.requested_at,
    streams.c.requested_sync,
    streams.c.resync_requested_at,
)
