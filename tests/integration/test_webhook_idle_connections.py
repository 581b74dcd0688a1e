"""The webhook port under idle connections: a delivery is still answered at once.

Real sockets on loopback against the real listener. The 1 s bound is the issue's
functional deadline, asserted as the request's own timeout (not a measured speed).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest
from pydantic import SecretStr

from daemon.ops.webhook import SIGNATURE_HEADER, WebhookReceiver, sign

SECRET = "whsec-idle-connections-3c9b"
IDLE = 500


class Hints:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, connector_id: str, event: str) -> None:
        with self.lock:
            self.calls.append((connector_id, event))


def delivery(connector_id: str) -> bytes:
    return orjson.dumps(
        {
            "webhook": {
                "webhook_id": "wh-1",
                "url": "https://x.test/h",
                "event": "connector_synced",
            },
            "connector": {"id": connector_id, "display_name": "Acme"},
            "data": {"id": connector_id, "display_status": "Done"},
            "sync": {"sync_id": "s-1", "sync_type": "AUTOMATED", "sync_name": "daily"},
        }
    )


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither closed nor reset the connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""  # data would be a surprise, but not a closed socket
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


@pytest.fixture
def idle() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def test_a_delivery_is_answered_within_1s_while_500_connections_idle(
    idle: list[socket.socket],
) -> None:
    hints = Hints()
    # The longest read timeout settings allow: the idle connections must outlive the test
    # however slow the machine, so that the delivery really competes with them.
    with WebhookReceiver(
        "127.0.0.1", 0, secret=SecretStr(SECRET), on_hint=hints, read_timeout_seconds=60
    ) as rx:
        head = f"POST {rx.path} HTTP/1.1\r\nHost: x\r\n".encode()
        for n in range(IDLE):
            sock = socket.create_connection(("127.0.0.1", rx.port), timeout=30)
            idle.append(sock)
            if n % 2:
                sock.sendall(head)  # half of them stop in the middle of a request head

        body = delivery("conn-idle")
        with httpx.Client(timeout=httpx.Timeout(1.0)) as client:
            response = client.post(
                rx.url, content=body, headers={SIGNATURE_HEADER: sign(SecretStr(SECRET), body)}
            )
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "accepted"
        assert hints.calls == [("conn-idle", "connector_synced")]
        # The listener kept every idle connection: the answer did not come from a cap.
        assert all(still_open(sock) for sock in idle)
