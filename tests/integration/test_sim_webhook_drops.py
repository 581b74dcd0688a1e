"""The simulator's delivery controls for issue 21's tests: lost, replayed and hand-made
webhooks, a sync that only deletes, and reads counted per id.

The real simulator (scheduled sync mode) posts to a real receiver on loopback; every
wait is for something the simulator or the receiver reports, never a sleep.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import httpx
import pytest

from bindbee_sim import SimServer
from tests.harness import wait_until
from tests.sim_support import API_KEY, Receiver

SECRET = "whsec-drops-5e1f"
SIGNATURE = "X-Bindbee-Webhook-Signature"
MODEL = "enrollments"
DATA_MODIFIED = "connector_data_modified"


def signature_of(body: bytes) -> str:
    """Computed here, independently of bindbee_sim.webhooks."""
    return base64.urlsafe_b64encode(
        hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    ).decode()


def server(receiver: Receiver, **options: object) -> SimServer:
    defaults = {
        "connectors": {"acme": "tok_acme", "globex": "tok_globex"},
        "enrollments": 60,
        "api_key": API_KEY,
        "sync_mode": "scheduled",
        "sync_duration_seconds": 0,
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_timeout_seconds": 2,
        "webhook_retry_window_seconds": 2,
    }
    return SimServer(**{**defaults, **options})


def events(receiver: Receiver, name: str | None = None) -> list[dict]:
    found = [json.loads(body) for body in receiver.bodies()]
    return [e for e in found if name is None or e["webhook"]["event"] == name]


def settled(sim: SimServer, count: int) -> list[dict]:
    """The log once it holds ``count`` final entries (delivered, given up or dropped)."""

    def final() -> list[dict] | None:
        log = sim.webhooks()
        done = [e for e in log if e["outcome"] != "retrying"]
        return log if len(done) >= count else None

    return wait_until(final, what=f"{count} settled deliveries")


def change_two(sim: SimServer, connector: str = "acme") -> list[str]:
    ids = sim.ids(connector, MODEL)[:2]
    for record_id in ids:
        sim.update(connector, MODEL, record_id, {"remote_id": "changed"})
    return ids


def test_a_dropped_data_modified_is_never_sent_and_logged_as_dropped():
    with Receiver() as receiver, server(receiver) as sim:
        rules = sim.drop_webhooks(1, event=DATA_MODIFIED, connector="acme")
        assert rules == [{"event": DATA_MODIFIED, "connector": "acme", "count": 1}]
        change_two(sim)
        lost = sim.sync("acme")
        log = settled(sim, 3)
        assert [(e["event"], e["attempt"], e["status"], e["outcome"]) for e in log] == [
            ("connector_sync_started", 1, 200, "delivered"),
            ("connector_synced", 1, 200, "delivered"),
            (DATA_MODIFIED, 0, None, "dropped"),
        ]
        assert log[2]["sync_id"] == lost["sync_id"] and log[2]["replay_of"] is None
        assert [e["webhook"]["event"] for e in events(receiver)] == [
            "connector_sync_started",
            "connector_synced",
        ]
        assert sim.webhook_drops() == []  # the rule is used up

        # The next sync's hint is sent again: only one delivery was lost.
        ids = change_two(sim, "acme")
        kept = sim.sync("acme")
        settled(sim, 6)
        (modified,) = events(receiver, DATA_MODIFIED)
        assert modified["sync"]["sync_id"] == kept["sync_id"]
        assert sorted(modified["data"]) == sorted(ids)


def test_drop_rules_match_event_and_connector_and_count_down():
    with Receiver() as receiver, server(receiver) as sim:
        sim.drop_webhooks(2, event=DATA_MODIFIED, connector="globex")
        for _ in range(3):
            change_two(sim, "acme")
            sim.sync("acme")
            change_two(sim, "globex")
            sim.sync("globex")
        log = settled(sim, 18)
        dropped = [(e["event"], e["connector"]) for e in log if e["outcome"] == "dropped"]
        assert dropped == [(DATA_MODIFIED, "globex")] * 2
        sent = [(e["webhook"]["event"], e["connector"]["origin_id"]) for e in events(receiver)]
        assert sent.count((DATA_MODIFIED, "acme")) == 3
        assert sent.count((DATA_MODIFIED, "globex")) == 1

        # Without event or connector a rule takes whatever comes next.
        sim.drop_webhooks(1)
        sim.sync("acme")  # nothing staged: started and synced only
        log = settled(sim, 20)
        assert [(e["event"], e["outcome"]) for e in log[-2:]] == [
            ("connector_sync_started", "dropped"),
            ("connector_synced", "delivered"),
        ]


def test_drop_over_http_and_clearing():
    with Receiver() as receiver, server(receiver) as sim:
        body = {"event": DATA_MODIFIED, "connector": "acme", "count": 1}
        armed = httpx.post(f"{sim.base_url}/_sim/webhooks/drop", json=body)
        assert armed.status_code == 201 and armed.json() == [body]
        assert httpx.get(f"{sim.base_url}/_sim/webhooks/drop").json() == [body]
        assert httpx.delete(f"{sim.base_url}/_sim/webhooks/drop").status_code == 204
        assert sim.webhook_drops() == []
        bad = [
            {"count": 0},
            {"count": 1, "connector": "nobody"},
            {"count": 1, "colour": "red"},
        ]
        statuses = [
            httpx.post(f"{sim.base_url}/_sim/webhooks/drop", json=b).status_code for b in bad
        ]
        assert statuses == [422, 404, 422]
        sim.drop_webhooks(3, event=DATA_MODIFIED)
        sim.reset()  # reset disarms the rules with the rest
        assert sim.webhook_drops() == []


def test_replay_resends_the_exact_signed_body_k_times():
    with Receiver() as receiver, server(receiver) as sim:
        ids = change_two(sim)
        done = sim.sync("acme")
        log = settled(sim, 3)
        index = next(i for i, e in enumerate(log) if e["event"] == DATA_MODIFIED)
        new_ids = sim.replay_webhook(index, times=10)
        assert len(new_ids) == 10 and len(set(new_ids)) == 10
        log = settled(sim, 13)
        original = log[index]["delivery_id"]
        replays = [e for e in log if e["replay_of"] == original]
        assert [e["delivery_id"] for e in replays] == new_ids
        assert all(e["outcome"] == "delivered" and e["sync_id"] == done["sync_id"] for e in replays)

        deliveries = [
            (h, b)
            for h, b in receiver.deliveries()
            if json.loads(b)["webhook"]["event"] == DATA_MODIFIED
        ]
        assert len(deliveries) == 11
        first_headers, first_body = deliveries[0]
        assert sorted(json.loads(first_body)["data"]) == sorted(ids)
        for headers, body in deliveries[1:]:
            assert body == first_body
            assert headers[SIGNATURE] == first_headers[SIGNATURE] == signature_of(body)


def test_replay_over_http_by_index_or_delivery_id_and_of_a_dropped_delivery():
    with Receiver() as receiver, server(receiver) as sim:
        sim.drop_webhooks(1, event=DATA_MODIFIED)
        ids = change_two(sim)
        sim.sync("acme")
        log = settled(sim, 3)
        assert log[-1]["outcome"] == "dropped"
        assert events(receiver, DATA_MODIFIED) == []

        # Replaying the lost delivery delivers it late.
        answer = httpx.post(f"{sim.base_url}/_sim/webhooks/replay", json={"index": -1, "times": 1})
        assert answer.status_code == 202
        (late_id,) = answer.json()["delivery_ids"]
        settled(sim, 4)
        (late,) = events(receiver, DATA_MODIFIED)
        assert sorted(late["data"]) == sorted(ids)

        by_id = httpx.post(
            f"{sim.base_url}/_sim/webhooks/replay", json={"delivery_id": late_id, "times": 2}
        )
        assert by_id.status_code == 202
        log = settled(sim, 6)
        # A replay of a replay names the delivery it copied.
        assert [e["replay_of"] for e in log[-2:]] == [late_id, late_id]
        assert len(events(receiver, DATA_MODIFIED)) == 3

        refused = [
            ({"index": 99}, 404),
            ({"delivery_id": 12345}, 404),
            ({"index": 0, "delivery_id": 1}, 422),
            ({}, 422),
            ({"index": 0, "times": 0}, 422),
        ]
        for body, status in refused:
            answer = httpx.post(f"{sim.base_url}/_sim/webhooks/replay", json=body)
            assert answer.status_code == status, body


def test_a_sync_that_only_deletes_names_the_deleted_ids():
    with Receiver() as receiver, server(receiver) as sim:
        gone = sim.ids("acme", MODEL)[3:5]
        course = sim.ids("acme", "courses")[0]
        for record_id in gone:
            sim.delete("acme", MODEL, record_id)
        sim.delete("acme", "courses", course)
        assert sim.staged() == {"acme": 3, "globex": 0}
        done = sim.sync("acme")
        assert done["applied"] == 3
        settled(sim, 3)
        (modified,) = events(receiver, DATA_MODIFIED)
        assert modified["sync"]["sync_id"] == done["sync_id"]
        # One array across the connector's models, untagged.
        assert sorted(modified["data"]) == sorted([*gone, course])
        for record_id in gone:
            assert sim.get("acme", MODEL, record_id) is None


def test_a_mixed_sync_names_its_updates_creates_and_deletes():
    # The hinted sync: 6 updates, 2 creates and 2 deletes in one sync.
    with Receiver() as receiver, server(receiver, enrollments=500) as sim:
        ids = sim.ids("acme", MODEL)
        updated, deleted = ids[10:16], ids[100:102]
        for record_id in updated:
            sim.update("acme", MODEL, record_id, {"remote_id": "changed"})
        for record_id in deleted:
            sim.delete("acme", MODEL, record_id)
        created = [sim.create("acme", MODEL, {"remote_id": f"new-{n}"})["id"] for n in range(2)]
        done = sim.sync("acme")
        settled(sim, 3)
        (modified,) = events(receiver, DATA_MODIFIED)
        assert modified["sync"]["sync_id"] == done["sync_id"]
        assert sorted(modified["data"]) == sorted([*updated, *deleted, *created])
        assert all(sim.get("acme", MODEL, record_id) is not None for record_id in created)


def test_a_sync_that_changed_nothing_sends_no_ids():
    with Receiver() as receiver, server(receiver) as sim:
        sim.sync("acme")
        log = settled(sim, 2)
        assert [e["event"] for e in log] == ["connector_sync_started", "connector_synced"]
        assert events(receiver, DATA_MODIFIED) == []


def test_send_a_hand_made_hint_naming_chosen_ids():
    with Receiver() as receiver, server(receiver) as sim:
        done = sim.sync("acme")
        many = [f"0190{n:04x}-0000-7000-8000-000000000000" for n in range(500)]
        sim.send_webhook("acme", many, sync_id=done["sync_id"])
        answer = httpx.post(
            f"{sim.base_url}/_sim/webhooks/send",
            json={"connector": "globex", "data": ["../../users", "x y"]},
        )
        assert answer.status_code == 202 and answer.json()["delivery_id"] > 0
        settled(sim, 4)
        first, second = events(receiver, DATA_MODIFIED)
        assert first["data"] == many and first["sync"]["sync_id"] == done["sync_id"]
        assert first["connector"]["id"] == sim.connector("acme")["id"]
        assert second["data"] == ["../../users", "x y"]
        assert second["connector"]["id"] == sim.connector("globex")["id"]
        assert second["sync"]["sync_type"] == "AUTOMATED" and second["sync"]["sync_id"]
        for headers, body in receiver.deliveries():
            assert headers[SIGNATURE] == signature_of(body)
        unknown = httpx.post(
            f"{sim.base_url}/_sim/webhooks/send", json={"connector": "nobody", "data": []}
        )
        assert unknown.status_code == 404


def test_delivery_controls_need_a_webhook_url():
    with SimServer(enrollments=5, api_key=API_KEY) as sim:
        for path, body in [
            ("drop", {"count": 1}),
            ("replay", {"index": 0}),
            ("send", {"connector": "acme", "data": []}),
        ]:
            answer = httpx.post(f"{sim.base_url}/_sim/webhooks/{path}", json=body)
            assert answer.status_code == 409, path
        assert httpx.get(f"{sim.base_url}/_sim/webhooks/drop").json() == []


@pytest.mark.parametrize("connector", ["acme"])
def test_reads_count_pages_and_reads_by_id(connector):
    with SimServer(enrollments=250, api_key=API_KEY, rate_limit=0) as sim:
        headers = {"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_acme"}
        one, two = sim.ids(connector, MODEL)[:2]
        with httpx.Client(base_url=sim.base_url, headers=headers, timeout=10) as client:
            client.get(f"/api/lms/v1/{MODEL}", params={"page_size": 100}).raise_for_status()
            for record_id in (one, one, two, "0190ffff-0000-7000-8000-000000000000"):
                client.get(f"/api/lms/v1/{MODEL}/{record_id}")
        reads = httpx.get(f"{sim.base_url}/_sim/reads").json()
        assert reads == sim.reads()
        assert reads[connector] == {
            "pages": 1,
            "by_id": 4,
            "ids": {
                f"{MODEL}/{one}": 2,
                f"{MODEL}/{two}": 1,
                f"{MODEL}/0190ffff-0000-7000-8000-000000000000": 1,
            },
        }
        sim.reset()
        assert sim.reads() == {}
