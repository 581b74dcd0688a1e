"""SQL for the per-stream state row, shared by the SQLite and the PostgreSQL stores.

Written with ``?`` placeholders and a ``{streams}`` table name; ``StreamSql.for_store``
adapts both, so the two stores cannot drift apart on what a checkpoint means.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

_CLEAR_SCAN = (
    "scan_kind=NULL, scan_phase=NULL, scan_cursor=NULL, scan_pages=0, scan_since=NULL, "
    "scan_started_at=NULL, scan_max_modified=NULL"
)


@dataclass(frozen=True)
class StreamSql:
    """One statement per state change of a stream."""

    begin_scan: str = (
        "UPDATE {streams} SET scan_number=scan_number+1, scan_kind=?, scan_phase='pages', "
        "scan_cursor=NULL, scan_pages=0, scan_since=?, scan_started_at=?, "
        "scan_max_modified=NULL WHERE sid=?"
    )
    # (next cursor, page max modified_at twice, sid)
    advance: str = (
        "UPDATE {streams} SET scan_cursor=?, scan_pages=scan_pages+1, "
        "scan_max_modified=CASE WHEN scan_max_modified IS NULL OR ? > scan_max_modified "
        "THEN ? ELSE scan_max_modified END WHERE sid=?"
    )
    begin_deletes: str = "UPDATE {streams} SET scan_phase='deletes', scan_cursor=NULL WHERE sid=?"
    # (now, delete guard, now, sid)
    finish_scan: str = (
        "UPDATE {streams} SET "
        "watermark=CASE WHEN watermark IS NULL OR scan_max_modified > watermark "
        "  THEN coalesce(scan_max_modified, watermark) ELSE watermark END, "
        "last_full_scan_started_at=CASE WHEN scan_kind='full' THEN scan_started_at "
        "  ELSE last_full_scan_started_at END, "
        "last_full_scan_at=CASE WHEN scan_kind='full' THEN ? ELSE last_full_scan_at END, "
        "delete_guard=CASE WHEN scan_kind='full' THEN ? ELSE delete_guard END, "
        f"last_scan_at=?, last_error=NULL, last_error_at=NULL, {_CLEAR_SCAN} WHERE sid=?"
    )
    record_error: str = "UPDATE {streams} SET last_error=?, last_error_at=? WHERE sid=?"
    abandon_scan: str = f"UPDATE {{streams}} SET {_CLEAR_SCAN} WHERE sid=?"

    @classmethod
    def for_store(cls, streams_table: str, placeholder: str) -> StreamSql:
        """The statements with this store's table name and placeholder (``?`` or ``%s``)."""
        base = cls()
        return cls(
            **{
                f.name: getattr(base, f.name)
                .replace("{streams}", streams_table)
                .replace("?", placeholder)
                for f in fields(cls)
            }
        )
