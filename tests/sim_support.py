"""Shared fixtures and helpers of the tests/*/test_sim_*.py files (no tests of its own).

A module re-exports a fixture with ``sim = support.sim``; pytest then gives each
module its own module-scoped server (``shared_sim``) and overrides the
conftest's fresh-server ``sim`` fixture with the reset shared one.
"""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from datetime import timedelta, timezone

import httpx
import pytest

from bindbee_sim import SimServer

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


class Receiver:
    """A real HTTP server on loopback that records webhook deliveries.

    ``answers`` is consumed one status per request (then 200); ``hang`` makes
    every request wait until the receiver closes, i.e. never answer in time.
    """

    def __init__(self, answers: list[int] | None = None, hang: bool = False) -> None:
        self.answers = list(answers or [])
        self.hang = hang
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append((dict(self.headers.items()), body))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                if receiver.hang:
                    receiver.closing.wait(30)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [body for _, body in self.received]

    def deliveries(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.received)
