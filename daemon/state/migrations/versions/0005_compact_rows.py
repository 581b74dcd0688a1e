"""Compact rows: a scan's seen ids per page, packed hashes, zstd blobs, remote_id.

- ``changefeed_seen`` (one row per record, rewritten by every full scan) goes. The scan
  in progress keeps what it saw: its marks become one ``changefeed_scan_ids`` row per
  stream (part 0), so a store stopped mid-pages or mid-deletes resumes with the same
  deletes ahead of it, and the outbox is untouched (sent once, by the next pass).
- ``changefeed_records`` is copied once into its new shape (one write per row, no dead
  tuples left by UPDATEs): ``hash`` as 16 bytes (``codec.pack_hash``: other spellings
  kept as text behind a marker), ``remote_id`` taken from the record. Blobs are copied
  as they are: raw JSON is still read, and a row is compressed when it is next written.
- ``changefeed_dictionaries``: each stream's zstd dictionary.
- ``changefeed_outbox``: one row per stream holding its pending messages packed
  (``codec.pack_messages``); a pending outbox is carried over as it was, in order.
- PostgreSQL: fillfactor 90 on records and 50 on streams (room for HOT updates).

Every replica stops for this upgrade (old code would read the new tables wrongly).
Measured on PostgreSQL 15 (2 shared cores): 1,000,000 records (710 MB) in 21 s
(docs/operations.md).

Revision ID: 0005_compact_rows
Revises: 0004_leases
Create Date: 2026-12-07
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

from daemon.models import Message
from daemon.state.codec import pack_hash, pack_messages

revision = "0005_compact_rows"
down_revision = "0004_leases"
branch_labels = None
depends_on = None

_COPY = {
    # 32 hex digits -> their 16 bytes; anything else: 0xff + its UTF-8 (+ 0xff if that
    # would be 16 bytes long), as codec.pack_hash writes it.
    "postgresql": r"""
        INSERT INTO changefeed_records_new (sid, id, modified_at, hash, record, remote_id)
        SELECT sid, id, modified_at,
            CASE WHEN hash ~ '^[0-9a-f]{32}$' THEN decode(hash, 'hex')
                 WHEN octet_length(convert_to(hash, 'UTF8')) = 15
                 THEN '\xff'::bytea || convert_to(hash, 'UTF8') || '\xff'::bytea
                 ELSE '\xff'::bytea || convert_to(hash, 'UTF8') END,
            record,
            CASE WHEN position('"remote_id"'::bytea IN record) > 0
                  AND json_typeof(convert_from(record, 'UTF8')::json -> 'remote_id') = 'string'
                 THEN convert_from(record, 'UTF8')::json ->> 'remote_id' END
        FROM changefeed_records""",
    "sqlite": """
        INSERT INTO changefeed_records_new (sid, id, modified_at, hash, record, remote_id)
        SELECT sid, id, modified_at, changefeed_pack_hash(hash), record,
            CASE WHEN json_type(CAST(record AS TEXT), '$.remote_id') = 'text'
                 THEN json_extract(CAST(record AS TEXT), '$.remote_id') END
        FROM changefeed_records""",
}
_AGGREGATE = {"postgresql": "json_agg(s.id)::text", "sqlite": "json_group_array(s.id)"}


def _records_new() -> sa.Table:
    return sa.Table(
        "changefeed_records_new",
        sa.MetaData(),
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("modified_at", sa.Text, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("remote_id", sa.Text),
        sqlite_with_rowid=False,
        postgresql_with={"fillfactor": 90},
    )


def _pack_outbox(bind: sa.Connection) -> None:
    rows = bind.execute(
        sa.text("SELECT sid, topic, key, value, headers FROM changefeed_outbox ORDER BY sid, seq")
    ).fetchall()
    pending: dict[int, list[Message]] = {}
    for sid, topic, key, value, headers in rows:
        names = orjson.loads(bytes(headers))
        message = Message(
            topic,
            bytes(key),
            None if value is None else bytes(value),
            tuple((name, bytes.fromhex(hexed)) for name, hexed in names),
        )
        pending.setdefault(sid, []).append(message)
    op.drop_table("changefeed_outbox")
    table = op.create_table(
        "changefeed_outbox",
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("messages", sa.LargeBinary, nullable=False),
    )
    if pending:
        op.bulk_insert(
            table, [{"sid": sid, "messages": pack_messages(m)} for sid, m in pending.items()]
        )


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    _pack_outbox(bind)
    op.create_table(
        "changefeed_scan_ids",
        sa.Column("sid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("scan", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("uuids", sa.LargeBinary),
        sa.Column("ids", sa.Text),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "changefeed_dictionaries",
        sa.Column("num", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sid", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    # The scan in progress: what it saw so far, as one row per stream.
    op.execute(
        "INSERT INTO changefeed_scan_ids (sid, scan, part, uuids, ids) "
        f"SELECT s.sid, t.scan_number, 0, NULL, {_AGGREGATE[dialect]} "
        "FROM changefeed_seen s JOIN changefeed_streams t ON t.sid = s.sid "
        "WHERE s.scan = t.scan_number AND t.scan_phase IS NOT NULL AND t.scan_kind = 'full' "
        "GROUP BY s.sid, t.scan_number"
    )
    op.drop_table("changefeed_seen")
    _records_new().create(bind)
    if dialect == "sqlite":
        driver = bind.connection.driver_connection
        driver.create_function("changefeed_pack_hash", 1, pack_hash, deterministic=True)
    op.execute(_COPY[dialect])
    op.drop_table("changefeed_records")
    op.rename_table("changefeed_records_new", "changefeed_records")
    if dialect == "postgresql":
        op.execute(
            "ALTER TABLE changefeed_records "
            "RENAME CONSTRAINT changefeed_records_new_pkey TO changefeed_records_pkey"
        )
        op.execute("ALTER TABLE changefeed_streams SET (fillfactor = 50)")
        # The copy has no statistics yet: the first scans' plans need them.
        op.execute("ANALYZE changefeed_records")


def downgrade() -> None:
    raise NotImplementedError(
        "0005_compact_rows cannot be undone (record blobs are compressed): restore the "
        "backup taken before the upgrade"
    )
