"""The simulator's data API over loopback: pages, auth, filters, expand, get by id."""

from __future__ import annotations

import json
from datetime import datetime

import httpx
import pytest

from bindbee_sim import SimServer
from bindbee_sim.times import format_us, parse_us
from tests import sim_support as support
from tests.sim_support import (
    API_KEY,
    ENROLLMENTS,
    PLUS_TWO,
    unb64,
    walk,
)

shared_sim = support.shared_sim
sim = support.sim
client = support.client


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
