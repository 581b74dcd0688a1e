"""The compact layout (0005) on both databases: seen ids per page, mark_seen, packed rows."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from daemon.errors import LeaseLost
from daemon.models import RowWrite, StreamKey
from daemon.state import StateStore, open_store, seen
from daemon.state.codec import SAMPLES, pack_hash, pack_ids, unpack_hash

KEY = StreamKey("acme", "enrollments")
T = "2025-01-01T00:00:00.000000Z"


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("pg_schema")


@pytest.fixture
def store(target: str):
    with open_store(target) as s:
        yield s


def _write(rid: str, n: int = 0) -> RowWrite:
    record = {"id": rid, "remote_id": f"R-{rid}", "grade": n, "text": "lorem ipsum " * 8}
    return RowWrite(rid, T, uuid.uuid5(uuid.NAMESPACE_URL, f"{rid}{n}").hex, record)


def _count(store: StateStore, sql: str) -> int:
    with store.backend.engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


@pytest.mark.parametrize(
    "digest", ["0" * 32, "f" * 32, "h1", "", "x" * 15, "é" * 7 + "x", "A" * 32, "ab" * 20]
)
def test_hashes_pack_to_bytes_and_back_exactly(digest: str) -> None:
    packed = pack_hash(digest)
    assert unpack_hash(packed) == digest
    canonical = len(digest) == 32 and set(digest) <= set("0123456789abcdef")
    assert (len(packed) == 16) == canonical


def test_ids_pack_uuids_and_keep_every_other_spelling() -> None:
    ids = [str(uuid.uuid4()), "plain", str(uuid.uuid4()).upper(), "{" + str(uuid.uuid4()) + "}"]
    uuids, others = pack_ids(ids, uuids=True)
    assert uuids is not None and len(uuids) == 16
    assert uuid.UUID(bytes=uuids) == uuid.UUID(ids[0])
    assert orjson.loads(others) == ids[1:]
    assert pack_ids(ids, uuids=False) == (None, orjson.dumps(ids).decode())


def test_a_steady_page_writes_one_row_not_one_per_record(store: StateStore) -> None:
    ids = [str(uuid.uuid4()) for _ in range(99)] + ["Not-A-Uuid"]
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [_write(i) for i in ids], ids, None, T)
    store.finish_scan(KEY, 2.0, None)
    store.begin_scan(KEY, "full", None, 3.0)
    store.commit_page(KEY, [], ids[:50], "c", T)
    store.commit_page(KEY, [], ids[50:], None, T, pages=2)
    assert _count(store, "SELECT count(*) FROM changefeed_scan_ids") == 2
    assert store.state(KEY).scan_pages == 3
    assert store.count_missing(KEY) == (0, 100)
    store.finish_scan(KEY, 4.0, None)
    assert _count(store, "SELECT count(*) FROM changefeed_scan_ids") == 0


def test_mark_seen_keeps_ids_written_outside_the_walk_from_the_deletes(
    store: StateStore,
) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [_write(r) for r in "abcd"], list("abcd"), None, T)
    store.finish_scan(KEY, 2.0, None)
    assert store.claim(KEY)
    store.begin_scan(KEY, "full", None, 3.0)
    store.commit_page(KEY, [], ["a"], "c2", T)
    store.mark_seen(KEY, ["b", "b"])  # e.g. a targeted read of b between pages
    store.mark_seen(KEY, ["c"])
    store.mark_seen(KEY, [])
    assert store.count_missing(KEY) == (1, 4)
    assert [row.id for row in store.missing_rows(KEY, 10)] == ["d"]
    store.finish_scan(KEY, 4.0, None)
    store.begin_scan(KEY, "full", None, 5.0)  # marks are the scan's: a new one starts empty
    assert store.count_missing(KEY) == (4, 4)
    with store.backend.engine.begin() as conn:  # another replica took the lease over
        conn.execute(sa.text("UPDATE changefeed_leases SET token = 'theirs'"))
    with pytest.raises(LeaseLost):
        store.mark_seen(KEY, ["d"])
    assert store.count_missing(KEY) == (4, 4)


@pytest.mark.parametrize("few", [10_000, 2])
def test_counting_the_unseen_rows_keeps_their_ids_for_the_deletes(
    store: StateStore, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """count_missing fetches up to FEW_MISSING unseen ids and the delete phase uses them
    (one anti-join a scan); past that it only counts. Either way the figures are exact,
    and ids seen after the count (a later page, a targeted read) are no longer handed out
    for deletion."""
    monkeypatch.setattr(seen, "FEW_MISSING", few)
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [_write(r) for r in "abcdef"], list("abcdef"), None, T)
    store.finish_scan(KEY, 2.0, None)
    store.begin_scan(KEY, "full", None, 3.0)
    store.commit_page(KEY, [], ["a", "f"], "c2", T)
    assert store.count_missing(KEY) == (4, 6)
    store.commit_page(KEY, [], ["b"], "c3", T)  # a page committed after the count
    assert store.count_missing(KEY) == (3, 6)
    store.commit_reads(KEY, [_write("c", 1)], [], [])  # a targeted read of c
    assert [row.id for row in store.missing_rows(KEY, 10)] == ["d", "e"]
    assert store.count_missing(KEY) == (2, 6)
    store.commit_deletes(KEY, ["d"])
    assert store.count_missing(KEY) == (1, 5)
    assert [row.id for row in store.missing_rows(KEY, 10)] == ["e"]


def test_blobs_are_compressed_with_the_streams_dictionary_and_read_back(
    store: StateStore, target: str
) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    writes = [_write(f"r{n:05d}", n) for n in range(SAMPLES + 50)]
    for start in range(0, len(writes), 100):
        page = writes[start : start + 100]
        store.commit_page(KEY, page, [w.id for w in page], str(start), T)
    assert _count(store, "SELECT count(*) FROM changefeed_dictionaries") == 1
    ids = [w.id for w in writes]
    rows = store.load_rows(KEY, ids[:5] + ids[-5:])
    for w in writes[:5] + writes[-5:]:
        assert rows[w.id].record == w.record and rows[w.id].content_hash == w.content_hash
        assert rows[w.id].blob == orjson.dumps(w.record)
    raw = sum(len(orjson.dumps(w.record)) for w in writes[-50:])
    stored = _count(
        store, "SELECT sum(length(record)) FROM changefeed_records WHERE id >= 'r01000'"
    )
    assert stored < raw / 3  # the dictionary's rows
    assert store.find_remote_ids(KEY, ["R-r00003", "R-nope"]) == {"R-r00003": "r00003"}
    store.finish_scan(KEY, 2.0, None)
    store.close()
    with open_store(target) as other:  # another process reads the dictionary back
        assert other.load_rows(KEY, ids[-1:])[ids[-1]].record == writes[-1].record
        other.begin_scan(KEY, "full", None, 3.0)
        other.commit_page(KEY, [], ids[:-1], None, T)
        assert [row.record for row in other.missing_rows(KEY, 5)] == [writes[-1].record]
