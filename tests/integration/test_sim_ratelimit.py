"""Per-token rate limits of the simulator: headers, 429, fixed windows."""

from __future__ import annotations

import math
import time

from bindbee_sim.ratelimit import FixedWindowLimiter
from tests import sim_support as support
from tests.sim_support import (
    CONNECTORS,
    ENROLLMENTS,
)

shared_sim = support.shared_sim
sim = support.sim
client = support.client


# ---- rate limits --------------------------------------------------------------------


RATE_HEADERS = (
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-reset-after",
)


def test_rate_limit_headers_on_every_data_response(sim, client):
    sim.set_rate_limit(100, 60)
    sim.add_fault(status=503, count=1)
    responses = [
        client.get(ENROLLMENTS),  # fault: 503
        client.get(ENROLLMENTS),
        client.get(f"{ENROLLMENTS}/{sim.ids('acme', 'enrollments')[0]}"),
        client.get(f"{ENROLLMENTS}/00000000-0000-7000-8000-000000000000"),
        client.get(ENROLLMENTS, params={"page_size": 0}),
        client.get("/api/lms/v1/users"),
    ]
    assert [r.status_code for r in responses] == [503, 200, 200, 404, 422, 200]
    for k, response in enumerate(responses):
        assert all(h in response.headers for h in RATE_HEADERS), response.headers
        assert response.headers["x-ratelimit-limit"] == "100"
        assert response.headers["x-ratelimit-remaining"] == str(99 - k)
        reset = response.headers["x-ratelimit-reset"]
        assert reset.isdigit() and int(reset) >= math.floor(time.time())
        assert 0 <= float(response.headers["x-ratelimit-reset-after"]) <= 60


def test_sixth_request_in_a_window_of_five_is_429(sim, client):
    sim.set_rate_limit(5, 60)
    ok = [client.get(ENROLLMENTS, params={"page_size": 1}) for _ in range(5)]
    assert [r.status_code for r in ok] == [200] * 5
    assert [r.headers["x-ratelimit-remaining"] for r in ok] == ["4", "3", "2", "1", "0"]
    for _ in range(2):
        limited = client.get(ENROLLMENTS)
        assert limited.status_code == 429
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-ratelimit-reset"] == ok[0].headers["x-ratelimit-reset"]
    # Another token has its own window.
    other = client.get(ENROLLMENTS, headers={"x-connector-token": "tok_globex"})
    assert other.status_code == 200 and other.headers["x-ratelimit-remaining"] == "4"
    assert sim.stats()["acme"] == {"200": 5, "429": 2}


def test_fixed_window_semantics_with_a_test_clock():
    now = [1000.0]
    limiter = FixedWindowLimiter(3, 10.0, clock=lambda: now[0])
    assert [limiter.hit("t").remaining for _ in range(3)] == [2, 1, 0]
    now[0] = 1004.2
    rejected = limiter.hit("t")
    assert not rejected.allowed and rejected.remaining == 0
    headers = dict(rejected.headers())
    assert headers[b"retry-after"] == b"6" and headers[b"x-ratelimit-reset"] == b"1010"
    assert headers[b"x-ratelimit-reset-after"] == b"5.800"
    for _ in range(5):  # rejections never count
        assert not limiter.hit("t").allowed
    now[0] = 1010.0  # the window ended: a new one starts at this request
    fresh = limiter.hit("t")
    assert fresh.allowed and fresh.remaining == 2 and fresh.reset_at == 1020.0
    now[0] = 1019.5
    assert [limiter.hit("t").remaining for _ in range(2)] == [1, 0]
    rejected = limiter.hit("t")
    assert dict(rejected.headers())[b"retry-after"] == b"1"  # ceil, at least 1


def test_rate_limit_zero_disables_limiting(sim, client):
    sim.set_rate_limit(0, 60)
    response = client.get(ENROLLMENTS)
    assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers


def test_connectors_endpoint_is_not_rate_limited(sim, client):
    sim.set_rate_limit(1, 60)
    for _ in range(3):
        response = client.get(CONNECTORS)
        assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers
