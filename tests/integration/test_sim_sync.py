"""Bindbee's sync cycle in the simulator: staged changes, syncs, live mode, touch-all."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bindbee_sim import Refused, SimServer
from bindbee_sim.times import parse_us
from tests.harness import wait_until
from tests.sim_support import API_KEY, CONNECTORS, ENROLLMENTS, walk

HEADERS = {"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_acme"}


@pytest.fixture
def scheduled() -> Iterator[SimServer]:
    """Scheduled mode, syncs of ~0 s (a test that needs a visible Syncing sets more)."""
    with SimServer(
        connectors={"acme": "tok_acme", "globex": "tok_globex"},
        enrollments=200,
        seed=3,
        api_key=API_KEY,
        sync_mode="scheduled",
        sync_duration_seconds=0,
    ) as server:
        yield server


@pytest.fixture
def api(scheduled: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=scheduled.base_url, headers=HEADERS, timeout=10) as c:
        yield c


def connector(client: httpx.Client, name: str = "acme") -> dict:
    """The connector's item in GET /connectors (filtered by origin_id)."""
    body = client.get(CONNECTORS, params={"origin_id": name}).raise_for_status().json()
    (item,) = body["items"]
    return item


def served(client: httpx.Client, record_id: str) -> dict:
    return client.get(f"{ENROLLMENTS}/{record_id}").raise_for_status().json()


# ---- scheduled mode ----------------------------------------------------------------


def test_seed_data_counts_as_synced(scheduled, api):
    item = connector(api)
    assert item["status"] == "COMPLETE" and item["is_active"] is True
    assert item["sync_status"] == "Done"
    assert item["next_sync_start_time"] is None  # no interval: on demand only
    seed_sync = parse_us(item["last_sync_start_time"])
    assert all(parse_us(r["modified_at"]) < seed_sync for r in scheduled.records("acme", "users"))
    assert scheduled.staged() == {"acme": 0, "globex": 0}


def test_staged_changes_are_invisible_until_the_sync_ends(scheduled, api):
    ids = scheduled.ids("acme", "enrollments")
    before = served(api, ids[3])
    patched = api.patch(f"/_sim/acme/enrollments/{ids[3]}", json={"end_date": None})
    assert patched.status_code == 200 and patched.json()["end_date"] is None  # the staged copy
    created = api.post("/_sim/acme/enrollments", json={"remote_id": "ENR-NEW"}).json()
    assert api.delete(f"/_sim/acme/enrollments/{ids[4]}").status_code == 204
    assert api.get("/_sim/staged").json() == {"acme": 3, "globex": 0}

    # Nothing shows yet: API, control read and listing all serve the last sync.
    assert served(api, ids[3]) == before
    assert api.get(f"/_sim/acme/enrollments/{ids[3]}").json()["end_date"] == before["end_date"]
    assert (
        api.get(f"/_sim/acme/enrollments/{ids[3]}", params={"staged": "true"}).json()["end_date"]
        is None
    )
    assert api.get(f"{ENROLLMENTS}/{created['id']}").status_code == 404
    assert api.get(f"/_sim/acme/enrollments/{ids[4]}", params={"staged": True}).status_code == 404
    assert [i["id"] for i in walk(api, page_size=100)] == ids

    done = scheduled.sync("acme")
    assert done["status"] == "Done" and done["applied"] == 3 and done["staged"] == 3
    after = served(api, ids[3])
    assert after["end_date"] is None
    assert after["modified_at"] == done["finished_at"] > before["modified_at"]
    assert served(api, created["id"])["modified_at"] == done["finished_at"]
    assert api.get(f"{ENROLLMENTS}/{ids[4]}").status_code == 404
    assert [i["id"] for i in walk(api, page_size=100)] == sorted(
        [*ids[:4], *ids[5:], created["id"]]
    )
    assert scheduled.staged() == {"acme": 0, "globex": 0}
    # The other connector's sync state did not move.
    assert connector(api, "globex")["last_sync_start_time"] < done["started_at"]


def test_patches_build_on_the_staged_copy(scheduled, api):
    record_id = scheduled.ids("acme", "enrollments")[0]
    scheduled.update("acme", "enrollments", record_id, {"remote_id": "R-1"})
    staged = scheduled.update("acme", "enrollments", record_id, {"end_date": None})
    assert staged["remote_id"] == "R-1" and staged["end_date"] is None
    assert scheduled.staged()["acme"] == 1  # one record, two patches
    pinned = scheduled.update(
        "acme", "enrollments", record_id, {"modified_at": "2024-02-02T00:00:00Z"}
    )
    assert pinned["modified_at"] == "2024-02-02T00:00:00.000000Z"
    scheduled.sync("acme")
    record = scheduled.get("acme", "enrollments", record_id)
    assert record["remote_id"] == "R-1" and record["end_date"] is None
    assert record["modified_at"] == "2024-02-02T00:00:00.000000Z"  # a pinned time is kept


def test_staged_create_then_delete_and_conflicts(scheduled, api):
    made = scheduled.create("acme", "users", {"first_name": "Zoe"})
    conflict = api.post("/_sim/acme/users", json={"id": made["id"]})
    assert conflict.status_code == 409  # taken in the staged view already
    scheduled.delete("acme", "users", made["id"])
    gone = api.patch(f"/_sim/acme/users/{made['id']}", json={"first_name": "Y"})
    assert gone.status_code == 404
    assert scheduled.sync("acme")["applied"] == 0  # created and deleted: nothing to do
    assert scheduled.get("acme", "users", made["id"]) is None
    assert api.post("/_sim/acme/enrollments", json={"start_date": "soon"}).status_code == 422


def test_a_change_made_during_a_sync_lands_in_the_next_one(scheduled, api):
    scheduled.configure_syncs(sync_duration_seconds=2)
    ids = scheduled.ids("acme", "enrollments")
    scheduled.update("acme", "enrollments", ids[0], {"remote_id": "FIRST"})
    running = scheduled.sync("acme", wait=False)
    assert running["status"] == "Syncing" and running["staged"] == 1
    scheduled.update("acme", "enrollments", ids[1], {"remote_id": "SECOND"})
    # Still syncing when the second change was made: it cannot join this sync.
    assert connector(api)["sync_status"] == "Syncing"
    assert api.post("/_sim/syncs", json={"connector": "acme"}).status_code == 409
    assert scheduled.staged()["acme"] == 2  # the taken one and the new one
    first = scheduled.state.wait_sync(running["sync_id"], 30)
    assert first["status"] == "Done" and first["applied"] == 1
    assert served(api, ids[0])["remote_id"] == "FIRST"
    assert served(api, ids[1])["remote_id"] != "SECOND"
    assert scheduled.staged()["acme"] == 1
    scheduled.configure_syncs(sync_duration_seconds=0)
    second = scheduled.sync("acme")
    assert second["applied"] == 1 and served(api, ids[1])["remote_id"] == "SECOND"
    assert second["started_at"] > first["finished_at"]


def test_connectors_show_syncing_then_done_with_a_new_start_time(scheduled, api):
    scheduled.configure_syncs(sync_duration_seconds=1)
    before = connector(api)
    started = api.post("/_sim/syncs", json={"connector": "acme"})
    assert started.status_code == 202
    body = started.json()
    assert body["status"] == "Syncing" and body["sync_type"] == "MANUAL"
    during = connector(api)
    assert during["sync_status"] == "Syncing"
    assert during["last_sync_start_time"] == body["started_at"] > before["last_sync_start_time"]
    after = wait_until(lambda: (c := connector(api))["sync_status"] == "Done" and c, what="Done")
    assert after["last_sync_start_time"] == during["last_sync_start_time"]
    (record,) = [s for s in api.get("/_sim/syncs").json() if s["sync_id"] == body["sync_id"]]
    assert record["status"] == "Done" and record["finished_at"] > record["started_at"]


def test_a_failed_sync_applies_nothing_and_keeps_the_changes_staged(scheduled, api):
    record_id = scheduled.ids("acme", "enrollments")[7]
    before = served(api, record_id)
    scheduled.update("acme", "enrollments", record_id, {"remote_id": "LATER"})
    started = api.post("/_sim/syncs", json={"connector": "acme", "fail": True}).json()
    failed = scheduled.state.wait_sync(started["sync_id"], 30)
    assert failed["status"] == "Failed" and failed["error"] == "simulated failure"
    assert failed["applied"] == 0
    item = connector(api)
    assert item["sync_status"] == "Failed" and item["last_sync_start_time"] == failed["started_at"]
    assert served(api, record_id) == before
    assert scheduled.staged()["acme"] == 1
    ok = scheduled.sync("acme")
    assert ok["status"] == "Done" and served(api, record_id)["remote_id"] == "LATER"
    assert connector(api)["sync_status"] == "Done"


def test_sync_requests_are_checked(scheduled, api):
    assert api.post("/_sim/syncs", json={"connector": "nobody"}).status_code == 404
    assert api.post("/_sim/syncs", json={}).status_code == 422
    assert api.post("/_sim/syncs", json={"connector": "acme", "fail": "yes"}).status_code == 422


def test_relink_needed_fails_syncs_and_inactive_refuses_them(scheduled, api):
    patched = api.patch("/_sim/connectors/acme", json={"status": "RELINK_NEEDED"})
    assert patched.status_code == 200
    assert patched.json()["status"] == "RELINK_NEEDED" and patched.json()["relink_needed_at"]
    failed = scheduled.sync("acme")
    assert failed["status"] == "Failed" and "RELINK_NEEDED" in failed["error"]
    item = connector(api)
    assert item["status"] == "RELINK_NEEDED" and item["sync_status"] == "Failed"
    relinked = scheduled.set_connector("acme", status="COMPLETE")
    assert relinked["relink_needed_at"] is None
    assert scheduled.sync("acme")["status"] == "Done"

    assert api.patch("/_sim/connectors/acme", json={"is_active": False}).status_code == 200
    assert api.get(CONNECTORS, params={"is_active": False}).json()["items"][0]["id"] == item["id"]
    assert api.post("/_sim/syncs", json={"connector": "acme"}).status_code == 409
    with pytest.raises(Refused):
        scheduled.sync("acme")
    assert api.patch("/_sim/connectors/acme", json={"status": "BROKEN"}).status_code == 422
    assert api.patch("/_sim/connectors/nobody", json={"is_active": True}).status_code == 404
    assert api.patch("/_sim/connectors/acme", json={"is_active": "no"}).status_code == 422


def test_reset_clears_staged_changes_and_connector_state(scheduled, api):
    record_id = scheduled.ids("acme", "enrollments")[0]
    seed_item = connector(api)
    scheduled.update("acme", "enrollments", record_id, {"remote_id": "R"})
    scheduled.set_connector("globex", is_active=False)
    scheduled.sync("acme")
    scheduled.update("acme", "enrollments", record_id, {"remote_id": "S"})
    assert api.post("/_sim/reset").status_code == 200
    assert scheduled.staged() == {"acme": 0, "globex": 0}
    assert scheduled.syncs() == []
    assert connector(api) == seed_item
    assert connector(api, "globex")["is_active"] is True
    assert served(api, record_id)["remote_id"] != "R"


def test_touch_all_moves_every_modified_at_and_nothing_else(scheduled, api):
    scheduled.configure_syncs(sync_touches_all=True)
    scheduled.set_honor_modified_after(True)
    poison = scheduled.create(
        "acme", "users", {"first_name": "Bad", "modified_at": "garbage"}, unchecked=True
    )
    before = {m: walk(api, f"/api/lms/v1/{m}", page_size=100) for m in ("users", "enrollments")}
    first = scheduled.sync("acme")
    assert first["touched_all"] is True and first["applied"] == 1
    for model, old in before.items():
        new = walk(api, f"/api/lms/v1/{model}", page_size=100)
        assert len(new) == len(old) + (model == "users")
        for item in new:
            if item["id"] == poison["id"]:
                assert item["modified_at"] == "garbage"  # unchecked: left as stored
            else:
                assert item["modified_at"] == first["finished_at"]
        unchanged = {i["id"]: {**i, "modified_at": None} for i in new}
        assert all(unchanged[i["id"]] == {**i, "modified_at": None} for i in old)
    # modified_after sees the touch: everything is newer than the previous sync ...
    assert len(walk(api, modified_after=first["started_at"], page_size=100)) == 200
    assert walk(api, modified_after=first["finished_at"]) == []
    # ... and a record patched later is newer than the touch.
    record_id = scheduled.ids("acme", "enrollments")[9]
    scheduled.update("acme", "enrollments", record_id, {"remote_id": "X"})
    second = scheduled.sync("acme")
    items = walk(api, page_size=100)
    assert {i["modified_at"] for i in items} == {second["finished_at"]}
    assert [i["id"] for i in walk(api, modified_after=first["finished_at"])] == [
        i["id"] for i in items
    ]
    assert (
        api.get(f"/_sim/acme/enrollments/{record_id}").json()["modified_at"]
        == second["finished_at"]
    )
    assert scheduled.get("acme", "users", poison["id"])["modified_at"] == "garbage"
    scheduled.reset()
    assert all(i["modified_at"] < first["started_at"] for i in walk(api, page_size=100))


def test_interval_syncs_run_by_themselves():
    with SimServer(
        enrollments=20,
        api_key=API_KEY,
        sync_mode="scheduled",
        sync_interval_seconds=0.2,
        sync_duration_seconds=0,
    ) as sim:
        first = sim.connector("acme")
        assert first["next_sync_start_time"] is not None
        record_id = sim.ids("acme", "enrollments")[0]
        sim.update("acme", "enrollments", record_id, {"remote_id": "AUTO"})
        wait_until(
            lambda: sim.get("acme", "enrollments", record_id)["remote_id"] == "AUTO",
            what="an interval sync",
        )
        automated = [s for s in sim.syncs() if s["sync_type"] == "AUTOMATED"]
        assert automated and automated[0]["status"] == "Done"
        later = sim.connector("acme")
        assert later["last_sync_start_time"] > first["last_sync_start_time"]
        assert later["next_sync_start_time"] > later["last_sync_start_time"]


# ---- live mode ---------------------------------------------------------------------


def test_live_mode_changes_show_at_once_and_move_the_sync_time():
    with (
        SimServer(enrollments=30, api_key=API_KEY) as sim,
        httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=10) as api,
    ):
        seen = [connector(api)["last_sync_start_time"]]
        record_id = sim.ids("acme", "enrollments")[0]
        api.patch(f"/_sim/acme/enrollments/{record_id}", json={"remote_id": "NOW"})
        assert served(api, record_id)["remote_id"] == "NOW"
        seen.append(connector(api)["last_sync_start_time"])
        made = sim.create("acme", "users", {"first_name": "Ann"})
        seen.append(connector(api)["last_sync_start_time"])
        sim.delete("acme", "users", made["id"])
        item = connector(api)
        seen.append(item["last_sync_start_time"])
        assert seen == sorted(set(seen))  # moved on every change
        assert item["sync_status"] == "Done"
        assert sim.staged() == {"acme": 0}
        assert served(api, record_id)["modified_at"] <= seen[1]
        instant = sim.syncs()
        assert [s["applied"] for s in instant] == [1, 1, 1]
        assert {s["sync_type"] for s in instant} == {"AUTOMATED"}
        # A manual sync in live mode still cycles Syncing -> Done.
        done = sim.sync("acme")
        assert done["status"] == "Done" and done["applied"] == 0
        assert connector(api)["last_sync_start_time"] == done["started_at"] > seen[-1]


def test_sync_settings_are_checked():
    with pytest.raises(ValueError, match="sync mode"):
        SimServer(sync_mode="hourly")
    with pytest.raises(ValueError, match="duration"):
        SimServer(sync_duration_seconds=-1)
    with SimServer(enrollments=5) as sim:
        response = httpx.post(f"{sim.base_url}/_sim/config", json={"sync_mode": "weekly"})
        assert response.status_code == 422
        body = httpx.post(f"{sim.base_url}/_sim/config", json={"sync_mode": "scheduled"}).json()
        assert body["sync_mode"] == "scheduled" and body["sync_touches_all"] is False
