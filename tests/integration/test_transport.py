"""One transport for both Bindbee readers: the data client (pages, records) and the
connectors list follow the same ``bindbee.*`` retry policy, Retry-After rule, cursor-loop
check and error translation; the list never waits for a connector's slots or budget.

Real parts: the simulator over loopback, its faults armed through ``/_sim/faults``
(``connectors_list`` for the list), the daemon's Runtime for the wiring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from daemon.errors import (
    ApiUnavailableError,
    AuthError,
    InvalidRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
)
from daemon.runtime import Runtime
from daemon.settings import BindbeeSettings, ConnectorSettings, load_settings
from daemon.source.client import BindbeeClient
from daemon.source.connectors import ConnectorDirectory
from daemon.source.pagination import iter_pages
from tests.harness import wait_until

READERS = ["data", "connectors"]
FIVE_CONNECTORS = {"acme": "tok_acme"} | {f"school_{n}": f"tok_school_{n}" for n in range(4)}
STATS_KEY = {"data": "acme", "connectors": "_org"}  # whom /_sim/stats counts them under


def settings_for(sim: Any, **overrides: Any) -> BindbeeSettings:
    values: dict[str, Any] = {
        "base_url": sim.base_url,
        "api_key": sim.api_key,
        "page_size": 100,
        "timeout_seconds": 5,
        "rate_limit": {"requests": 10_000, "per_seconds": 60},
    }
    return BindbeeSettings(**(values | overrides))


def arm(sim: Any, reader: str, **fault: Any) -> None:
    """Arm a fault over HTTP, scoped to what ``reader`` asks for."""
    scope = {"connector": "acme"} if reader == "data" else {"connectors_list": True}
    httpx.post(f"{sim.base_url}/_sim/faults", json=scope | fault).raise_for_status()


def stats(sim: Any, reader: str) -> dict[str, int]:
    answer = httpx.get(f"{sim.base_url}/_sim/stats")
    answer.raise_for_status()
    return answer.json().get(STATS_KEY[reader], {})


@contextlib.contextmanager
def reading(
    sim: Any, reader: str, settings: BindbeeSettings, **client: Any
) -> Iterator[tuple[Callable[[], Any], BindbeeClient]]:
    """One read of ``reader`` (the first enrollments page, or the whole connectors list)
    over a client's transport, and the client."""
    acme = ConnectorSettings(name="acme", token=sim.tokens["acme"])
    with BindbeeClient(settings, **client) as owner:
        if reader == "data":
            yield (lambda: owner.fetch_page(acme, "enrollments")), owner
        else:
            yield ConnectorDirectory.over(owner.transport, page_size=2).list, owner


# ---- one retry policy, from bindbee.* --------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
def test_retries_follow_max_attempts_and_backoff_settings(sim, reader: str) -> None:
    arm(sim, reader, status=503, count=50)
    waits: list[float] = []
    settings = settings_for(
        sim, max_attempts=5, backoff_base_seconds=0.25, backoff_max_seconds=0.75
    )
    with (
        capture_logs() as logs,
        reading(sim, reader, settings, sleep=waits.append) as (read, _),
        pytest.raises(ApiUnavailableError, match="gave up after 5 attempts"),
    ):
        read()
    assert stats(sim, reader) == {"503": 5}
    # Full jitter below min(cap, base * 2^(n-1)), from the settings, before retry n.
    ceilings = [0.25, 0.5, 0.75, 0.75]
    assert len(waits) == 4 and all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    retries = [line for line in logs if line["event"].endswith("_retry")]
    assert [line["attempt"] for line in retries] == [1, 2, 3, 4]


def test_a_default_directory_follows_the_settings_defaults(sim) -> None:
    # The connectors list had its own 4 attempts and 10 s cap; the settings say 6 and 30 s.
    defaults = BindbeeSettings(api_key="x")
    arm(sim, "connectors", status=502, count=50)
    waits: list[float] = []
    with (
        ConnectorDirectory(sim.base_url, sim.api_key, sleep=waits.append) as directory,
        pytest.raises(ApiUnavailableError, match=f"after {defaults.max_attempts} attempts"),
    ):
        directory.list()
    assert stats(sim, "connectors") == {"502": defaults.max_attempts}
    ceilings = [
        min(defaults.backoff_max_seconds, defaults.backoff_base_seconds * 2**n)
        for n in range(defaults.max_attempts - 1)
    ]
    assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))


def test_the_daemon_reads_the_connectors_list_with_its_bindbee_settings(
    sim, tmp_path: Path
) -> None:
    # Runtime.connectors() (discovery) reads the list over the data client's transport,
    # so bindbee.max_attempts applies to it too.
    config = {
        "bindbee": {
            "base_url": sim.base_url,
            "api_key": sim.api_key,
            "max_attempts": 2,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            "discover_connectors": True,
        },
        "connectors": [],
        "models": {"enrollments": {"trigger": "interval"}},
        "kafka": {"bootstrap_servers": "127.0.0.1:9"},  # created, never connected
        "state": {"path": str(tmp_path / "state.db")},
        "http": {"enabled": False},
    }
    runtime = Runtime.open(load_settings(None, **config))
    try:
        arm(sim, "connectors", status=500, count=50)
        with pytest.raises(ApiUnavailableError, match="after 2 attempts"):
            runtime.connectors()
        assert stats(sim, "connectors") == {"500": 2}
        httpx.delete(f"{sim.base_url}/_sim/faults").raise_for_status()
        assert [c.name for c in runtime.connectors()] == ["acme"]
    finally:
        runtime.close()


@pytest.mark.parametrize("reader", READERS)
def test_a_transient_fault_is_retried_to_success(sim, reader: str) -> None:
    arm(sim, reader, status=503, count=1)
    arm(sim, reader, malformed="json", count=1)
    arm(sim, reader, disconnect=True, count=1)
    settings = settings_for(sim, max_attempts=4)
    with reading(sim, reader, settings, sleep=lambda _: None) as (read, _):
        result = read()
    assert result.requests >= 4  # three failed tries, then the answer
    assert stats(sim, reader)["503"] == 1


# ---- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
def test_a_429_waits_retry_after_and_is_not_a_failed_try(sim, reader: str) -> None:
    # max_attempts=2: a 429, a 503, then the answer. Had the 429 counted as a failed try,
    # the 503 would have been the last one.
    arm(sim, reader, status=429, retry_after=1, count=1)
    arm(sim, reader, status=503, count=1)
    waits: list[float] = []
    with (
        capture_logs() as logs,
        reading(sim, reader, settings_for(sim, max_attempts=2), sleep=waits.append) as (read, _),
    ):
        result = read()
    assert result.requests == 3
    (limited,) = [line for line in logs if line["event"].endswith("_rate_limited")]
    assert limited["retry_after"] == 1.0
    assert stats(sim, reader) == {"429": 1, "503": 1, "200": 1}
    if reader == "connectors":
        assert len(waits) == 2 and waits[0] == 1.0  # slept out, then the back-off
    else:
        assert len(waits) == 1  # the back-off; the connector's limiter held the 429 back


def test_the_connectors_list_caps_retry_after_and_gives_up_after_max_attempts(sim) -> None:
    arm(sim, "connectors", status=429, retry_after=600, count=50)
    waits: list[float] = []
    with BindbeeClient(settings_for(sim, max_attempts=3), sleep=waits.append) as client:
        directory = ConnectorDirectory.over(client.transport, max_retry_after_seconds=5)
        with pytest.raises(RateLimitedError, match="after 3 tries"):
            directory.list()
    assert waits == [5, 5] and stats(sim, "connectors") == {"429": 3}


# ---- one cursor-loop check --------------------------------------------------------------------


@pytest.mark.sim(enrollments=10, connectors=FIVE_CONNECTORS)
@pytest.mark.parametrize("reader", READERS)
def test_a_cursor_loop_is_detected(sim, reader: str) -> None:
    # Page 1 as usual (a fault with no effect but its count), then page 2 echoes its cursor.
    arm(sim, reader, delay_ms=0, count=1)
    arm(sim, reader, malformed="cursor_loop", count=5)
    with (
        BindbeeClient(settings_for(sim, page_size=2)) as client,
        pytest.raises(MalformedResponseError, match="page 2: cursor repeats an earlier page"),
    ):
        if reader == "data":
            acme = ConnectorSettings(name="acme", token=sim.tokens["acme"])
            list(iter_pages(client, acme, "enrollments"))
        else:
            ConnectorDirectory.over(client.transport, page_size=2).list()


# ---- one error translation --------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"status": 401}, AuthError),
        ({"status": 403}, AuthError),
        ({"status": 404}, NotFoundError),
        ({"status": 422}, InvalidRequestError),
        ({"malformed": "json"}, MalformedResponseError),
        ({"malformed": "missing_items"}, MalformedResponseError),
        ({"disconnect": True}, ApiUnavailableError),
        ({"delay_ms": 1500}, ApiUnavailableError),
    ],
)
def test_every_failure_is_a_daemon_error(sim, reader: str, fault: dict, error: type) -> None:
    arm(sim, reader, count=50, **fault)
    settings = settings_for(sim, max_attempts=2, timeout_seconds=0.5)
    with (
        reading(sim, reader, settings, sleep=lambda _: None) as (read, _),
        pytest.raises(error) as info,
    ):
        read()
    assert not isinstance(info.value, httpx.HTTPError)
    if "status" in fault or "malformed" in fault:  # answered at once: counted by the sim
        retried = error is MalformedResponseError
        assert sum(stats(sim, reader).values()) == (2 if retried else 1)


def test_a_422_keeps_where_and_why_but_not_the_value_refused(sim) -> None:
    acme = ConnectorSettings(name="acme", token=sim.tokens["acme"])
    with (
        BindbeeClient(settings_for(sim)) as client,
        pytest.raises(InvalidRequestError) as info,
    ):
        client.fetch_page(acme, "enrollments", params={"page_size": 1234567})
    (problem,) = info.value.detail
    assert problem["loc"] == ["query", "page_size"] and "input" not in problem
    assert "1234567" not in str(info.value)


def test_each_reader_counts_its_answers_in_its_own_metric(sim) -> None:
    def api(status: str) -> float:
        labels = {"connector": "acme", "status": status}
        return REGISTRY.get_sample_value("changefeed_api_requests_total", labels) or 0.0

    def sync_check(outcome: str) -> float:
        labels = {"outcome": outcome}
        return REGISTRY.get_sample_value("changefeed_sync_check_requests_total", labels) or 0.0

    before = (api("200"), api("503"), sync_check("ok"), sync_check("http_503"))
    for reader in READERS:
        arm(sim, reader, status=503, count=1)
        with reading(sim, reader, settings_for(sim), sleep=lambda _: None) as (read, _):
            read()
    after = (api("200"), api("503"), sync_check("ok"), sync_check("http_503"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 1]


# ---- the connectors list spends no connector budget -------------------------------------------


def test_the_connectors_list_waits_for_no_connector_slot_or_budget(sim) -> None:
    # acme's one slot hangs on a slow answer and its budget (1 a minute) is spent: the
    # organisation's list still goes through at once.
    settings = settings_for(sim, rate_limit={"requests": 1, "per_seconds": 60})
    acme = ConnectorSettings(name="acme", token=sim.tokens["acme"])
    arm(sim, "data", delay_ms=3000, count=1)
    with (
        BindbeeClient(settings, connections_per_connector=1) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        hanging = pool.submit(client.fetch_page, acme, "enrollments")
        wait_until(lambda: client.in_flight("acme") == 1, 30, "acme's slot taken")
        directory = ConnectorDirectory.over(client.transport, page_size=1)
        with ThreadPoolExecutor(1) as guard:  # a deadline for a hang, not a timing
            listing = guard.submit(directory.list).result(timeout=30)
        assert [c.token.get_secret_value() for c in listing] == [sim.tokens["acme"]]
        assert client.in_flight("acme") == 1  # still hanging: the list did not wait for it
        assert len(hanging.result(timeout=30).items) == 100
    assert stats(sim, "data") == {"200": 1} and stats(sim, "connectors") == {"200": 1}


# ---- the simulator's connectors-list faults ---------------------------------------------------


def test_connectors_list_faults_touch_only_the_list(sim) -> None:
    base = sim.base_url
    headers = {"Authorization": f"Bearer {sim.api_key}", "x-connector-token": sim.tokens["acme"]}
    arm(sim, "connectors", status=500, count=1)
    assert httpx.get(f"{base}/api/lms/v1/enrollments", headers=headers).status_code == 200
    assert httpx.get(f"{base}/api/lms/v1/connectors", headers=headers).status_code == 500
    assert httpx.get(f"{base}/api/lms/v1/connectors", headers=headers).status_code == 200
    arm(sim, "data", status=500, count=1)
    assert httpx.get(f"{base}/api/lms/v1/connectors", headers=headers).status_code == 200
    wrong = {"connectors_list": True, "connector": "acme", "status": 500}
    assert httpx.post(f"{base}/_sim/faults", json=wrong).status_code == 422
