"""The record store against a brute-force model (hypothesis)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bindbee_sim import SimState
from bindbee_sim.query import ListQuery
from bindbee_sim.times import format_us, parse_us
from tests.sim_support import (
    unb64,
)

# ---- the store against a brute-force model ---------------------------------------------------


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["create", "update", "delete"]), st.integers(0, 30), st.integers(0, 10_000)
    ),  # few targets: repeated edits
    max_size=25,
)
_BASE_US = parse_us("2024-03-01T00:00:00Z")


def _apply(
    state: SimState, model: dict[str, dict], op: str, a: int, b: int, users: list[str]
) -> None:
    """Apply one edit to the simulator and to a plain-dict model of what it should hold."""
    ids = sorted(model)
    if op == "create":
        fields: dict = {"user": users[a % len(users)], "remote_id": f"R{a % 7}"}
        if b % 3 == 0:  # an explicit id inside the generated range, not at the end
            fields["id"] = ids[b % len(ids)][:-4] + f"{b % 65536:04x}"
            if fields["id"] in model:
                return
        if b % 2 == 0:
            fields["modified_at"] = format_us(_BASE_US + b)
        record = state.create("acme", "enrollments", fields)
        assert {k: record[k] for k in fields} == fields
        model[record["id"]] = record
    elif op == "update":
        target = ids[a % len(ids)]
        fields = {
            "user": users[b % len(users)],
            "start_date": None if b % 5 == 0 else format_us(_BASE_US + b * 10**9),
        }
        if b % 4 == 0:  # pinned, possibly older than before
            fields["modified_at"] = format_us(_BASE_US + b)
        record = state.update("acme", "enrollments", target, fields)
        expected = {**model[target], **fields}
        if "modified_at" not in fields:
            assert record["modified_at"] > max(r["modified_at"] for r in model.values())
            expected["modified_at"] = record["modified_at"]
        assert record == expected
        model[target] = record
    else:
        state.delete("acme", "enrollments", ids[a % len(ids)])
        del model[ids[a % len(ids)]]


def _filter(
    which: str, pivot: int, records: list[dict], users: list[str]
) -> tuple[dict, Callable[[dict], bool]]:
    """ListQuery keywords for one filter, and the same filter as a plain predicate."""
    if which == "user":
        user = users[pivot % len(users)]
        return {"equals": {"user": user}}, lambda r: r["user"] == user
    if which == "modified_after":
        stamps = sorted(r["modified_at"] for r in records)
        # Odd pivots: few newer records (the index path); even: any (the walking path).
        bound = parse_us(stamps[-1 - pivot % 20] if pivot % 2 else stamps[pivot % len(stamps)])
        return {"modified_after": bound}, lambda r: parse_us(r["modified_at"]) > bound
    if which == "start_date":
        low = _BASE_US + pivot * 10**9
        return (
            {"ranges": {"start_date": (low, None)}},
            lambda r: r["start_date"] is not None and parse_us(r["start_date"]) >= low,
        )
    if which == "remote_id":
        remote = f"R{pivot % 7}" if pivot % 2 else f"ENR-{pivot % 170:07d}"
        return {"remote_id": remote}, lambda r: r["remote_id"] == remote
    return {}, lambda r: True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=_OPS,
    page_size=st.integers(1, 30),
    pivot=st.integers(0, 10_000),
    which=st.sampled_from(["none", "user", "modified_after", "start_date", "remote_id"]),
)
def test_pages_match_a_brute_force_filter(ops, page_size, pivot, which):
    state = SimState(
        {"acme": "tok"}, enrollments=160, seed=5, api_key="k", honor_modified_after=True
    )
    users = state.ids("acme", "users")
    model = {r["id"]: r for r in state.records("acme", "enrollments")}
    for op, a, b in ops:
        _apply(state, model, op, a, b, users)
    records = [model[k] for k in sorted(model)]
    assert state.records("acme", "enrollments") == records
    assert all(state.get("acme", "enrollments", r["id"]) == r for r in records)
    query_kw, keep = _filter(which, pivot, records, users)
    got: list[str] = []
    after = None
    for _ in range(1000):
        with state.lock:
            body = state.datasets["acme"].page(
                "enrollments", ListQuery(page_size=page_size, after=after, **query_kw)
            )
        got += [i["id"] for i in body["items"]]
        if body["cursor"] is None:
            break
        assert body["page_size"] == page_size
        after = unb64(body["cursor"])
    assert got == [r["id"] for r in records if keep(r)]
