"""The /_sim control API in live mode: record edits, stats, reset, the Python mirror."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from bindbee_sim import NotFound, SimServer
from tests import sim_support as support
from tests.sim_support import (
    API_KEY,
    CONNECTORS,
    ENROLLMENTS,
    walk,
)

shared_sim = support.shared_sim
sim = support.sim
client = support.client


# ---- control API ---------------------------------------------------------------------------


def test_control_api_create_patch_delete(sim, client):
    users = sim.ids("acme", "users")
    courses = sim.ids("acme", "courses")
    last_generated = sim.records("acme", "enrollments")[-1]
    created = client.post(
        "/_sim/acme/enrollments",
        json={
            "user": users[0],
            "course": courses[0],
            "start_date": "2026-01-05T09:00:00+01:00",
            "custom_fields": {"team": "blue"},
            "remote_id": "ENR-NEW-1",
        },
    )
    assert created.status_code == 201
    record = created.json()
    assert record["id"] > last_generated["id"]  # minted now: sorts after generated ids
    assert record["start_date"] == "2026-01-05T08:00:00.000000Z"  # normalised to UTC
    assert record["raw_data"] == {} and record["custom_fields"] == {"team": "blue"}
    assert record["end_date"] is None and record["completion"] is None
    assert record["modified_at"] > last_generated["modified_at"]
    assert sim.ids("acme", "enrollments")[-1] == record["id"]
    page = client.get(ENROLLMENTS, params={"remote_id": "ENR-NEW-1"}).json()["items"]
    assert [i["id"] for i in page] == [record["id"]]

    target = sim.records("acme", "enrollments")[10]
    patched = client.patch(
        f"/_sim/acme/enrollments/{target['id']}", json={"end_date": "2026-02-01T00:00:00Z"}
    )
    assert patched.status_code == 200
    body = patched.json()
    assert body["end_date"] == "2026-02-01T00:00:00.000000Z"
    assert body["modified_at"] > record["modified_at"]  # bumped to now
    assert body["modified_at"].endswith("Z") and len(body["modified_at"]) == 27
    assert {k: v for k, v in body.items() if k not in ("end_date", "modified_at")} == {
        k: v for k, v in target.items() if k not in ("end_date", "modified_at")
    }
    assert client.get(f"{ENROLLMENTS}/{target['id']}").json()["end_date"] == body["end_date"]

    pinned = client.patch(
        f"/_sim/acme/enrollments/{target['id']}", json={"modified_at": "2024-06-01T00:00:00Z"}
    ).json()
    assert pinned["modified_at"] == "2024-06-01T00:00:00.000000Z"

    assert client.delete(f"/_sim/acme/enrollments/{target['id']}").status_code == 204
    assert client.get(f"{ENROLLMENTS}/{target['id']}").status_code == 404
    assert target["id"] not in [i["id"] for i in walk(client, page_size=100)]
    assert len(sim.ids("acme", "enrollments")) == 250  # one created, one deleted


def test_control_api_errors(sim, client):
    missing = "018ccbce-a100-7db9-82dc-10ed7b71f42d"
    assert client.patch(f"/_sim/acme/enrollments/{missing}", json={}).status_code == 404
    assert client.delete(f"/_sim/acme/enrollments/{missing}").status_code == 404
    assert client.post("/_sim/nobody/enrollments", json={}).status_code == 404
    assert client.post("/_sim/acme/teachers", json={}).status_code == 404
    assert client.post("/_sim/acme/enrollments", json={"shoe_size": 9}).status_code == 422
    assert client.post("/_sim/acme/enrollments", json={"start_date": "soon"}).status_code == 422
    existing = sim.ids("acme", "enrollments")[0]
    assert client.post("/_sim/acme/enrollments", json={"id": existing}).status_code == 409
    assert (
        client.patch(f"/_sim/acme/enrollments/{existing}", json={"id": missing}).status_code == 422
    )
    assert client.post("/_sim/faults", json={"status": 200}).status_code == 422
    assert client.post("/_sim/faults", json={"count": 2}).status_code == 422
    assert client.post("/_sim/faults", json={"malformed": "xml"}).status_code == 422


def test_python_api_mirrors_the_control_api(sim):
    assert sim.tokens == {"acme": "tok_acme", "globex": "tok_globex"}
    assert sim.api_key == API_KEY and sim.base_url.startswith("http://127.0.0.1:")
    new_id = "01900000-0000-7000-8000-000000000001"
    record = sim.create(
        "acme", "users", {"id": new_id, "first_name": "Zoe", "modified_at": "2025-01-01T00:00:00Z"}
    )
    assert record["modified_at"] == "2025-01-01T00:00:00.000000Z"
    assert sim.get("acme", "users", new_id) == record
    assert new_id in sim.ids("acme", "users")  # placed by id, among generated ones
    updated = sim.update("acme", "users", new_id, {"last_name": "Kim"})
    assert updated["last_name"] == "Kim" and updated["modified_at"] > record["modified_at"]
    sim.delete("acme", "users", new_id)
    assert sim.get("acme", "users", new_id) is None
    with pytest.raises(NotFound):
        sim.update("acme", "users", new_id, {})
    with pytest.raises(NotFound):
        sim.delete("acme", "users", new_id)


def test_created_records_interleave_by_id(sim, client):
    ids = sim.ids("acme", "enrollments")
    # An id between two generated ones lands between them, on whichever page.
    between = ids[99][:-12] + "f" * 12
    assert ids[99] < between < ids[100]
    sim.create("acme", "enrollments", {"id": between})
    got = [i["id"] for i in walk(client, page_size=100)]
    assert got == sorted([*ids, between])


# ---- stats, reset, determinism ---------------------------------------------------------------


def test_stats_shape(sim, client):
    sim.add_fault(status=503, count=1)
    client.get(ENROLLMENTS)
    client.get(ENROLLMENTS)
    client.get(ENROLLMENTS)
    client.get(ENROLLMENTS, headers={"x-connector-token": "tok_globex"})
    client.get(ENROLLMENTS, headers={"x-connector-token": "tok_unknown"})
    httpx.get(sim.base_url + ENROLLMENTS, headers={"Authorization": f"Bearer {API_KEY}"})
    client.get(CONNECTORS)  # no connector token: counted for the organisation
    expected = {
        "acme": {"503": 1, "200": 2},
        "globex": {"200": 1},
        "_unknown": {"401": 1, "422": 1},
        "_org": {"200": 1},
    }
    assert client.get("/_sim/stats").json() == expected
    assert sim.stats() == expected


def test_reset_restores_the_seed_state(sim, client):
    before = sim.records("acme", "enrollments")
    sim.create("acme", "enrollments", {"remote_id": "X"})
    sim.delete("acme", "enrollments", before[0]["id"])
    sim.update("acme", "enrollments", before[1]["id"], {"start_date": None})
    sim.add_fault(status=500, count=10)
    sim.set_rate_limit(2, 60)
    client.get(ENROLLMENTS)
    client.get(ENROLLMENTS)
    assert client.get(ENROLLMENTS).status_code == 429
    assert client.post("/_sim/reset").status_code == 200
    assert sim.records("acme", "enrollments") == before
    assert sim.stats() == {}
    ok = client.get(ENROLLMENTS)  # faults cleared, a fresh rate window
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining"] == "1"


def test_modified_at_bump_is_utc_now():
    with SimServer(enrollments=10, seed=1) as server:
        record_id = server.ids("acme", "enrollments")[0]
        before = datetime.now(UTC) - timedelta(seconds=1)
        updated = server.update("acme", "enrollments", record_id, {"remote_id": "R"})
        bumped = datetime.fromisoformat(updated["modified_at"])
        assert bumped >= before and bumped.tzinfo is not None


# ---- unchecked records ---------------------------------------------------------------------


@pytest.mark.parametrize("modified_at", ["garbage", None, 17])
def test_unchecked_records_are_served_as_stored(sim, client, modified_at):
    body = {"user": "not-a-uuid", "modified_at": modified_at, "start_date": "someday"}
    created = client.post("/_sim/acme/enrollments", params={"unchecked": "true"}, json=body)
    assert created.status_code == 201
    record = created.json()
    assert record == {"id": record["id"], **body}  # no fields added, none normalised
    assert record["id"] > sim.ids("acme", "enrollments")[-2]  # minted now
    assert client.get(f"{ENROLLMENTS}/{record['id']}").json() == record
    page = walk(client, page_size=100)
    assert page[-1] == record and len(page) == 251
    expanded = client.get(f"{ENROLLMENTS}/{record['id']}", params={"expand": "user,course"})
    assert expanded.json()["user"] is None  # a dangling reference expands to null
    assert client.get(f"/_sim/acme/enrollments/{record['id']}").json() == record
    # Checked writes still refuse what the unchecked one stored.
    assert client.post("/_sim/acme/enrollments", json=body).status_code == 422


def test_unchecked_junk_references_expand_to_null(sim, client):
    made = sim.create("acme", "enrollments", {"user": 5, "course": ["x"]}, unchecked=True)
    body = client.get(f"{ENROLLMENTS}/{made['id']}", params={"expand": "user,course"}).json()
    assert body == {"id": made["id"], "user": None, "course": None}
    page = client.get(ENROLLMENTS, params={"user": sim.ids("acme", "users")[0]}).json()
    assert made["id"] not in [i["id"] for i in page["items"]]


def test_unchecked_create_keeps_a_given_id_and_refuses_a_taken_one(sim, client):
    given = "01900000-0000-7000-8000-00000000abcd"
    made = sim.create("acme", "users", {"id": given, "first_name": 5}, unchecked=True)
    assert made == {"id": given, "first_name": 5}
    served = client.get(f"/api/lms/v1/users/{given}", params={"include_raw_data": 1}).json()
    assert served == made  # even with raw_data asked for, nothing is added
    taken = client.post("/_sim/acme/users?unchecked=true", json={"id": given})
    assert taken.status_code == 409
    bad_id = client.post("/_sim/acme/users?unchecked=true", json={"id": "x"})
    assert bad_id.status_code == 422
    assert client.post("/_sim/acme/users?unchecked=true", json=[1, 2]).status_code == 422
    sim.delete("acme", "users", given)
    assert sim.get("acme", "users", given) is None
