"""Webhooks from the simulator to a real receiver on loopback: envelope, signature, retries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import httpx
import pytest

from bindbee_sim import SimServer
from tests.harness import wait_until
from tests.sim_support import API_KEY, ENROLLMENTS, Receiver

SECRET = "whsec-test-key"
SIGNATURE = "X-Bindbee-Webhook-Signature"


def expected_signature(body: bytes, encoding: str = "base64url") -> str:
    """Computed here, independently of bindbee_sim.webhooks."""
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    return digest.hex() if encoding == "hex" else base64.urlsafe_b64encode(digest).decode()


def events(receiver: Receiver) -> list[dict]:
    return [json.loads(body) for body in receiver.bodies()]


def server(receiver: Receiver, **options: object) -> SimServer:
    defaults = {
        "connectors": {"acme": "tok_acme"},
        "enrollments": 40,
        "api_key": API_KEY,
        "sync_mode": "scheduled",
        "sync_duration_seconds": 0,
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_timeout_seconds": 2,
        "webhook_retry_window_seconds": 3,
    }
    return SimServer(**{**defaults, **options})


@pytest.mark.parametrize("encoding", ["base64url", "hex"])
def test_a_sync_sends_signed_started_synced_and_data_modified(encoding):
    with Receiver() as receiver, server(receiver, webhook_signature_encoding=encoding) as sim:
        ids = sim.ids("acme", "enrollments")[:2]
        for record_id in ids:
            sim.update("acme", "enrollments", record_id, {"remote_id": "W"})
        done = sim.sync("acme")
        # The log entry follows the answer: wait for it rather than for the receiver.
        wait_until(lambda: len(sim.webhooks()) == 3, what="three logged deliveries")
        for headers, body in receiver.deliveries():
            assert headers[SIGNATURE] == expected_signature(body, encoding)
            assert headers["Content-Type"] == "application/json"
        started, synced, modified = events(receiver)
        assert [e["webhook"]["event"] for e in (started, synced, modified)] == [
            "connector_sync_started",
            "connector_synced",
            "connector_data_modified",
        ]
        listing = sim.connector("acme")
        for event in (started, synced, modified):
            assert set(event) == {"webhook", "connector", "data", "sync"}
            assert event["webhook"]["url"] == receiver.url and event["webhook"]["webhook_id"]
            assert event["sync"] == {
                "sync_id": done["sync_id"],
                "sync_type": "MANUAL",
                "sync_name": event["sync"]["sync_name"],
            }
            conn = event["connector"]
            assert set(conn) == {
                "id", "display_name", "integration_slug", "categories", "org_name",
                "origin_id", "connector_status", "end_user_name", "end_user_email",
            }  # fmt: skip
            assert conn["id"] == listing["id"] and conn["origin_id"] == "acme"
            assert conn["categories"] == ["LMS"] and conn["connector_status"] == "COMPLETE"
            assert "tok_acme" not in json.dumps(event)  # no token in a webhook
        assert synced["data"] == {
            "id": listing["id"],
            "integration_name": synced["data"]["integration_name"],
            "category": "LMS",
            "display_status": "Done",
            "last_sync_start_time": done["started_at"],
        }
        assert sorted(modified["data"]) == sorted(ids)
        log = sim.webhooks()
        assert [(e["event"], e["attempt"], e["status"], e["outcome"]) for e in log] == [
            ("connector_sync_started", 1, 200, "delivered"),
            ("connector_synced", 1, 200, "delivered"),
            ("connector_data_modified", 1, 200, "delivered"),
        ]
        assert httpx.get(f"{sim.base_url}/_sim/webhooks").json() == log


def test_a_failed_sync_sends_connector_sync_error():
    with Receiver() as receiver, server(receiver) as sim:
        sim.sync("acme", fail=True)
        wait_until(lambda: len(receiver.bodies()) == 2, what="two deliveries")
        started, error = events(receiver)
        assert started["webhook"]["event"] == "connector_sync_started"
        assert error["webhook"]["event"] == "connector_sync_error"
        assert error["data"]["display_status"] == "Failed"
        assert set(error["error"]) == {"failed_at", "message", "detail"}
        assert error["error"]["detail"] == "simulated failure"


def test_a_sync_without_changes_sends_no_data_modified():
    with Receiver() as receiver, server(receiver) as sim:
        sim.sync("acme")
        wait_until(lambda: len(sim.webhooks()) == 2, what="two attempts")
        assert [e["webhook"]["event"] for e in events(receiver)] == [
            "connector_sync_started",
            "connector_synced",
        ]


def test_live_mode_changes_send_sync_events():
    with Receiver() as receiver, server(receiver, sync_mode="live") as sim:
        record = sim.create("acme", "users", {"first_name": "Eve"})
        wait_until(lambda: len(receiver.bodies()) == 3, what="three deliveries")
        started, synced, modified = events(receiver)
        assert started["sync"] == synced["sync"] == modified["sync"]
        assert synced["sync"]["sync_type"] == "AUTOMATED"
        assert (
            synced["data"]["last_sync_start_time"] == sim.connector("acme")["last_sync_start_time"]
        )
        assert modified["data"] == [record["id"]]


def test_non_2xx_answers_are_retried_until_delivered():
    with Receiver(answers=[500, 500, 503]) as receiver, server(receiver) as sim:
        sim.set_connector("acme", status="RELINK_NEEDED")
        sim.sync("acme")  # fails: started + error events
        wait_until(
            lambda: (
                [e["outcome"] for e in sim.webhooks()][-1:] == ["delivered"]
                and len(sim.webhooks()) == 5
            ),
            what="both events delivered",
        )
        log = sim.webhooks()
        first = [e for e in log if e["event"] == "connector_sync_started"]
        assert [(e["attempt"], e["status"], e["outcome"]) for e in first] == [
            (1, 500, "retrying"),
            (2, 500, "retrying"),
            (3, 503, "retrying"),
            (4, 200, "delivered"),
        ]
        assert len(receiver.bodies()) == 5  # 4 tries of the first event, 1 of the second
        assert len(set(receiver.bodies()[:4])) == 1  # the same signed body each time
        headers, body = receiver.deliveries()[3]
        assert headers[SIGNATURE] == expected_signature(body)


def test_a_receiver_that_never_answers_gets_one_try_and_four_retries():
    with (
        Receiver(hang=True) as receiver,
        server(receiver, webhook_timeout_seconds=0.2, webhook_retry_window_seconds=3) as sim,
        httpx.Client(base_url=sim.base_url, timeout=10) as api,
    ):
        sim.sync("acme")
        # Deliveries hang, the API does not.
        headers = {"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_acme"}
        assert api.get(ENROLLMENTS, headers=headers).status_code == 200
        wait_until(
            lambda: any(e["outcome"] == "given_up" for e in sim.webhooks()), what="a give-up"
        )
        started = [e for e in sim.webhooks() if e["event"] == "connector_sync_started"]
        assert [(e["attempt"], e["status"]) for e in started] == [(n, None) for n in range(1, 6)]
        assert [e["outcome"] for e in started] == ["retrying"] * 4 + ["given_up"]
        assert all("Timeout" in e["error"] for e in started)
        assert len([b for b in receiver.bodies() if b"connector_sync_started" in b]) == 5


def test_a_refused_connection_is_retried_then_given_up():
    with Receiver() as receiver:
        url = receiver.url
    with SimServer(
        enrollments=5,
        webhook_url=url,  # nobody listens there any more
        webhook_secret=SECRET,
        webhook_retry_window_seconds=0.3,
        webhook_retries=2,
        sync_duration_seconds=0,
    ) as sim:
        sim.sync("acme")
        wait_until(lambda: len(sim.webhooks()) == 6, what="two events, three attempts each")
        outcomes = [(e["event"], e["attempt"], e["outcome"]) for e in sim.webhooks()]
        assert outcomes[:3] == [
            ("connector_sync_started", 1, "retrying"),
            ("connector_sync_started", 2, "retrying"),
            ("connector_sync_started", 3, "given_up"),
        ]
        assert all(e["status"] is None and "Connect" in e["error"] for e in sim.webhooks())


def test_reset_clears_the_delivery_log():
    with Receiver() as receiver, server(receiver) as sim:
        sim.sync("acme")
        wait_until(lambda: len(sim.webhooks()) == 2, what="two attempts")
        sim.reset()
        assert sim.webhooks() == []


def test_webhook_options_are_checked():
    with pytest.raises(ValueError, match="secret"):
        SimServer(webhook_url="http://127.0.0.1:9/hooks")
    with pytest.raises(ValueError, match="URL"):
        SimServer(webhook_secret="s")
    with pytest.raises(ValueError, match="encoding"):
        SimServer(
            webhook_url="http://127.0.0.1:9/",
            webhook_secret="s",
            webhook_signature_encoding="base32",
        )
    with pytest.raises(ValueError, match="http"):
        SimServer(webhook_url="ftp://example/", webhook_secret="s")
