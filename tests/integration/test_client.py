"""The Bindbee client against the simulator over loopback (no HTTP mocks)."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from structlog.testing import capture_logs

from daemon.backoff import delay_after, exponential, full_jitter
from daemon.errors import (
    ApiUnavailableError,
    AuthError,
    ChangefeedError,
    InvalidRequestError,
    MalformedResponseError,
    ScanInterrupted,
)
from daemon.settings import BindbeeSettings, ConnectorSettings
from daemon.source.client import (
    CONNECTIONS_PER_CONNECTOR,
    BindbeeClient,
    classify_item,
    classify_items,
)
from daemon.source.pagination import AHEAD, iter_pages
from tests.harness import ok_requests, wait_until
from tests.helpers import SECRET_API_KEY, SECRET_TOKEN

API_KEY, TOKEN = SECRET_API_KEY, SECRET_TOKEN


def make_client(
    sim,
    *,
    stop: threading.Event | None = None,
    connections: int = CONNECTIONS_PER_CONNECTOR,
    **overrides,
) -> BindbeeClient:
    values = {
        "base_url": sim.base_url,
        "api_key": sim.api_key,
        "page_size": 100,
        "timeout_seconds": 5,
        "max_attempts": 4,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "rate_limit": {"requests": 10_000, "per_seconds": 60},
    }
    values.update(overrides)
    return BindbeeClient(
        BindbeeSettings(**values), stop=stop, connections_per_connector=connections
    )


def _nested(depth: int) -> object:
    # Valid JSON, deeper than orjson writes (254): what the differ cannot hash.
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture
def acme(sim) -> ConnectorSettings:
    return ConnectorSettings(name="acme", token=sim.tokens["acme"])


@pytest.mark.parametrize("page_size", [1, 7, 50, 100])
def test_walks_every_page_at_several_sizes(sim, acme, page_size: int) -> None:
    with make_client(sim, page_size=page_size) as client:
        pages = list(iter_pages(client, acme, "enrollments"))
    total = len(sim.ids("acme", "enrollments"))
    assert len(pages) == math.ceil(total / page_size)
    assert [p.number for p in pages] == list(range(1, len(pages) + 1))
    assert pages[-1].next_cursor is None
    ids = [item["id"] for page in pages for item in page.items]
    assert ids == sim.ids("acme", "enrollments")


def test_the_walk_runs_a_bounded_number_of_pages_ahead_of_a_slow_caller(sim, acme) -> None:
    with make_client(sim, page_size=10) as client:
        before = ok_requests(sim)
        walk = iter_pages(client, acme, "enrollments")
        first = next(walk)
        # While the caller sits on page 1: AHEAD pages wait for it, one more waits for room.
        wait_until(lambda: ok_requests(sim) - before >= 2 + AHEAD, 30, "the pages ahead")
        walk.close()  # returns once the walker has stopped
        assert ok_requests(sim) - before == 2 + AHEAD
    assert first.number == 1 and len(first.items) == 10


def test_250_records_come_as_100_100_50(sim, acme) -> None:
    with make_client(sim) as client:
        pages = list(iter_pages(client, acme, "enrollments"))
    assert [len(p.items) for p in pages] == [100, 100, 50]


def test_resume_from_a_cursor_and_extra_params(sim, acme) -> None:
    with make_client(sim) as client:
        first = client.fetch_page(acme, "enrollments")
        assert "custom_fields" not in first.items[0]
        rest = list(
            iter_pages(
                client,
                acme,
                "enrollments",
                start_cursor=first.next_cursor,
                start_page=2,
                params={"include_custom_fields": True},
            )
        )
    assert [p.number for p in rest] == [2, 3]
    assert all("custom_fields" in item for page in rest for item in page.items)
    assert rest[0].items[0]["id"] > first.items[-1]["id"]


def test_invalid_request_is_not_retried_and_carries_detail(sim, acme) -> None:
    with make_client(sim) as client, pytest.raises(InvalidRequestError) as info:
        client.fetch_page(acme, "enrollments", params={"page_size": 101})
    assert info.value.detail and "page_size" in str(info.value.detail)
    assert sim.stats()["acme"].get("422") == 1


def test_wrong_api_key_and_unknown_token_are_auth_errors(sim, acme) -> None:
    with make_client(sim, api_key="wrong-key") as client, pytest.raises(AuthError):
        client.fetch_page(acme, "enrollments")
    bad = ConnectorSettings(name="acme", token="not-a-token")
    with make_client(sim) as client, pytest.raises(AuthError) as info:
        client.fetch_page(bad, "enrollments")
    assert "not-a-token" not in str(info.value)


def test_a_record_read_by_id_and_a_404_as_an_outcome(sim, acme) -> None:
    with make_client(sim) as client:
        rid = sim.ids("acme", "enrollments")[0]
        found = client.read_record(acme, "enrollments", rid)
        assert found.record is not None and found.record["id"] == rid
        assert found.rejected is None
        gone = client.read_record(acme, "enrollments", "00000000-0000-0000-0000-000000000000")
        assert gone.record is None and gone.rejected is None


def test_429_waits_retry_after_and_retries_the_same_request(sim, acme) -> None:
    sim.set_rate_limit(2, 1.0)
    # Someone else spends this window's budget: our first request meets a 429.
    headers = {"Authorization": f"Bearer {sim.api_key}", "x-connector-token": sim.tokens["acme"]}
    for _ in range(2):
        assert httpx.get(f"{sim.base_url}/api/lms/v1/users", headers=headers).status_code == 200
    with make_client(sim) as client:
        pages = list(iter_pages(client, acme, "enrollments"))
    assert len(pages) == 3
    stats = sim.stats()["acme"]
    assert stats["200"] == 5 and stats["429"] >= 1


def test_client_limiter_keeps_under_the_server_limit(sim, acme) -> None:
    sim.set_rate_limit(4, 1.0)
    with make_client(sim, page_size=25, rate_limit={"requests": 4, "per_seconds": 1.0}) as client:
        pages = list(iter_pages(client, acme, "enrollments"))
    assert len(pages) == 10
    assert sim.stats()["acme"] == {"200": 10}  # no 429 at all


def test_5xx_then_success(sim, acme) -> None:
    sim.add_fault(status=503, count=2, connector="acme")
    with make_client(sim) as client:
        page = client.fetch_page(acme, "enrollments")
    assert len(page.items) == 100
    assert sim.stats()["acme"] == {"503": 2, "200": 1}


def test_retries_exhausted_is_a_typed_error(sim, acme) -> None:
    sim.add_fault(status=500, count=50, connector="acme")
    with make_client(sim, max_attempts=3) as client, pytest.raises(ApiUnavailableError) as info:
        client.fetch_page(acme, "enrollments")
    assert "acme/enrollments page 1" in str(info.value) and "3 attempts" in str(info.value)
    assert sim.stats()["acme"] == {"500": 3}


@pytest.mark.parametrize("fault", [{"delay_ms": 1500}, {"disconnect": True}])
def test_timeouts_and_dropped_connections_are_retried(sim, acme, fault: dict) -> None:
    sim.add_fault(count=1, connector="acme", **fault)
    with make_client(sim, timeout_seconds=0.5) as client:
        page = client.fetch_page(acme, "enrollments")
    assert len(page.items) == 100


@pytest.mark.parametrize("kind", ["json", "missing_items", "item_without_id"])
def test_malformed_once_is_retried(sim, acme, kind: str) -> None:
    sim.add_fault(malformed=kind, count=1, connector="acme")
    with make_client(sim) as client:
        page = client.fetch_page(acme, "enrollments")
    assert len(page.items) == 100 and page.rejected == () and page.requests == 2


@pytest.mark.parametrize("kind", ["json", "missing_items"])
def test_malformed_for_good_names_connector_model_page(sim, acme, kind: str) -> None:
    sim.add_fault(malformed=kind, count=50, connector="acme")
    with make_client(sim, max_attempts=2) as client, pytest.raises(MalformedResponseError) as info:
        client.fetch_page(acme, "enrollments")
    assert "acme/enrollments page 1" in str(info.value)


def test_an_item_without_id_for_good_is_rejected_and_the_page_goes_on(sim, acme) -> None:
    # A malformed item is not a malformed page: after max_attempts tries the page comes
    # back with its 99 good items and the bad one, as the API sent it, to dead-letter.
    sim.add_fault(malformed="item_without_id", count=50, connector="acme")
    first = sim.records("acme", "enrollments")[0]
    with make_client(sim, max_attempts=2) as client, capture_logs() as logs:
        page = client.fetch_page(acme, "enrollments")
    assert [item["id"] for item in page.items] == sim.ids("acme", "enrollments")[1:100]
    (bad,) = page.rejected
    assert (bad.position, bad.reason, bad.record_id) == (0, "no_id", None)
    assert bad.remote_id == first["remote_id"] and "id" not in bad.raw
    assert bad.raw["modified_at"] == first["modified_at"]
    assert bad.detail == "item 0 has no id"
    assert page.requests == 2 and page.next_cursor is not None
    events = [line["event"] for line in logs]
    assert events == ["api_retry", "api_items_rejected"], logs
    assert "acme/enrollments page 1: item 0 has no id" in logs[0]["reason"]


def test_items_stored_bad_are_rejected_with_their_reasons(sim, acme) -> None:
    for body in ({"modified_at": "garbage"}, {"remote_id": "LMS-1"}, {"modified_at": 17}):
        sim.create("acme", "enrollments", body, unchecked=True)
    with make_client(sim, max_attempts=3) as client:
        pages = list(iter_pages(client, acme, "enrollments"))
    assert sum(len(p.items) for p in pages) == len(sim.ids("acme", "enrollments")) - 3
    (page,) = [p for p in pages if p.rejected]
    reasons = sorted(
        (r.reason, r.raw.get("remote_id"), r.record_id is not None) for r in page.rejected
    )
    assert reasons == [
        ("bad_modified_at", None, True),
        ("bad_modified_at", None, True),
        ("no_modified_at", "LMS-1", True),
    ]
    assert page.requests == 3  # fetched max_attempts times: a glitch would have cleared


@pytest.mark.parametrize(
    ("item", "reason", "detail"),
    [
        (["not", "an", "object"], "not_an_object", "item 4 is a JSON array"),
        ("text", "not_an_object", "item 4 is a JSON string"),
        (None, "not_an_object", "item 4 is a JSON null"),
        ({"modified_at": "2025-01-01T00:00:00Z"}, "no_id", "item 4 has no id"),
        ({"id": 7, "modified_at": "2025-01-01T00:00:00Z"}, "bad_id", "item 4 has an id that"),
        ({"id": "", "modified_at": "2025-01-01T00:00:00Z"}, "bad_id", "item 4 has an id that"),
        ({"id": "r1"}, "no_modified_at", "item 4 (id r1) has no modified_at"),
        ({"id": "r1", "modified_at": None}, "no_modified_at", "item 4 (id r1) has no"),
        ({"id": "r1", "modified_at": "x"}, "bad_modified_at", "item 4 (id r1) has an unreadable"),
        ({"id": "r1", "modified_at": 17}, "bad_modified_at", "item 4 (id r1) has a modified_at"),
        (
            {"id": "r1", "modified_at": "0001-01-01T00:00:00+01:00"},
            "bad_modified_at",
            "item 4 (id r1) has an unreadable",
        ),
        (
            {"id": "r1", "modified_at": "2025-01-01T00:00:00Z", "deep": _nested(300)},
            "unhashable",
            "item 4 (id r1) cannot be hashed",
        ),
    ],
)
def test_classify_item(item, reason: str, detail: str) -> None:
    rejected = classify_item(4, item)
    assert rejected is not None and rejected.reason == reason and rejected.raw is item
    assert rejected.detail.startswith(detail), rejected.detail
    good = {"id": "r1", "modified_at": "2025-01-01T00:00:00+02:00", "remote_id": "x"}
    assert classify_item(0, good) is None


class _Mapping(dict):  # type: ignore[type-arg]
    """A dict subclass: not what orjson builds, so it takes classify_item's way."""


def test_classify_items_gives_classify_item_verdicts_in_page_order() -> None:
    good = {"id": "r1", "modified_at": "2025-01-01T00:00:00Z"}
    page = [
        good,
        {"id": "r2", "modified_at": "2025-01-01T00:00:00Z", "deep": _nested(300)},
        ["not", "an", "object"],
        {"id": "r3", "modified_at": "0001-01-01T00:00:00+01:00"},
        _Mapping(id="r4", modified_at="2025-01-01T02:00:00+02:00"),
        {"id": "r5", "modified_at": "2025-01-01T00:00:00Z", "deep": _nested(300)},
        {"id": "", "modified_at": "2025-01-01T00:00:00Z"},
        {"id": "r6", "modified_at": "2025-01-01T00:00:00.5+01:00", "deep": _nested(200)},
    ]
    usable, rejected = classify_items(page)
    verdicts = [classify_item(position, item) for position, item in enumerate(page)]
    assert usable == [item for item, v in zip(page, verdicts, strict=True) if v is None]
    assert [r.position for r in rejected] == [1, 2, 3, 5, 6]
    assert rejected == [v for v in verdicts if v is not None]
    assert [r.reason for r in rejected] == [
        "unhashable", "not_an_object", "bad_modified_at", "unhashable", "bad_id"
    ]  # fmt: skip
    assert classify_items([good, good]) == ([good, good], [])


def test_classify_item_keeps_what_identifies_a_bad_item() -> None:
    no_id = classify_item(0, {"remote_id": "LMS-9", "modified_at": "2025-01-01T00:00:00Z"})
    assert no_id is not None and (no_id.record_id, no_id.remote_id) == (None, "LMS-9")
    bad_time = classify_item(0, {"id": "r1", "remote_id": "", "modified_at": "x"})
    assert bad_time is not None and (bad_time.record_id, bad_time.remote_id) == ("r1", None)


@pytest.mark.sim(connectors={"acme": "tok_acme", "globex": "tok_globex"})
def test_a_connector_with_hanging_requests_does_not_hold_back_another(sim, acme) -> None:
    # More hanging requests than the old pool-wide cap (32 connections for everyone): acme
    # gets its own few connection slots, globex walks all its pages while acme's hang.
    globex = ConnectorSettings(name="globex", token=sim.tokens["globex"])
    hanging = 40
    sim.add_fault(delay_ms=2000, count=hanging, connector="acme")
    stop = threading.Event()
    with make_client(sim, stop=stop) as client, ThreadPoolExecutor(hanging) as pool:
        slow = [pool.submit(client.fetch_page, acme, "enrollments") for _ in range(hanging)]
        wait_until(
            lambda: client.in_flight("acme") == CONNECTIONS_PER_CONNECTOR, 10, "acme's slots"
        )
        pages = list(iter_pages(client, globex, "enrollments"))
        # Order, not time: the server answered globex's whole walk and none of acme's yet.
        answered = sim.stats()
        assert [len(p.items) for p in pages] == [100, 100, 50]
        assert answered["globex"] == {"200": 3} and "acme" not in answered
        assert not any(future.done() for future in slow)
        stop.set()  # the requests still waiting for a slot end; the ones sent complete
        done = [future.exception() or future.result() for future in slow]
    sent = [d for d in done if not isinstance(d, BaseException)]
    assert len(sent) == CONNECTIONS_PER_CONNECTOR and all(len(p.items) == 100 for p in sent)
    assert all(isinstance(d, ScanInterrupted) for d in done if d not in sent)
    assert sim.stats()["acme"] == {"200": CONNECTIONS_PER_CONNECTOR}  # never more at once


@pytest.mark.parametrize(
    "fault", [{"status": 503}, {"disconnect": True}, {"delay_ms": 1500}], ids=str
)
def test_failed_attempts_give_their_connection_slot_back(sim, acme, fault: dict) -> None:
    # One slot: an attempt that kept it after failing would block its own retry forever.
    sim.add_fault(count=2, connector="acme", **fault)
    with make_client(sim, connections=1, timeout_seconds=0.5) as client:
        with ThreadPoolExecutor(1) as pool:  # a deadline for a leak, which would hang
            page = pool.submit(client.fetch_page, acme, "enrollments").result(timeout=30)
        assert len(page.items) == 100 and client.in_flight("acme") == 0


def test_cursor_loop_is_detected(sim, acme) -> None:
    # 25 pages of 10: the walk runs at most 1 + AHEAD pages ahead of the caller, so
    # pages are still unfetched when the fault is armed after the first one.
    with make_client(sim, page_size=10) as client:
        walk = iter_pages(client, acme, "enrollments")
        next(walk)
        sim.add_fault(malformed="cursor_loop", count=5, connector="acme")
        with pytest.raises(MalformedResponseError, match="cursor loop"):
            list(walk)


def test_secrets_never_show(sim_secret) -> None:
    sim = sim_secret
    connector = ConnectorSettings(name="acme", token=TOKEN)
    sim.add_fault(status=500, count=50, connector="acme")
    texts: list[str] = []
    with capture_logs() as logs, make_client(sim, max_attempts=2) as client:
        texts += [repr(client), repr(client.settings), repr(connector), str(client.settings)]
        with pytest.raises(ChangefeedError) as info:
            client.fetch_page(connector, "enrollments")
        texts.append(str(info.value))
        bad = ConnectorSettings(name="acme", token=TOKEN + "x")
        sim.clear_faults()
        with pytest.raises(AuthError) as auth:
            client.fetch_page(bad, "enrollments")
        texts.append(str(auth.value))
    texts += [str(entry) for entry in logs]
    assert logs, "the retry should have logged"
    for text in texts:
        assert API_KEY not in text and TOKEN not in text


def test_stop_ends_a_backoff_wait_with_scan_interrupted(sim, acme) -> None:
    sim.add_fault(status=500, count=50, connector="acme")
    stop = threading.Event()
    stop.set()  # already asked: the first back-off (up to 60 s) must not be waited out
    settings = BindbeeSettings(
        base_url=sim.base_url,
        api_key=sim.api_key,
        max_attempts=5,
        backoff_base_seconds=60,
        backoff_max_seconds=60,
        rate_limit={"requests": 10_000, "per_seconds": 60},
    )
    with BindbeeClient(settings, stop=stop) as client, pytest.raises(ScanInterrupted):
        client.fetch_page(acme, "enrollments")
    assert sim.stats()["acme"] == {"500": 1}


def test_stop_ends_a_retry_after_wait_with_scan_interrupted(sim, acme) -> None:
    sim.add_fault(status=429, retry_after=600, count=1, connector="acme")
    stop = threading.Event()
    stop.set()
    settings = BindbeeSettings(
        base_url=sim.base_url,
        api_key=sim.api_key,
        rate_limit={"requests": 10_000, "per_seconds": 60},
    )
    with BindbeeClient(settings, stop=stop) as client, pytest.raises(ScanInterrupted):
        client.fetch_page(acme, "enrollments")
    assert sim.stats()["acme"] == {"429": 1}


def test_backoff_delays_follow_the_retry_count(sim, acme) -> None:
    sim.add_fault(status=503, count=4, connector="acme")
    waits: list[float] = []
    settings = BindbeeSettings(
        base_url=sim.base_url,
        api_key=sim.api_key,
        max_attempts=5,
        backoff_base_seconds=0.5,
        backoff_max_seconds=1.5,
        rate_limit={"requests": 10_000, "per_seconds": 60},
    )
    with capture_logs() as logs, BindbeeClient(settings, sleep=waits.append) as client:
        assert len(client.fetch_page(acme, "enrollments").items) == 100
    retries = [line for line in logs if line["event"] == "api_retry"]
    assert [line["attempt"] for line in retries] == [1, 2, 3, 4]
    # Full jitter: each wait is drawn below min(cap, base * 2^(n-1)).
    ceilings = [0.5, 1.0, 1.5, 1.5]
    assert len(waits) == 4 and all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))


def test_one_formula_for_client_and_scheduler() -> None:
    steady = exponential(2.0, 300.0)
    assert [delay_after(steady, n) for n in range(1, 11)] == [
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        64.0,
        128.0,
        256.0,
        300.0,
        300.0,
    ]
    # A stream failing for weeks must not overflow the arithmetic.
    assert delay_after(steady, 100_000) == 300.0
    jittered = full_jitter(0.5, 30.0)
    for n in (1, 3, 8, 5_000):
        ceiling = delay_after(exponential(0.5, 30.0), n)
        assert all(0 <= delay_after(jittered, n) <= ceiling for _ in range(50))
