"""The connectors-list reader against the simulator and a scripted loopback server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from structlog.testing import capture_logs

from bindbee_sim import SimServer
from daemon.errors import (
    ApiUnavailableError,
    AuthError,
    MalformedResponseError,
    RateLimitedError,
    ScanInterrupted,
)
from daemon.source.connectors import ConnectorDirectory, ConnectorInfo, parse_connector
from daemon.timestamps import normalize_time
from tests.harness import wait_until

API_KEY = "bb-key-do-not-leak-3c1e"
NAMES = {f"school_{n}": f"tok-school-{n}-do-not-leak" for n in range(5)}


def requests_counted(outcome: str) -> float:
    value = REGISTRY.get_sample_value("changefeed_sync_check_requests_total", {"outcome": outcome})
    return value or 0.0


def malformed_counted() -> float:
    return REGISTRY.get_sample_value("changefeed_sync_check_malformed_items_total") or 0.0


def no_sleep(delays: list[float]) -> Callable[[float], None]:
    return delays.append


# -- against the simulator -----------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(connectors=NAMES, enrollments=3, seed=11, api_key=API_KEY) as server:
        yield server


def raw_items(sim: SimServer) -> list[dict[str, Any]]:
    """Every item as the simulator serves it, read without our parser."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    with httpx.Client(base_url=sim.base_url, timeout=10) as http:
        while True:
            params = {"page_size": 100} | ({"cursor": cursor} if cursor else {})
            body = http.get(
                "/api/lms/v1/connectors",
                params=params,
                headers={"Authorization": f"Bearer {API_KEY}"},
            ).json()
            items += body["items"]
            cursor = body["cursor"]
            if cursor is None:
                return items


def test_lists_every_connector_across_pages(sim: SimServer) -> None:
    with ConnectorDirectory(sim.base_url, SecretStr(API_KEY), page_size=2) as directory:
        listing = directory.list()
    assert len(listing) == len(NAMES)
    assert listing.pages == 3  # 2 + 2 + 1
    assert listing.requests == 3
    assert listing.skipped == 0
    raw = {item["id"]: item for item in raw_items(sim)}
    assert [c.id for c in listing] == sorted(raw)  # the simulator's order, kept
    for connector in listing:
        item = raw[connector.id]
        assert connector.token.get_secret_value() == item["connector_token"]
        assert connector.is_active is item["is_active"]
        assert connector.status == item["status"]
        assert connector.sync_status == item["sync_status"]
        assert connector.integration_slug == item["integration_slug"]
        assert connector.category == item["category"]
        assert connector.is_test_connector is item["is_test_connector"]
        assert connector.origin_id == item["end_user"]["origin_id"]
        assert connector.last_sync_start_time == normalize_time(item["last_sync_start_time"])
    assert {c.origin_id for c in listing} == set(NAMES)


def test_matches_a_stream_to_its_connector_by_token(sim: SimServer) -> None:
    with ConnectorDirectory(sim.base_url, SecretStr(API_KEY)) as directory:
        listing = directory.list()
        token = SecretStr(NAMES["school_3"])
        found = listing.by_token(token)
        assert found is not None and found.origin_id == "school_3"
        assert listing.by_id(found.id) == found
        assert listing.by_token("no-such-token") is None
        # The server-side filter finds the same connector in one small read.
        assert directory.find_by_token(token) == found
        assert directory.list(is_active=False).connectors == ()


def test_token_never_shows_in_repr(sim: SimServer) -> None:
    with ConnectorDirectory(sim.base_url, SecretStr(API_KEY)) as directory:
        listing = directory.list()
        text = repr(listing) + repr(directory) + str(listing.connectors[0])
    assert all(token not in text for token in NAMES.values())
    assert API_KEY not in text


def test_wrong_api_key_is_an_auth_error(sim: SimServer) -> None:
    before = requests_counted("http_401")
    with (
        ConnectorDirectory(sim.base_url, SecretStr("wrong-key")) as directory,
        pytest.raises(AuthError) as info,
    ):
        directory.list()
    assert "wrong-key" not in str(info.value)
    assert requests_counted("http_401") == before + 1


# -- against a scripted server ---------------------------------------------------------

Reply = tuple[int, dict[str, str], bytes]


class Scripted:
    """A loopback HTTP server answering from a queue of replies per cursor."""

    def __init__(self, script: dict[str | None, list[Reply]]) -> None:
        self.script = script
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                cursor = query.get("cursor", [None])[0]
                with outer.lock:
                    outer.seen.append(
                        {
                            "path": urlsplit(self.path).path,
                            "query": query,
                            "headers": dict(self.headers),
                        }
                    )
                    replies = outer.script[cursor]
                    status, headers, body = replies.pop(0) if len(replies) > 1 else replies[0]
                if status == 0:  # hang until released: a read timeout for the client
                    outer.release.wait(30)
                    status, headers, body = 200, {}, b"{}"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[dict[str | None, list[Reply]]], Scripted]]:
    servers: list[Scripted] = []

    def start(script: dict[str | None, list[Reply]]) -> Scripted:
        server = Scripted(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def item(n: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": f"conn-{n}",
        "is_active": True,
        "status": "COMPLETE",
        "sync_status": "Done",
        "last_sync_start_time": "2026-01-02T03:04:05+02:00",
        "next_sync_start_time": "2026-01-03T03:04:05Z",
        "relink_needed_at": None,
        "completed_at": "2025-06-01T00:00:00Z",
        "created_at": "2025-06-01T00:00:00Z",
        "integration_slug": "moodle",
        "end_user": {"origin_id": f"org-{n}", "name": "Org", "email": "a@b.example"},
        "category": "LMS",
        "is_test_connector": n == 2,
        "connector_token": f"tok-{n}-do-not-leak",
    }
    base.update(fields)
    return base


def page(items: list[Any], cursor: str | None) -> Reply:
    body = {"cursor": cursor, "page_size": len(items), "items": items}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def test_pages_skips_and_retries(scripted: Callable[..., Scripted]) -> None:
    broken = item(3)
    del broken["id"]
    server = scripted(
        {
            None: [(503, {}, b"busy"), page([item(1), item(2)], "c2")],
            "c2": [(429, {"Retry-After": "0"}, b""), page([broken, item(4)], "c3")],
            "c3": [page([item(5), {"no": "id"}, "not an object"], None)],
        }
    )
    delays: list[float] = []
    ok_before, s503, s429 = (requests_counted(o) for o in ("ok", "http_503", "http_429"))
    malformed_before = malformed_counted()
    with (
        capture_logs() as logs,
        ConnectorDirectory(server.url, SecretStr(API_KEY), sleep=no_sleep(delays)) as directory,
    ):
        listing = directory.list()
    assert [c.id for c in listing] == ["conn-1", "conn-2", "conn-4", "conn-5"]
    assert listing.skipped == 3
    assert listing.pages == 3
    assert listing.requests == 5
    assert len(delays) == 2 and delays[1] == 0.0  # a back-off, then Retry-After: 0
    assert requests_counted("ok") == ok_before + 3
    assert requests_counted("http_503") == s503 + 1
    assert requests_counted("http_429") == s429 + 1
    assert malformed_counted() == malformed_before + 3
    skipped = [e for e in logs if e["event"] == "connector_item_skipped"]
    assert [e["reason"] for e in skipped] == [
        "id is missing",
        "id is missing",
        "item is not an object",
    ]
    first = listing.connectors[0]
    assert first == ConnectorInfo(
        id="conn-1",
        is_active=True,
        status="COMPLETE",
        sync_status="Done",
        last_sync_start_time="2026-01-02T01:04:05.000000Z",  # normalised to UTC
        next_sync_start_time="2026-01-03T03:04:05.000000Z",
        integration_slug="moodle",
        is_test_connector=False,
        origin_id="org-1",
        category="LMS",
        token=SecretStr("tok-1-do-not-leak"),
    )
    assert listing.connectors[1].is_test_connector is True
    for request in server.seen:
        assert request["path"] == "/api/lms/v1/connectors"
        assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
        assert "x-connector-token" not in {k.lower() for k in request["headers"]}
        assert request["query"]["page_size"] == ["100"]
    assert "tok-1-do-not-leak" not in repr(logs) + repr(listing)


def test_filters_are_sent(scripted: Callable[..., Scripted]) -> None:
    server = scripted({None: [page([item(1)], None)]})
    with ConnectorDirectory(server.url, SecretStr(API_KEY)) as directory:
        directory.list(connector_token=SecretStr("tok-1"), origin_id="org-1", is_active=True)
    query = server.seen[0]["query"]
    assert query["connector_token"] == ["tok-1"]
    assert query["origin_id"] == ["org-1"]
    assert query["is_active"] == ["true"]


def test_persistent_5xx_gives_up_with_api_unavailable(scripted: Callable[..., Scripted]) -> None:
    server = scripted({None: [(502, {}, b"")]})
    delays: list[float] = []
    with (
        ConnectorDirectory(
            server.url, SecretStr(API_KEY), max_attempts=3, sleep=no_sleep(delays)
        ) as directory,
        pytest.raises(ApiUnavailableError, match="gave up after 3 attempts"),
    ):
        directory.list()
    assert len(server.seen) == 3
    assert len(delays) == 2


def test_persistent_429_is_rate_limited(scripted: Callable[..., Scripted]) -> None:
    server = scripted({None: [(429, {"Retry-After": "7"}, b"")]})
    delays: list[float] = []
    with (
        ConnectorDirectory(
            server.url,
            SecretStr(API_KEY),
            max_attempts=3,
            max_retry_after_seconds=5,
            sleep=no_sleep(delays),
        ) as directory,
        pytest.raises(RateLimitedError),
    ):
        directory.list()
    assert delays == [5, 5]  # Retry-After, capped


@pytest.mark.parametrize(
    "reply",
    [
        (200, {}, b"<html>not json</html>"),
        (200, {}, b'{"cursor": null, "page_size": 0}'),
        (200, {}, b'{"cursor": 5, "items": []}'),
    ],
)
def test_unusable_bodies_are_malformed(scripted: Callable[..., Scripted], reply: Reply) -> None:
    server = scripted({None: [reply]})
    with (
        ConnectorDirectory(
            server.url, SecretStr(API_KEY), max_attempts=2, sleep=no_sleep([])
        ) as directory,
        pytest.raises(MalformedResponseError),
    ):
        directory.list()


def test_cursor_loop_is_malformed(scripted: Callable[..., Scripted]) -> None:
    server = scripted({None: [page([item(1)], "a")], "a": [page([item(2)], "a")]})
    with (
        ConnectorDirectory(server.url, SecretStr(API_KEY)) as directory,
        pytest.raises(MalformedResponseError, match="cursor loop"),
    ):
        directory.list()


def test_read_timeout_is_api_unavailable(scripted: Callable[..., Scripted]) -> None:
    server = scripted({None: [(0, {}, b"")]})
    before = requests_counted("timeout")
    with (
        ConnectorDirectory(
            server.url, SecretStr(API_KEY), timeout_seconds=0.2, max_attempts=2, sleep=no_sleep([])
        ) as directory,
        pytest.raises(ApiUnavailableError, match="timed out"),
    ):
        directory.list()
    assert requests_counted("timeout") == before + 2


def test_connection_refused_is_api_unavailable() -> None:
    # A port that was free a moment ago: nothing listens on it now.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()
    with (
        ConnectorDirectory(
            url, SecretStr(API_KEY), max_attempts=2, sleep=no_sleep([])
        ) as directory,
        pytest.raises(ApiUnavailableError, match="connection failed"),
    ):
        directory.list()


def test_stop_interrupts_the_back_off(scripted: Callable[..., Scripted]) -> None:
    server = scripted({None: [(503, {}, b"")]})
    stop = threading.Event()
    stop.set()
    with (
        ConnectorDirectory(server.url, SecretStr(API_KEY), stop=stop) as directory,
        pytest.raises(ScanInterrupted),
    ):
        directory.list()
    assert server.seen == []  # stopped before even asking


def test_stop_during_a_long_back_off_returns_at_once(scripted: Callable[..., Scripted]) -> None:
    server = scripted({None: [(503, {}, b"")]})
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        with ConnectorDirectory(
            server.url,
            SecretStr(API_KEY),
            stop=stop,
            backoff_base_seconds=3600,
            backoff_max_seconds=3600,
        ) as directory:
            try:
                directory.list()
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    # Wait on a condition (the first request arrived), not a sleep.
    wait_until(lambda: len(server.seen) >= 1, 30, "the first request")
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ScanInterrupted)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": 5}, "id is missing"),
        ({"connector_token": None}, "connector_token is missing"),
        ({"is_active": "yes"}, "is_active is not a boolean"),
        ({"last_sync_start_time": "yesterday"}, "last_sync_start_time is not an ISO 8601 time"),
        ({"sync_status": 1}, "sync_status is not a string"),
        ({"end_user": "org"}, "end_user is not an object"),
    ],
)
def test_parse_connector_names_the_bad_field(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_connector(item(1, **change))
    assert str(info.value) == reason


def test_parse_connector_tolerates_missing_optional_fields() -> None:
    parsed = parse_connector({"id": "c", "connector_token": "t"})
    assert parsed.is_active is True
    assert parsed.sync_status is None
    assert parsed.last_sync_start_time is None
    assert parsed.origin_id is None
    assert parsed.is_test_connector is False
    assert "t'" not in repr(parsed) and "token" not in repr(parsed)
