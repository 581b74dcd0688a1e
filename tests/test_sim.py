"""The Bindbee LMS simulator, over real HTTP on loopback (httpx, no mocks)."""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bindbee_sim import NotFound, SimServer, SimState
from bindbee_sim.query import ListQuery
from bindbee_sim.ratelimit import FixedWindowLimiter
from bindbee_sim.times import format_us, parse_us

API_KEY = "test-api-key"
ENROLLMENTS = "/api/lms/v1/enrollments"
CONNECTORS = "/api/lms/v1/connectors"
PLUS_TWO = timezone(timedelta(hours=2))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimServer]:
    with SimServer(
        connectors={"acme": "tok_acme", "globex": "tok_globex"},
        enrollments=250,
        seed=7,
        api_key=API_KEY,
    ) as server:
        yield server


@pytest.fixture
def sim(shared_sim: SimServer) -> SimServer:
    """The shared server, back in its seed state with default switches."""
    shared_sim.reset()
    shared_sim.set_rate_limit(0, 60)
    shared_sim.set_honor_modified_after(False)
    return shared_sim


@pytest.fixture
def client(sim: SimServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_acme"}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=10) as c:
        yield c


def walk(client: httpx.Client, path: str = ENROLLMENTS, **params: object) -> list[dict]:
    """Every item of a listing, following cursors."""
    items: list[dict] = []
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        body = client.get(path, params=query).raise_for_status().json()
        items += body["items"]
        cursor = body["cursor"]
        if cursor is None:
            return items


# ---- paging ---------------------------------------------------------------------


def test_pages_follow_id_order_and_end_with_a_null_cursor(sim, client):
    sizes, ids, cursor = [], [], None
    while True:
        params = {"page_size": 100, **({"cursor": cursor} if cursor else {})}
        body = client.get(ENROLLMENTS, params=params).json()
        assert body["page_size"] == len(body["items"])
        sizes.append(body["page_size"])
        ids += [item["id"] for item in body["items"]]
        cursor = body["cursor"]
        if cursor is None:
            break
        assert unb64(cursor) == body["items"][-1]["id"]
    assert sizes == [100, 100, 50]
    assert ids == sorted(ids) == sim.ids("acme", "enrollments")
    assert len(set(ids)) == 250


def test_default_page_size_is_50(client):
    body = client.get(ENROLLMENTS).json()
    assert body["page_size"] == 50 and len(body["items"]) == 50


@pytest.mark.parametrize("size", [0, 101, -1])
def test_page_size_outside_1_to_100_is_422(client, size):
    response = client.get(ENROLLMENTS, params={"page_size": size})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "page_size"]


def test_invalid_cursor_is_422(client):
    response = client.get(ENROLLMENTS, params={"cursor": "not a cursor!"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_generated_data_is_plausible(sim, client):
    item = client.get(ENROLLMENTS, params={"page_size": 1}).json()["items"][0]
    assert set(item) == {
        "id",
        "remote_id",
        "modified_at",
        "user",
        "course",
        "start_date",
        "end_date",
        "completion",
    }
    modified = parse_us(item["modified_at"])
    assert item["modified_at"] == format_us(modified)  # canonical ...ffffffZ shape
    assert modified < parse_us("2026-01-01T00:00:00Z")
    users = set(sim.ids("acme", "users"))
    courses = set(sim.ids("acme", "courses"))
    completions = set(sim.ids("acme", "completions"))
    records = sim.records("acme", "enrollments")
    assert len(users) == 25 and len(courses) == 5
    assert all(r["user"] in users and r["course"] in courses for r in records)
    assert all(r["completion"] is None or r["completion"] in completions for r in records)
    assert any(r["completion"] is not None for r in records)


# ---- auth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"x-connector-token": "tok_acme"},
        {"x-connector-token": "tok_acme", "Authorization": "Bearer wrong"},
        {"x-connector-token": "tok_acme", "Authorization": API_KEY},
    ],
)
def test_wrong_or_missing_api_key_is_401(sim, headers):
    response = httpx.get(sim.base_url + ENROLLMENTS, headers=headers)
    assert response.status_code == 401
    assert isinstance(response.json()["detail"], str)


def test_missing_connector_token_is_fastapi_422(sim):
    response = httpx.get(sim.base_url + ENROLLMENTS, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["header", "x-connector-token"]
    assert error["msg"] and error["type"]


def test_unknown_connector_token_is_401(sim):
    response = httpx.get(
        sim.base_url + ENROLLMENTS,
        headers={"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_nobody"},
    )
    assert response.status_code == 401


def test_connector_token_selects_the_dataset(sim, client):
    acme = client.get(ENROLLMENTS).json()["items"]
    globex = client.get(ENROLLMENTS, headers={"x-connector-token": "tok_globex"}).json()["items"]
    assert [i["id"] for i in globex] == sim.ids("globex", "enrollments")[:50]
    assert {i["id"] for i in acme}.isdisjoint(i["id"] for i in globex)


# ---- rate limits --------------------------------------------------------------------


RATE_HEADERS = (
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-reset-after",
)


def test_rate_limit_headers_on_every_data_response(sim, client):
    sim.set_rate_limit(100, 60)
    sim.add_fault(status=503, count=1)
    responses = [
        client.get(ENROLLMENTS),  # fault: 503
        client.get(ENROLLMENTS),
        client.get(f"{ENROLLMENTS}/{sim.ids('acme', 'enrollments')[0]}"),
        client.get(f"{ENROLLMENTS}/00000000-0000-7000-8000-000000000000"),
        client.get(ENROLLMENTS, params={"page_size": 0}),
        client.get("/api/lms/v1/users"),
    ]
    assert [r.status_code for r in responses] == [503, 200, 200, 404, 422, 200]
    for k, response in enumerate(responses):
        assert all(h in response.headers for h in RATE_HEADERS), response.headers
        assert response.headers["x-ratelimit-limit"] == "100"
        assert response.headers["x-ratelimit-remaining"] == str(99 - k)
        reset = response.headers["x-ratelimit-reset"]
        assert reset.isdigit() and int(reset) >= math.floor(time.time())
        assert 0 <= float(response.headers["x-ratelimit-reset-after"]) <= 60


def test_sixth_request_in_a_window_of_five_is_429(sim, client):
    sim.set_rate_limit(5, 60)
    ok = [client.get(ENROLLMENTS, params={"page_size": 1}) for _ in range(5)]
    assert [r.status_code for r in ok] == [200] * 5
    assert [r.headers["x-ratelimit-remaining"] for r in ok] == ["4", "3", "2", "1", "0"]
    for _ in range(2):
        limited = client.get(ENROLLMENTS)
        assert limited.status_code == 429
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-ratelimit-reset"] == ok[0].headers["x-ratelimit-reset"]
    # Another token has its own window.
    other = client.get(ENROLLMENTS, headers={"x-connector-token": "tok_globex"})
    assert other.status_code == 200 and other.headers["x-ratelimit-remaining"] == "4"
    assert sim.stats()["acme"] == {"200": 5, "429": 2}


def test_fixed_window_semantics_with_a_test_clock():
    now = [1000.0]
    limiter = FixedWindowLimiter(3, 10.0, clock=lambda: now[0])
    assert [limiter.hit("t").remaining for _ in range(3)] == [2, 1, 0]
    now[0] = 1004.2
    rejected = limiter.hit("t")
    assert not rejected.allowed and rejected.remaining == 0
    headers = dict(rejected.headers())
    assert headers[b"retry-after"] == b"6" and headers[b"x-ratelimit-reset"] == b"1010"
    assert headers[b"x-ratelimit-reset-after"] == b"5.800"
    for _ in range(5):  # rejections never count
        assert not limiter.hit("t").allowed
    now[0] = 1010.0  # the window ended: a new one starts at this request
    fresh = limiter.hit("t")
    assert fresh.allowed and fresh.remaining == 2 and fresh.reset_at == 1020.0
    now[0] = 1019.5
    assert [limiter.hit("t").remaining for _ in range(2)] == [1, 0]
    rejected = limiter.hit("t")
    assert dict(rejected.headers())[b"retry-after"] == b"1"  # ceil, at least 1


def test_rate_limit_zero_disables_limiting(sim, client):
    sim.set_rate_limit(0, 60)
    response = client.get(ENROLLMENTS)
    assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers


def test_connectors_endpoint_is_not_rate_limited(sim, client):
    sim.set_rate_limit(1, 60)
    for _ in range(3):
        response = client.get(CONNECTORS)
        assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers


# ---- filters and projection -------------------------------------------------------------


def test_remote_id_filter(sim, client):
    target = sim.records("acme", "enrollments")[123]
    items = walk(client, remote_id=target["remote_id"])
    assert [i["id"] for i in items] == [target["id"]]
    assert walk(client, remote_id="ENR-9999999") == []


@pytest.mark.parametrize("field", ["user", "course"])
def test_relation_filters(sim, client, field):
    records = sim.records("acme", "enrollments")
    value = records[0][field]
    expected = [r["id"] for r in records if r[field] == value]
    items = walk(client, page_size=7, **{field: value})
    assert [i["id"] for i in items] == expected
    assert all(i[field] == value for i in items)
    assert 1 <= len(expected) < 250


@pytest.mark.parametrize("field", ["start_date", "end_date"])
def test_date_range_filters_are_inclusive(sim, client, field):
    records = sim.records("acme", "enrollments")
    values = sorted(r[field] for r in records if r[field] is not None)
    low, high = values[len(values) // 4], values[3 * len(values) // 4]
    expected = [r["id"] for r in records if r[field] is not None and low <= r[field] <= high]
    items = walk(client, page_size=100, **{f"{field}_from": low, f"{field}_to": high})
    assert [i["id"] for i in items] == expected
    got = {i[field] for i in items}
    assert low in got and high in got  # both bounds included
    only_from = walk(client, page_size=100, **{f"{field}_from": high})
    assert [i["id"] for i in only_from] == [
        r["id"] for r in records if r[field] is not None and r[field] >= high
    ]
    # The same instant written with an offset selects the same records.
    offset = datetime.fromisoformat(low).astimezone(PLUS_TWO).isoformat()
    assert walk(client, page_size=100, **{f"{field}_from": offset, f"{field}_to": high}) == items


def test_invalid_date_filter_is_422(client):
    response = client.get(ENROLLMENTS, params={"start_date_from": "yesterday"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "start_date_from"]


def test_custom_fields_and_raw_data_only_when_asked(sim, client):
    plain = client.get(ENROLLMENTS).json()["items"]
    assert all("custom_fields" not in i and "raw_data" not in i for i in plain)
    full = {r["id"]: r for r in sim.records("acme", "enrollments")}
    custom = client.get(ENROLLMENTS, params={"include_custom_fields": "true"}).json()["items"]
    assert all(
        "raw_data" not in i and i["custom_fields"] == full[i["id"]]["custom_fields"] for i in custom
    )
    both = client.get(
        ENROLLMENTS, params={"include_custom_fields": "true", "include_raw_data": "true"}
    ).json()["items"]
    assert both == [full[i["id"]] for i in both]
    assert any(i["custom_fields"] is None for i in both)
    assert all(isinstance(i["raw_data"], dict) and i["raw_data"] for i in both)


def test_expand_inlines_relations(sim, client):
    items = client.get(ENROLLMENTS, params={"expand": "user,course,completion"}).json()["items"]
    plain = client.get(ENROLLMENTS).json()["items"]
    for item, base in zip(items, plain, strict=True):
        user = sim.get("acme", "users", base["user"])
        assert item["user"] == {
            k: v for k, v in user.items() if k not in ("custom_fields", "raw_data")
        }
        assert item["course"]["id"] == base["course"]
        if base["completion"] is None:
            assert item["completion"] is None
        else:
            assert item["completion"]["id"] == base["completion"]


def test_expand_with_field_picks(sim, client):
    params = {"expand": "user[first_name,email_address],course[name]", "page_size": 5}
    items = client.get(ENROLLMENTS, params=params).json()["items"]
    plain = client.get(ENROLLMENTS, params={"page_size": 5}).json()["items"]
    for item, base in zip(items, plain, strict=True):
        user = sim.get("acme", "users", base["user"])
        assert item["user"] == {
            "first_name": user["first_name"],
            "email_address": user["email_address"],
        }
        assert item["course"] == {"name": sim.get("acme", "courses", base["course"])["name"]}
        assert item["completion"] == base["completion"]  # not expanded: still an id


@pytest.mark.parametrize("expand", ["teacher", "user[shoe_size]", "user[first_name"])
def test_bad_expand_is_422(client, expand):
    response = client.get(ENROLLMENTS, params={"expand": expand})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "expand"]


def test_other_models_list_and_filter(sim, client):
    for model in ("users", "courses", "contents", "completions"):
        items = walk(client, f"/api/lms/v1/{model}", page_size=100)
        assert [i["id"] for i in items] == sim.ids("acme", model)
    completion = sim.records("acme", "completions")[0]
    by_user = walk(client, "/api/lms/v1/completions", user=completion["user"])
    assert completion["id"] in [i["id"] for i in by_user]
    assert all(i["user"] == completion["user"] for i in by_user)
    content = sim.records("acme", "contents")[0]
    expanded = client.get(
        "/api/lms/v1/contents", params={"remote_id": content["remote_id"], "expand": "course[name]"}
    ).json()["items"]
    assert expanded == [
        {
            **{k: content[k] for k in content if k not in ("custom_fields", "raw_data")},
            "course": {"name": sim.get("acme", "courses", content["course"])["name"]},
        }
    ]


def test_unknown_model_is_404(client):
    assert client.get("/api/lms/v1/teachers").status_code == 404


# ---- modified_after ------------------------------------------------------------------


def test_modified_after_is_ignored_by_default(sim, client):
    params = {"modified_after": "2099-01-01T00:00:00Z", "page_size": 100}
    assert client.get(ENROLLMENTS, params=params).json()["page_size"] == 100
    garbage = client.get(ENROLLMENTS, params={"modified_after": "whenever"})
    assert garbage.status_code == 200


def test_modified_after_is_honoured_with_the_switch(sim, client):
    sim.set_honor_modified_after(True)
    records = sim.records("acme", "enrollments")
    stamps = sorted(r["modified_at"] for r in records)
    pivot = stamps[200]
    expected = [r["id"] for r in records if r["modified_at"] > pivot]
    items = walk(client, page_size=10, modified_after=pivot)
    assert [i["id"] for i in items] == expected  # strictly after, in id order
    assert len(expected) == 49
    # The same instant with an offset and an extra fraction digit.
    shifted = datetime.fromisoformat(pivot).astimezone(PLUS_TWO)
    iso = shifted.isoformat(timespec="microseconds")
    text = iso[:26] + "9" + iso[26:]  # seven fraction digits (0.9 us later), then +02:00
    assert [i["id"] for i in walk(client, page_size=50, modified_after=text)] == expected
    assert client.get(ENROLLMENTS, params={"modified_after": "whenever"}).status_code == 422
    # A fresh edit shows up; nothing is newer than it.
    edited = sim.update("acme", "enrollments", records[5]["id"], {"end_date": None})
    assert [i["id"] for i in walk(client, modified_after=stamps[-1])] == [edited["id"]]
    assert walk(client, modified_after=edited["modified_at"]) == []
    sim.set_honor_modified_after(False)
    assert client.get(ENROLLMENTS, params={"modified_after": stamps[-1]}).json()["page_size"] == 50


# ---- get by id -------------------------------------------------------------------------


def test_get_by_id(sim, client):
    record = sim.records("acme", "enrollments")[42]
    response = client.get(f"{ENROLLMENTS}/{record['id']}")
    assert response.status_code == 200
    assert response.json() == {
        k: v for k, v in record.items() if k not in ("custom_fields", "raw_data")
    }
    full = client.get(
        f"{ENROLLMENTS}/{record['id']}", params={"include_raw_data": 1, "include_custom_fields": 1}
    ).json()
    assert full == record
    expanded = client.get(f"{ENROLLMENTS}/{record['id']}", params={"expand": "user"}).json()
    assert expanded["user"]["id"] == record["user"]


def test_get_unknown_id_is_404(sim, client):
    assert client.get(f"{ENROLLMENTS}/018ccbce-a100-7db9-82dc-10ed7b71f42d").status_code == 404
    assert client.get(f"{ENROLLMENTS}/nonsense").status_code == 404
    globex_id = sim.ids("globex", "enrollments")[0]
    assert client.get(f"{ENROLLMENTS}/{globex_id}").status_code == 404  # other connector


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
    deadline = time.monotonic() + 5
    while sim.state.pending_faults() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sim.state.pending_faults() == []
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


# ---- stats, reset, determinism ---------------------------------------------------------------


def test_stats_shape(sim, client):
    sim.add_fault(status=503, count=1)
    client.get(ENROLLMENTS)
    client.get(ENROLLMENTS)
    client.get(ENROLLMENTS)
    client.get(ENROLLMENTS, headers={"x-connector-token": "tok_globex"})
    client.get(ENROLLMENTS, headers={"x-connector-token": "tok_unknown"})
    httpx.get(sim.base_url + ENROLLMENTS, headers={"Authorization": f"Bearer {API_KEY}"})
    client.get(CONNECTORS)  # not a data endpoint
    expected = {
        "acme": {"503": 1, "200": 2},
        "globex": {"200": 1},
        "_unknown": {"401": 1, "422": 1},
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


def test_same_seed_gives_byte_identical_pages():
    def pages(seed: int) -> list[bytes]:
        with (
            SimServer(enrollments=120, seed=seed) as server,
            httpx.Client(
                base_url=server.base_url,
                headers={"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_acme"},
            ) as c,
        ):
            params = {
                "include_raw_data": "true",
                "include_custom_fields": "true",
                "expand": "user,course",
            }
            out = [c.get(ENROLLMENTS, params=params).content]
            cursor = json.loads(out[0])["cursor"]
            out.append(c.get(ENROLLMENTS, params={**params, "cursor": cursor}).content)
            out.append(c.get("/api/lms/v1/completions", params=params).content)
            return out

    assert pages(11) == pages(11)
    assert pages(11) != pages(12)


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


# ---- the command line ----------------------------------------------------------------------


def test_cli_serves_and_exits_on_sigterm(tmp_path: Path):
    exe = Path(sys.executable).with_name("bindbee-sim")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "bindbee_sim"]
    proc = subprocess.Popen(
        [
            *command,
            "--port",
            "0",
            "--connectors",
            "acme:tok_acme,globex:tok_g",
            "--enrollments",
            "120",
            "--seed",
            "3",
            "--rate-limit",
            "10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("bindbee-sim listening on http://127.0.0.1:"), line
        base_url = line.split()[-1]
        response = httpx.get(
            base_url + ENROLLMENTS,
            params={"page_size": 100},
            headers={"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_g"},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.json()["page_size"] == 100
        assert response.headers["x-ratelimit-limit"] == "10"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_modified_at_bump_is_utc_now():
    with SimServer(enrollments=10, seed=1) as server:
        record_id = server.ids("acme", "enrollments")[0]
        before = datetime.now(UTC) - timedelta(seconds=1)
        updated = server.update("acme", "enrollments", record_id, {"remote_id": "R"})
        bumped = datetime.fromisoformat(updated["modified_at"])
        assert bumped >= before and bumped.tzinfo is not None
