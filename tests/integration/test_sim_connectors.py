"""GET /api/lms/v1/connectors: fields, filters, pagination."""

from __future__ import annotations

import uuid

import httpx

from bindbee_sim import SimServer
from tests import sim_support as support
from tests.sim_support import API_KEY, CONNECTORS, ENROLLMENTS, unb64, walk

shared_sim = support.shared_sim
sim = support.sim
client = support.client


# ---- connectors -------------------------------------------------------------------------------


def test_connectors_endpoint(sim):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=sim.base_url, headers=headers) as c:
        body = c.get(CONNECTORS).json()
        assert body["page_size"] == 2 and body["cursor"] is None
        fields = {
            "id",
            "is_active",
            "status",
            "integration_slug",
            "end_user",
            "sync_status",
            "last_sync_start_time",
            "next_sync_start_time",
            "relink_needed_at",
            "completed_at",
            "created_at",
            "connector_token",
            "category",
            "is_test_connector",
        }
        assert all(set(item) == fields for item in body["items"])
        assert {i["connector_token"] for i in body["items"]} == {"tok_acme", "tok_globex"}
        one = c.get(CONNECTORS, params={"connector_token": "tok_globex"}).json()["items"]
        assert [i["connector_token"] for i in one] == ["tok_globex"]
        assert c.get(CONNECTORS, params={"is_active": "false"}).json()["items"] == []
        first = c.get(CONNECTORS, params={"page_size": 1}).json()
        assert unb64(first["cursor"]) == first["items"][0]["id"]
        second = c.get(CONNECTORS, params={"page_size": 1, "cursor": first["cursor"]}).json()
        assert second["cursor"] is None
        assert [*first["items"], *second["items"]] == body["items"]
        assert c.get(CONNECTORS, params={"page_size": 101}).status_code == 422
    assert httpx.get(sim.base_url + CONNECTORS).status_code == 401


def test_connectors_paginate_over_250_connectors():
    names = {f"branch_{k:03d}": f"tok_{k:03d}" for k in range(250)}
    with (
        SimServer(connectors=names, enrollments=0, api_key=API_KEY) as sim,
        httpx.Client(
            base_url=sim.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        ) as c,
    ):
        items: list[dict] = []
        sizes: list[int] = []
        cursor = None
        while True:
            params = {"page_size": 100, **({"cursor": cursor} if cursor else {})}
            body = c.get(CONNECTORS, params=params).json()
            sizes.append(body["page_size"])
            items += body["items"]
            cursor = body["cursor"]
            if cursor is None:
                break
            assert unb64(cursor) == body["items"][-1]["id"]
        assert sizes == [100, 100, 50]
        ids = [i["id"] for i in items]
        assert ids == sorted(ids) and len(set(ids)) == 250
        assert {i["connector_token"] for i in items} == set(names.values())
        assert {i["end_user"]["origin_id"] for i in items} == set(names)
        assert len(walk(c, CONNECTORS)) == 250  # default page size 50
        one = c.get(CONNECTORS, params={"origin_id": "branch_042"}).json()["items"]
        assert [i["connector_token"] for i in one] == ["tok_042"]
        assert sim.stats() == {"_org": {"200": 9}}


def test_connector_fields_follow_bindbee(sim):
    item = sim.connector("acme")
    assert item["status"] == "COMPLETE" and item["sync_status"] == "Done"
    assert item["category"] == "LMS" and item["is_test_connector"] is False
    assert item["end_user"]["origin_id"] == "acme" and item["relink_needed_at"] is None
    assert item["next_sync_start_time"] is None
    assert item["created_at"] < item["completed_at"] < item["last_sync_start_time"]
    uuid.UUID(item["id"])
    with SimServer(connectors={"acme": "other_token"}, enrollments=0, seed=7) as again:
        assert again.connector("acme")["id"] == item["id"]  # stable in (seed, name)
    with SimServer(connectors={"acme": "tok_acme"}, enrollments=0, seed=8) as other:
        assert other.connector("acme")["id"] != item["id"]


def test_connectors_added_at_run_time(sim, client):
    created = client.post(
        "/_sim/connectors", json={"name": "initech", "token": "tok_initech", "enrollments": 30}
    )
    assert created.status_code == 201
    listing = created.json()
    assert listing["connector_token"] == "tok_initech" and listing["sync_status"] == "Done"
    found = client.get(CONNECTORS, params={"connector_token": "tok_initech"}).json()["items"]
    assert found == [listing]
    page = client.get(ENROLLMENTS, headers={"x-connector-token": "tok_initech"}).json()
    assert page["page_size"] == 30
    assert sim.ids("initech", "enrollments") == [i["id"] for i in page["items"]]
    assert client.post("/_sim/connectors", json={"name": "initech", "token": "t2"}).status_code == (
        409
    )
    assert client.post("/_sim/connectors", json={"name": "x", "token": "tok_acme"}).status_code == (
        409
    )
    assert client.post("/_sim/connectors", json={"name": "a/b", "token": "t3"}).status_code == 422
    assert client.post("/_sim/connectors", json={"name": "y"}).status_code == 422
    names = [c["name"] for c in client.get("/_sim/connectors").json()]
    assert names == ["acme", "globex", "initech"]
    sim.reset()  # run-time connectors go away
    assert client.get(ENROLLMENTS, headers={"x-connector-token": "tok_initech"}).status_code == 401
    assert [c["name"] for c in client.get("/_sim/connectors").json()] == ["acme", "globex"]
    again = sim.add_connector("initech", "tok_initech")
    assert again["id"] == listing["id"]
    assert len(sim.ids("initech", "enrollments")) == 250  # the server's default size
