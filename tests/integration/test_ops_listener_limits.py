"""What the uvicorn listeners add for a port facing the internet, over real loopback sockets.

A connection that never completes a request head is closed after the read timeout;
a body is refused as soon as its running total passes the limit, before the client
has finished sending it, and what follows it is discarded only up to a bound;
past the connection cap a new connection is closed at once;
a malformed request costs a counter and the throttled log line, nothing more; and
no listener touches the process's signal handlers.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.ops.health import HealthServer
from daemon.ops.webhook import SIGNATURE_HEADER, WebhookReceiver

SECRET = "whsec-listener-limits-81f0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def ignore_hint(connector_id: str, event: str) -> None:
    return None


def bad_requests() -> float:
    value = REGISTRY.get_sample_value(
        "changefeed_webhook_deliveries_total", {"outcome": "bad_request"}
    )
    return value or 0.0


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset after an answer ends it too."""
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    return reply


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(
        "127.0.0.1",
        0,
        secret=SecretStr(SECRET),
        on_hint=ignore_hint,
        read_timeout_seconds=0.3,
        clock=FakeClock(),
    ) as rx:
        yield rx


@pytest.mark.parametrize("sent", [b"", b"POST /webhooks/bindbee HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_without_a_whole_request_head_is_closed(
    receiver: WebhookReceiver, sent: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
        sock.sendall(sent)
        assert read_until_closed(sock) == b""


def test_a_chunked_body_is_refused_while_it_still_arrives(receiver: WebhookReceiver) -> None:
    # 2 MiB of chunks and no last chunk: the 413 can only come from the running total.
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
        sock.sendall(
            f"POST {receiver.path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"{SIGNATURE_HEADER}: abc\r\n\r\n".encode()
        )
        chunk = b"10000\r\n" + b"z" * 0x10000 + b"\r\n"
        for _ in range(32):
            sock.sendall(chunk)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply


def test_a_sender_that_goes_on_after_its_413_is_cut_off(receiver: WebhookReceiver) -> None:
    # 100 MiB announced: the 413 comes first; what follows is dropped up to a bound
    # (4 x the 1 MiB limit), then the connection is closed rather than read to its end.
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
        sock.sendall(
            f"POST {receiver.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {100 << 20}\r\n"
            f"{SIGNATURE_HEADER}: abc\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
        with pytest.raises(OSError):  # a reset or a broken pipe, long before 100 MiB
            for _ in range(100 * 16):
                sock.sendall(b"x" * 65536)


def test_connections_past_the_cap_are_closed_at_once() -> None:
    with WebhookReceiver(
        "127.0.0.1", 0, secret=SecretStr(SECRET), on_hint=ignore_hint, max_connections=3
    ) as rx:
        held = [socket.create_connection(("127.0.0.1", rx.port), timeout=30) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", rx.port), timeout=30) as extra:
                # Closed long before the 10 s read timeout could close it.
                extra.settimeout(5)
                assert read_until_closed(extra) == b""
        finally:
            for sock in held:
                sock.close()


def test_malformed_requests_are_counted_and_logged_through_the_throttle(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    before = bad_requests()
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        for request in (
            b"NOT HTTP AT ALL\r\n\r\n",
            b"POST /webhooks/bindbee HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /webhooks/bindbee HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
                sock.sendall(request)
                assert read_until_closed(sock).startswith(b"HTTP/1.1 400")
    assert bad_requests() == before + 3
    lines = [entry for entry in logs if entry["event"] == "webhook_bad_request"]
    assert len(lines) == 1  # the throttle's clock did not move
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_listeners_leave_the_signal_handlers_alone() -> None:
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = [signal.getsignal(s) for s in signals]
    with (
        WebhookReceiver("127.0.0.1", 0, secret=SecretStr(SECRET), on_hint=ignore_hint),
        HealthServer("127.0.0.1", 0, liveness=lambda: (True, "ok"), readiness=lambda: (True, "ok")),
    ):
        during = [signal.getsignal(s) for s in signals]
        names = {t.name for t in threading.enumerate()}
    assert {"webhook-http", "health-http"} <= names
    assert during == before
    assert [signal.getsignal(s) for s in signals] == before
