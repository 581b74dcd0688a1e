"""Injected faults: statuses, delays, malformed bodies, dropped connections."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests import sim_support as support
from tests.harness import wait_until
from tests.sim_support import (
    ENROLLMENTS,
)

shared_sim = support.shared_sim
sim = support.sim
client = support.client


# ---- faults ----------------------------------------------------------------------------------


def test_status_fault_counts_down(sim, client):
    sim.add_fault(status=503, count=2, retry_after=3)
    first, second, third = (client.get(ENROLLMENTS) for _ in range(3))
    assert [first.status_code, second.status_code, third.status_code] == [503, 503, 200]
    assert first.headers["retry-after"] == "3" and "detail" in first.json()
    sim.add_fault(status=429)
    throttled = client.get(ENROLLMENTS)
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "1"


def test_faults_respect_connector_and_model_scope(sim, client):
    client.post(
        "/_sim/faults", json={"status": 500, "count": 1, "connector": "globex", "model": "users"}
    ).raise_for_status()
    assert client.get(ENROLLMENTS).status_code == 200
    assert client.get("/api/lms/v1/users").status_code == 200
    globex = {"x-connector-token": "tok_globex"}
    assert client.get(ENROLLMENTS, headers=globex).status_code == 200
    assert client.get("/api/lms/v1/users", headers=globex).status_code == 500
    assert client.get("/api/lms/v1/users", headers=globex).status_code == 200


def test_fault_list_and_clear(sim, client):
    client.post("/_sim/faults", json={"status": 502, "count": 5}).raise_for_status()
    assert client.get("/_sim/faults").json() == [{"count": 5, "status": 502}]
    assert client.delete("/_sim/faults").status_code == 204
    assert client.get(ENROLLMENTS).status_code == 200


def test_delay_fault_does_not_block_other_requests(sim, client):
    sim.add_fault(delay_ms=1500, count=1, model="users")
    done = threading.Event()
    result: dict[str, int] = {}

    def slow() -> None:
        result["status"] = client.get("/api/lms/v1/users").status_code
        done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    # Wait until the slow request has consumed its fault, i.e. is sleeping.
    wait_until(lambda: not sim.state.pending_faults(), 5, "the slow request to take its fault")
    with httpx.Client(base_url=sim.base_url, headers=client.headers) as other:
        assert other.get(ENROLLMENTS).status_code == 200
    assert not done.is_set()  # the delayed request is still waiting
    thread.join(10)
    assert result["status"] == 200


def test_malformed_json_fault(sim, client):
    sim.add_fault(malformed="json")
    response = client.get(ENROLLMENTS)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert client.get(ENROLLMENTS).json()["page_size"] == 50


def test_missing_items_fault(sim, client):
    sim.add_fault(malformed="missing_items")
    body = client.get(ENROLLMENTS).json()
    assert "items" not in body and "cursor" in body


def test_item_without_id_fault(sim, client):
    sim.add_fault(malformed="item_without_id")
    items = client.get(ENROLLMENTS).json()["items"]
    assert len(items) == 50
    assert sum("id" not in i for i in items) == 1
    assert all("remote_id" in i for i in items)


def test_item_without_id_fault_on_get(sim, client):
    sim.add_fault(malformed="item_without_id", model="users")
    user = sim.ids("acme", "users")[0]
    body = client.get(f"/api/lms/v1/users/{user}").json()
    assert "id" not in body and "first_name" in body


def test_cursor_loop_fault(sim, client):
    first = client.get(ENROLLMENTS, params={"page_size": 10}).json()
    sim.add_fault(malformed="cursor_loop", count=2)
    looped_first = client.get(ENROLLMENTS, params={"page_size": 10}).json()
    # The first page's cursor points back: following it shows the same page again.
    again = client.get(
        ENROLLMENTS, params={"page_size": 10, "cursor": looped_first["cursor"]}
    ).json()
    assert again["items"] == first["items"] == looped_first["items"]
    assert again["cursor"] == looped_first["cursor"]  # second use: echoes the request
    normal = client.get(ENROLLMENTS, params={"page_size": 10, "cursor": first["cursor"]}).json()
    assert normal["cursor"] != first["cursor"]


def test_disconnect_fault_drops_the_connection(sim, client):
    sim.add_fault(disconnect=True, count=1)
    with pytest.raises(httpx.TransportError) as caught:
        client.get(ENROLLMENTS)
    assert isinstance(caught.value, httpx.RemoteProtocolError)
    assert client.get(ENROLLMENTS).status_code == 200  # the next request is fine
