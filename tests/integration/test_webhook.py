"""The webhook receiver over real HTTP on loopback: signatures, limits, envelopes, coalescing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.errors import ConfigError
from daemon.ops.webhook import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    WebhookReceiver,
    sign,
    verify_signature,
)

SECRET = "whsec-do-not-leak-5e1d9a"
KEY = SECRET.encode()


class FakeClock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hints:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, connector_id: str, event: str) -> None:
        with self.lock:
            self.calls.append((connector_id, event))


def envelope(event: str = "connector_synced", connector_id: str = "conn-1", **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "webhook": {"webhook_id": "wh-1", "url": "https://example.test/hook", "event": event},
        "connector": {"id": connector_id, "display_name": "Acme", "integration_slug": "moodle"},
        "data": {
            "id": connector_id,
            "display_status": "Done",
            "last_sync_start_time": "2026-01-02T03:04:05Z",
        },
        "sync": {"sync_id": "s-1", "sync_type": "AUTOMATED", "sync_name": "daily"},
    }
    body.update(extra)
    return orjson.dumps(body)


def hex_sig(body: bytes) -> str:
    return hmac.new(KEY, body, hashlib.sha256).hexdigest()


def b64url_padded(body: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(KEY, body, hashlib.sha256).digest()).decode()


def deliveries(outcome: str) -> float:
    value = REGISTRY.get_sample_value("changefeed_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hints() -> Hints:
    return Hints()


@pytest.fixture
def receiver(clock: FakeClock, hints: Hints) -> Iterator[WebhookReceiver]:
    rx = WebhookReceiver(
        "127.0.0.1",
        0,
        secret=SecretStr(SECRET),
        on_hint=hints,
        clock=clock,
        hint_interval_seconds=5.0,
        read_timeout_seconds=2.0,
    )
    rx.start()
    assert rx.port != 0
    yield rx
    rx.stop()


_HTTP = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    _HTTP.close()


def post(rx: WebhookReceiver, body: bytes, signature: str | bytes | None) -> httpx.Response:
    headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    return _HTTP.post(rx.url, content=body, headers=headers)


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: sign(SecretStr(SECRET), b, "base64url"),  # unpadded base64url
        b64url_padded,
        lambda b: sign(SecretStr(SECRET), b, "base64"),
        lambda b: sign(SecretStr(SECRET), b, "base64").rstrip("="),
        hex_sig,
        lambda b: hex_sig(b).upper(),
        lambda b: "sha256=" + hex_sig(b),
    ],
    ids=["b64url", "b64url-padded", "b64", "b64-unpadded", "hex", "HEX", "sha256=hex"],
)
def test_valid_signature_in_each_encoding_is_a_hint(
    receiver: WebhookReceiver, hints: Hints, encode: Callable[[bytes], str]
) -> None:
    body = envelope()
    response = post(receiver, body, encode(body))
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "accepted"
    assert hints.calls == [("conn-1", "connector_synced")]


def test_data_modified_is_a_hint_too(receiver: WebhookReceiver, hints: Hints) -> None:
    body = envelope("connector_data_modified", "conn-9", data=["rec-1", "rec-2"])
    assert post(receiver, body, sign(KEY, body)).status_code == 200
    assert hints.calls == [("conn-9", "connector_data_modified")]


@pytest.mark.parametrize("event", ["connector_sync_started", "connector_sync_error", "new_event"])
def test_other_events_are_ignored_with_200(
    receiver: WebhookReceiver, hints: Hints, event: str
) -> None:
    body = envelope(event, error={"failed_at": "x", "message": "boom", "detail": None})
    before = deliveries("ignored")
    response = post(receiver, body, sign(KEY, body))
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    assert hints.calls == []
    assert deliveries("ignored") == before + 1


def test_wrong_or_missing_signature_is_401_without_a_hint(
    receiver: WebhookReceiver, hints: Hints
) -> None:
    body = envelope()
    before = deliveries("bad_signature")
    wrong = sign(b"another-secret", body)
    tampered_sig = sign(KEY, body + b" ")
    for signature in (None, "", wrong, tampered_sig, "not base64 !!", "é".encode()):
        response = post(receiver, body, signature)
        assert response.status_code == 401, signature
    assert hints.calls == []
    assert deliveries("bad_signature") == before + 6


def test_bad_signature_is_checked_before_the_body_is_parsed(
    receiver: WebhookReceiver, hints: Hints
) -> None:
    garbage = b"{this is not json"
    assert post(receiver, garbage, "bogus").status_code == 401
    assert post(receiver, garbage, None).status_code == 401
    # The same body correctly signed reaches the parser and is refused there.
    assert post(receiver, garbage, sign(KEY, garbage)).status_code == 400
    assert hints.calls == []


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"text"',
        b'{"webhook": {"event": "connector_synced"}}',
        b'{"connector": {"id": "c"}}',
        b'{"webhook": {"event": 3}, "connector": {"id": "c"}}',
        b'{"webhook": {"event": "connector_synced"}, "connector": {"id": ""}}',
        b'{"webhook": {"event": "connector_synced"}, "connector": "c"}',
        b"",
    ],
)
def test_signed_body_that_is_not_the_envelope_is_400(
    receiver: WebhookReceiver, hints: Hints, body: bytes
) -> None:
    response = post(receiver, body, sign(KEY, body))
    assert response.status_code == 400
    assert hints.calls == []


def test_oversize_body_is_413_from_content_length(receiver: WebhookReceiver, hints: Hints) -> None:
    before = deliveries("too_large")
    body = b"x" * (MAX_BODY_BYTES + 1)
    response = post(receiver, body, sign(KEY, body))
    assert response.status_code == 413
    assert hints.calls == []
    assert deliveries("too_large") == before + 1


def test_content_length_over_limit_is_refused_before_reading(receiver: WebhookReceiver) -> None:
    # Announce 100 MiB and send nothing: the answer must come without waiting for it.
    with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
        sock.sendall(
            f"POST {receiver.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {100 << 20}\r\n"
            f"{SIGNATURE_HEADER}: abc\r\n\r\n".encode()
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_chunked_body_over_limit_is_413(receiver: WebhookReceiver) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * 65536  # 20 x 64 KiB > 1 MiB

    response = _HTTP.post(
        receiver.url,
        content=chunks(),
        headers={SIGNATURE_HEADER: "abc"},
    )
    assert response.status_code == 413


def test_chunked_body_within_limit_is_verified_and_accepted(
    receiver: WebhookReceiver, hints: Hints
) -> None:
    body = envelope()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    response = _HTTP.post(
        receiver.url,
        content=chunks(),
        headers={SIGNATURE_HEADER: sign(KEY, body)},
    )
    assert response.status_code == 200
    assert hints.calls == [("conn-1", "connector_synced")]


def test_other_paths_404_and_other_methods_405(receiver: WebhookReceiver) -> None:
    base = f"http://127.0.0.1:{receiver.port}"
    body = envelope()
    assert _HTTP.post(base + "/other", content=body).status_code == 404
    assert _HTTP.get(base + "/").status_code == 404
    response = _HTTP.get(receiver.url)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert _HTTP.put(receiver.url, content=body).status_code == 405
    assert _HTTP.head(receiver.url).status_code == 405


def test_duplicate_deliveries_coalesce_to_one_hint_per_window(
    receiver: WebhookReceiver, hints: Hints, clock: FakeClock
) -> None:
    body = envelope()
    signature = sign(KEY, body)
    before = deliveries("coalesced")
    for _ in range(20):
        response = post(receiver, body, signature)
        assert response.status_code == 200
    assert hints.calls == [("conn-1", "connector_synced")]
    assert deliveries("coalesced") == before + 19
    # Another connector is not held back by the first one's window.
    other = envelope(connector_id="conn-2")
    assert post(receiver, other, sign(KEY, other)).json()["outcome"] == "accepted"
    clock.now += 4.9
    assert post(receiver, body, signature).json()["outcome"] == "coalesced"
    clock.now += 0.2
    assert post(receiver, body, signature).json()["outcome"] == "accepted"
    assert [c for c, _ in hints.calls] == ["conn-1", "conn-2", "conn-1"]


def test_a_failing_hint_answers_500_and_is_not_coalesced(clock: FakeClock) -> None:
    calls: list[str] = []

    def on_hint(connector_id: str, event: str) -> None:
        calls.append(connector_id)
        if len(calls) == 1:
            raise RuntimeError("queue closed")

    with WebhookReceiver(
        "127.0.0.1", 0, secret=SecretStr(SECRET), on_hint=on_hint, clock=clock
    ) as rx:
        body = envelope()
        assert post(rx, body, sign(KEY, body)).status_code == 500
        assert post(rx, body, sign(KEY, body)).status_code == 200
    assert calls == ["conn-1", "conn-1"]


def test_encodings_can_be_restricted(clock: FakeClock, hints: Hints) -> None:
    with WebhookReceiver(
        "127.0.0.1", 0, secret=SecretStr(SECRET), on_hint=hints, clock=clock, encodings=["hex"]
    ) as rx:
        body = envelope()
        assert post(rx, body, sign(KEY, body, "base64url")).status_code == 401
        assert post(rx, body, hex_sig(body)).status_code == 200


def test_secret_and_signature_never_reach_logs(receiver: WebhookReceiver, clock: FakeClock) -> None:
    body = envelope()
    good = sign(KEY, body)
    with capture_logs() as logs:
        post(receiver, body, good)
        post(receiver, body, "forged-" + good)
        post(receiver, b"{bad", sign(KEY, b"{bad"))
        post(
            receiver, envelope("connector_sync_error"), sign(KEY, envelope("connector_sync_error"))
        )
    text = repr(logs) + repr(receiver)
    assert SECRET not in text
    assert good not in text
    events = [entry["event"] for entry in logs]
    assert "webhook_hint" in events
    assert "webhook_bad_signature" in events
    warning = next(e for e in logs if e["event"] == "webhook_bad_signature")
    assert warning["log_level"] == "warning"
    assert warning["remote"] == "127.0.0.1"


def test_bad_signature_flood_logs_once_per_interval(
    receiver: WebhookReceiver, clock: FakeClock
) -> None:
    body = envelope()
    with capture_logs() as logs:
        for _ in range(10):
            post(receiver, body, "bogus")
        clock.now += 61
        post(receiver, body, "bogus")
    warnings = [e for e in logs if e["event"] == "webhook_bad_signature"]
    assert len(warnings) == 2
    assert warnings[1]["suppressed_since_last"] == 9


def test_slow_client_is_cut_off_by_the_read_timeout(clock: FakeClock, hints: Hints) -> None:
    # Announce a body and never send it: the server gives up after read_timeout, answers
    # 408 and closes the connection without a hint; the test waits on the socket, not a sleep.
    before = deliveries("timeout")
    with (
        WebhookReceiver(
            "127.0.0.1",
            0,
            secret=SecretStr(SECRET),
            on_hint=hints,
            clock=clock,
            read_timeout_seconds=0.3,
        ) as rx,
        socket.create_connection(("127.0.0.1", rx.port), timeout=30) as sock,
    ):
        sock.sendall(f"POST {rx.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(4096):  # until the server closes
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert deliveries("timeout") == before + 1
    assert hints.calls == []


def test_stop_is_quick_and_releases_the_port(clock: FakeClock, hints: Hints) -> None:
    rx = WebhookReceiver("127.0.0.1", 0, secret=SecretStr(SECRET), on_hint=hints, clock=clock)
    rx.start()
    port = rx.port
    idle = socket.create_connection(("127.0.0.1", port))  # an idle client
    try:
        rx.stop()
        rx.stop()  # twice is fine
        again = WebhookReceiver(
            "127.0.0.1", port, secret=SecretStr(SECRET), on_hint=hints, clock=clock
        )
        again.start()
        again.stop()
    finally:
        idle.close()


def test_port_in_use_is_a_config_error(receiver: WebhookReceiver, hints: Hints) -> None:
    clash = WebhookReceiver("127.0.0.1", receiver.port, secret=SecretStr(SECRET), on_hint=hints)
    with pytest.raises(ConfigError) as info:
        clash.start()
    assert info.value.field == "webhook.port"


def test_constructor_refuses_empty_secret_and_bad_path(hints: Hints) -> None:
    with pytest.raises(ValueError):
        WebhookReceiver("127.0.0.1", 0, secret=SecretStr(""), on_hint=hints)
    with pytest.raises(ValueError):
        WebhookReceiver("127.0.0.1", 0, secret=SecretStr("s"), on_hint=hints, path="hook")
    with pytest.raises(ValueError):
        WebhookReceiver(
            "127.0.0.1",
            0,
            secret=SecretStr("s"),
            on_hint=hints,
            encodings=["rot13"],  # type: ignore[list-item]
        )


def test_verify_signature_table() -> None:
    body = b'{"a":1}'
    assert verify_signature(KEY, body, sign(KEY, body))
    assert not verify_signature(KEY, body, None)
    assert not verify_signature(KEY, body, "   ")
    assert not verify_signature(KEY, b'{"a":2}', sign(KEY, body))
    assert not verify_signature(KEY, body, sign(KEY, body, "hex"), encodings=["base64url"])
