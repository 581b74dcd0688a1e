"""The replay property with what real sources do: stale copies, bare modified_at bumps, and
changes only to ignored fields (pure: the differ and the event builder, no I/O).

A source evolves through generations; each full scan serves every live record, sometimes
as a stale copy (an older version: a lagging replica behind the API). Replaying the events
of consecutive scans must give, for each record of the last scan, the newest version served
since it (re)appeared — so exactly the source when the last scan served no stale copy —
minus ``ignore_fields``; and no event may change nothing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.diff import deleted_events, diff_page
from daemon.models import StoredRow, StreamKey

KEY = StreamKey("acme", "enrollments")
IGNORE = ("modified_at", "synced")
IDS = [f"id{i}" for i in range(8)]

# Per generation, per live id: (grade, synced, touch, stale).
#   grade   the content that matters;
#   synced  an ignored field;
#   touch   whether modified_at moves when grade and synced stay the same (a bare bump);
#   stale   serve the version of an earlier generation instead of the current one.
generation_st = st.dictionaries(
    keys=st.sampled_from(IDS),
    values=st.tuples(st.integers(0, 2), st.integers(0, 1), st.booleans(), st.booleans()),
    max_size=len(IDS),
)


def _content(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in IGNORE}


@settings(max_examples=300, deadline=None)
@given(st.lists(generation_st, min_size=1, max_size=7), st.integers(1, 4))
def test_replay_equals_newest_served_version(generations: list[dict], page_size: int) -> None:
    store: dict[str, StoredRow] = {}
    replica: dict[str, dict] = {}
    history: dict[str, list[dict]] = {}  # versions of each live id, oldest first
    newest: dict[str, dict] = {}  # newest version served since the id (re)appeared
    for g, generation in enumerate(generations):
        served: list[dict] = []
        all_current = True
        for rid in sorted(generation):
            grade, synced, touch, stale = generation[rid]
            versions = history.setdefault(rid, [])
            last = versions[-1] if versions else None
            same = last is not None and (last["grade"], last["synced"]) == (grade, synced)
            if same and not touch:
                current = last
            else:
                current = {
                    "id": rid,
                    "modified_at": f"2025-01-{1 + g:02d}T00:00:00Z",
                    "grade": grade,
                    "synced": synced,
                }
                versions.append(current)
            copy = versions[0] if stale and len(versions) > 1 else current
            all_current &= copy is current
            served.append(copy)
            if rid not in newest or copy["modified_at"] > newest[rid]["modified_at"]:
                newest[rid] = copy
        for rid in set(history) - set(generation):  # gone from the source
            del history[rid]
            newest.pop(rid, None)

        seen: set[str] = set()
        for start in range(0, len(served), page_size):
            page = served[start : start + page_size]
            rows = {r["id"]: store[r["id"]] for r in page if r["id"] in store}
            result = diff_page(KEY, page, rows, ignore_fields=IGNORE)
            for event in result.events:
                before = replica.get(event.record_id)
                assert before is None or _content(before) != _content(event.record), event
                replica[event.record_id] = event.record
            for write in result.writes:
                store[write.id] = StoredRow(
                    write.id, write.modified_at, write.content_hash, write.record
                )
            seen.update(result.seen_ids)
        gone = [row for rid, row in sorted(store.items()) if rid not in seen]
        for event in deleted_events(KEY, gone):
            replica.pop(event.record_id)
            store.pop(event.record_id)

        got = {rid: _content(record) for rid, record in replica.items()}
        assert got == {rid: _content(version) for rid, version in newest.items()}
        if all_current:
            assert got == {rid: _content(vs[-1]) for rid, vs in history.items()}
