"""``connector_data_modified`` on the real webhook listener: its ids are taken (made
durable by the caller) before the 200, never coalesced, refused with 500 when they could
not be taken; a 413 is reported so every connector walks its next sync."""

from __future__ import annotations

import httpx
import orjson
from pydantic import SecretStr

from daemon.ops.webhook import IdsHint, WebhookReceiver, sign
from tests.harness import post_webhook, webhook_envelope

SECRET = "whsec-ids"


def delivery(ids: object, sync_id: str = "s1") -> tuple[bytes, str]:
    envelope = webhook_envelope("conn-1", "connector_data_modified", sync_id)
    envelope["data"] = ids
    body = orjson.dumps(envelope)
    return body, sign(SecretStr(SECRET), body)


def test_ids_are_taken_before_the_answer_and_never_coalesced() -> None:
    taken: list[IdsHint] = []
    pokes: list[str] = []
    with WebhookReceiver(
        "127.0.0.1",
        0,
        secret=SecretStr(SECRET),
        on_hint=lambda cid, _event: pokes.append(cid),
        on_ids=taken.append,
        hint_interval_seconds=3600,
        max_hint_ids=3,
    ) as rx:
        for sync in ("s1", "s2"):
            body, signature = delivery(["a", "b"], sync)
            assert post_webhook(rx.port, body, signature).status_code == 200
            assert taken[-1].sync_id == sync  # taken when the 200 came back
        body, signature = delivery(["a", "b", "c", "d"], "s3")
        assert post_webhook(rx.port, body, signature).status_code == 200
        body, signature = delivery("not a list", "s4")
        assert post_webhook(rx.port, body, signature).status_code == 400
    assert [h.ids for h in taken] == [("a", "b"), ("a", "b"), ()]
    assert taken[2].walk_reason is not None and "max_hint_ids" in taken[2].walk_reason
    assert len({h.dedupe for h in taken}) == 3
    assert pokes == ["conn-1"]  # the watcher's poke stays coalesced


def test_ids_that_could_not_be_taken_answer_500_so_bindbee_retries() -> None:
    calls: list[IdsHint] = []

    def failing(hint: IdsHint) -> None:
        calls.append(hint)
        if len(calls) == 1:
            raise RuntimeError("store down")

    with WebhookReceiver(
        "127.0.0.1", 0, secret=SecretStr(SECRET), on_hint=lambda *_: None, on_ids=failing
    ) as rx:
        body, signature = delivery(["a"])
        assert post_webhook(rx.port, body, signature).status_code == 500
        assert post_webhook(rx.port, body, signature).status_code == 200
    assert len(calls) == 2


def test_a_body_over_the_limit_is_reported() -> None:
    too_large: list[bool] = []
    with WebhookReceiver(
        "127.0.0.1",
        0,
        secret=SecretStr(SECRET),
        on_hint=lambda *_: None,
        on_ids=lambda _hint: None,
        on_too_large=lambda: too_large.append(True),
        max_body_bytes=1024,
    ) as rx:
        body, signature = delivery([f"id-{n:04d}" for n in range(200)])
        answer = httpx.post(
            f"http://127.0.0.1:{rx.port}/webhooks/bindbee",
            content=body,
            headers={"X-Bindbee-Webhook-Signature": signature},
            timeout=10,
        )
        assert answer.status_code == 413
    assert too_large == [True]


def test_a_hint_after_stop_answers_503_so_bindbee_retries_it() -> None:
    """Once the receiver stops, a hint is refused (503), never answered 200 and dropped."""
    taken: list[IdsHint] = []
    pokes: list[str] = []
    rx = WebhookReceiver(
        "127.0.0.1",
        0,
        secret=SecretStr(SECRET),
        on_hint=lambda cid, _event: pokes.append(cid),
        on_ids=taken.append,
    )
    rx.start()
    rx.stop()
    body, signature = delivery(["a"], "s1")
    status, outcome, _ = rx.handle(body, signature, "")
    assert (status, outcome) == (503, "stopping")
    synced = orjson.dumps(webhook_envelope("conn-1", "connector_synced", "s1"))
    status, outcome, _ = rx.handle(synced, sign(SecretStr(SECRET), synced), "")
    assert (status, outcome) == (503, "stopping")
    other = orjson.dumps(webhook_envelope("conn-1", "connector_created", "s1"))
    status, outcome, _ = rx.handle(other, sign(SecretStr(SECRET), other), "")
    assert (status, outcome) == (200, "ignored")
    assert taken == [] and pokes == []


def test_413s_reach_the_store_at_most_once_per_hint_interval() -> None:
    """The 413 path is unauthenticated: a flood of them writes once per hint interval."""
    now = [1000.0]
    too_large: list[float] = []
    with WebhookReceiver(
        "127.0.0.1",
        0,
        secret=SecretStr(SECRET),
        on_hint=lambda *_: None,
        on_ids=lambda _hint: None,
        on_too_large=lambda: too_large.append(now[0]),
        max_body_bytes=1024,
        hint_interval_seconds=5.0,
        clock=lambda: now[0],
    ) as rx:
        big = b"{" + b" " * 2048 + b"}"
        for _ in range(3):
            assert post_webhook(rx.port, big, None).status_code == 413
        now[0] += 5.0
        assert post_webhook(rx.port, big, None).status_code == 413
    assert too_large == [1000.0, 1005.0]
