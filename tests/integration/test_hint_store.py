"""The state store's hints, targeted-read commits and walk-spacing count, on a real SQLite
file and on the machine's PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import LeaseLost
from daemon.models import Message, RowWrite, StreamKey
from daemon.state import StateStore, open_store

KEY = StreamKey("acme", "enrollments")
USERS = StreamKey("acme", "users")


def write(rid: str, grade: int = 1) -> RowWrite:
    return RowWrite(rid, "2025-01-01T00:00:00.000000Z", f"h-{rid}-{grade}", {"id": rid})


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("pg_schema")


@pytest.fixture
def store(target: str):
    s = open_store(target)
    yield s
    s.close()


def walked(store: StateStore, key: StreamKey, ids: str, started: float) -> None:
    """A completed full scan of ``key`` that started at ``started`` and stored ``ids``."""
    store.begin_scan(key, "full", None, started)
    store.commit_page(key, [write(r) for r in ids], list(ids), None, None)
    store.finish_scan(key, started + 1, None)


def hint(store: StateStore, dedupe: str, ids: list[str], now: float, walk: bool = False) -> bool:
    return store.add_hint("c1", "s1", dedupe, ids, walk=walk, now=now, retention_seconds=100)


def test_a_hint_is_kept_once_and_read_once_per_stream(store: StateStore) -> None:
    assert hint(store, "d1", ["a", "z"], now=10.0)
    assert not hint(store, "d1", ["a", "z"], now=11.0)  # a replay adds nothing
    assert store.unread_hints(KEY, "c1") == []  # never before the first full scan
    walked(store, KEY, "ab", started=5.0)
    walked(store, USERS, "u", started=5.0)
    [unread] = store.unread_hints(KEY, "c1")
    assert unread.ids == ("a", "z") and not unread.walk and unread.sync_id == "s1"
    assert store.locate("acme", ["a", "u", "z"]) == {"a": "enrollments", "u": "users"}
    store.commit_reads(KEY, [write("z")], ["b"], [], read_hints=[unread.hid], now=12.0)
    assert store.unread_hints(KEY, "c1") == []
    assert len(store.unread_hints(USERS, "c1")) == 1  # each stream reads it
    hint(store, "d3", ["y"], now=13.0)
    assert store.hint_status(KEY).hints_unread == 1  # the connector's id, from its reads
    assert store.state(KEY).records == 2  # a, z (b deleted)
    assert store.hinted_ids("c1", 0.0) == {"a", "z", "y"}
    walked(store, KEY, "az", started=20.0)
    assert hint(store, "d2", ["q"], now=15.0)
    assert store.unread_hints(KEY, "c1") == []  # received before the last walk: covered


def test_hints_older_than_the_retention_go(store: StateStore) -> None:
    walked(store, KEY, "a", started=1.0)
    hint(store, "old", ["a"], now=2.0)
    store.add_hint("c1", None, "new", ["b"], walk=False, now=500.0, retention_seconds=100)
    assert [h.ids for h in store.unread_hints(KEY, "c1")] == [("b",)]


def test_reads_during_an_unfinished_walk_are_seen_by_it(store: StateStore) -> None:
    walked(store, KEY, "abc", started=1.0)
    store.begin_scan(KEY, "full", None, 10.0)
    store.commit_page(KEY, [], ["a"], "p2", None)
    store.commit_reads(KEY, [write("n", 2)], [], [])  # a new record, read by id
    store.mark_seen(KEY, ["b"])  # a stored one the reads found unchanged
    assert sorted(r.id for r in store.missing_rows(KEY, 10)) == ["c"]


def test_the_sync_count_is_once_per_sync_and_starts_again_at_a_walk(store: StateStore) -> None:
    walked(store, KEY, "a", started=1.0)
    assert store.count_sync(KEY, "2026-01-01T00:00:00.000000Z").syncs == 1
    assert store.count_sync(KEY, "2026-01-01T00:00:00.000000Z").syncs == 1  # same sync
    assert store.count_sync(KEY, "2026-01-02T00:00:00.000000Z").syncs == 2
    store.cover_sync(KEY, "2026-01-02T00:00:00.000000Z")
    assert store.state(KEY).sync_bookmark == "2026-01-02T00:00:00.000000Z"
    store.force_walk([KEY], 2.0)
    assert store.walk_state(KEY).forced
    store.begin_scan(KEY, "full", None, 3.0)
    store.finish_scan(KEY, 4.0, None, walked=(4, 0))
    walk = store.walk_state(KEY)
    assert (walk.syncs, walk.spacing, walk.forced, walk.hint_missed) == (0, 4, False, 0)
    store.begin_scan(KEY, "full", None, 5.0)
    store.finish_scan(KEY, 6.0, None, walked=(1, 3))
    status = store.hint_status(KEY, "c1")
    assert (status.spacing, status.hint_missed, status.hint_missed_total) == (1, 3, 3)


def test_a_hint_pushes_the_due_time_aside_and_gives_it_back(store: StateStore) -> None:
    store.ensure_streams([KEY])
    store.postpone(KEY, 1000.0)
    store.request_hint([KEY], 10.0)
    assert store.state(KEY).due_at == 10.0
    assert store.take_hint_due(KEY) == 1000.0
    assert store.take_hint_due(KEY) is None


def test_reads_are_fenced_like_a_page(target: str) -> None:
    with open_store(target, owner="one") as one, open_store(target, owner="two") as two:
        walked(one, KEY, "a", started=1.0)
        assert one.claim(KEY)
        one.reset(KEY)  # drops the lease: the holder is fenced out
        message = Message("t", b"k", b"v")
        with pytest.raises(LeaseLost):
            one.commit_reads(KEY, [write("b")], [], [message])
        assert two.pending(KEY) == []


def test_a_forced_walk_is_cleared_only_by_a_walk_started_at_or_after_it(
    store: StateStore,
) -> None:
    walked(store, KEY, "a", started=1.0)
    store.begin_scan(KEY, "full", None, 10.0)  # a walk under way
    store.force_walk([KEY], 11.0)  # a 413 during it
    assert store.state(KEY).due_at == 11.0  # due now: the refused sync is walked
    store.finish_scan(KEY, 12.0, None, walked=(1, 0))
    assert store.walk_state(KEY).forced_at == 11.0  # the older walk does not clear it
    store.begin_scan(KEY, "full", None, 13.0)
    store.finish_scan(KEY, 14.0, None, walked=(1, 0))
    assert not store.walk_state(KEY).forced


def test_a_window_with_an_unreadable_hint_cannot_be_measured(store: StateStore) -> None:
    walked(store, KEY, "a", started=1.0)
    hint(store, "ok", ["a"], now=3.0)
    assert not store.hints_unreadable(KEY, "c1", 1.0)
    hint(store, "big", [], now=4.0, walk=True)  # over max_hint_ids: walk instead
    assert store.hints_unreadable(KEY, "c1", 1.0)
    assert not store.hints_unreadable(KEY, "c1", 5.0)  # before the window
    store.force_walk([KEY], 6.0)  # a 413
    assert store.hints_unreadable(KEY, "c1", 5.0)
    assert not store.hints_unreadable(KEY, "c1", 7.0)


def test_hinted_ids_after_a_hint_id_fetch_only_newer_hints(store: StateStore) -> None:
    hint(store, "d1", ["a"], now=2.0)
    ids, last = store.hinted_ids_after("c1", 0.0, -1)
    assert ids == {"a"}
    assert store.hinted_ids_after("c1", 0.0, last) == (set(), last)
    hint(store, "d2", ["b"], now=3.0)
    ids, newer = store.hinted_ids_after("c1", 0.0, last)
    assert ids == {"b"} and newer > last


def test_old_hints_are_pruned_at_most_once_a_minute(store: StateStore) -> None:
    walked(store, KEY, "a", started=1.0)
    store.add_hint("c1", None, "h1", ["a"], walk=False, now=200.0, retention_seconds=100)
    store.add_hint("c1", None, "h2", ["b"], walk=False, now=230.0, retention_seconds=10)
    # Pruned at 200 s: the next prune comes a minute later, so h1 (older than 10 s) stays.
    assert [h.ids for h in store.unread_hints(KEY, "c1")] == [("a",), ("b",)]
    store.add_hint("c1", None, "h3", ["c"], walk=False, now=261.0, retention_seconds=10)
    assert [h.ids for h in store.unread_hints(KEY, "c1")] == [("c",)]
