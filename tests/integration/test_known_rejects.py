"""Bug 10: an item already dead-lettered is not retried with its page on every later scan.

The first scan that meets a malformed item fetches its page ``max_attempts`` times (a
glitch would clear) and dead-letters it. A later scan finds the item's fingerprint in the
store and takes the page at its first answer: ceil(N / page_size) requests for the scan.

Real parts: the simulator (the malformed item stored with ``?unchecked=true``, requests
counted with ``/_sim/stats``), a SQLite store on disk, the session's tansu broker, and the
daemon's Runtime and StreamPass as ``poll`` runs them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.runtime import Runtime
from daemon.settings import load_settings
from tests.helpers import feed_config
from tests.kafka_read import read_topic

ENROLLMENTS = 250
PAGE_SIZE = 100
MAX_ATTEMPTS = 4


def ok_requests(sim: Any) -> int:
    answer = httpx.get(f"{sim.base_url}/_sim/stats")
    answer.raise_for_status()
    return answer.json().get("acme", {}).get("200", 0)


def full_pass(settings: Any) -> Any:
    runtime = Runtime.open(settings)
    try:
        (stream_pass,) = runtime.passes(["acme"], ["enrollments"])
        result = stream_pass.run(force_full=True)
    finally:
        runtime.close()
    assert result.completed
    return result


@pytest.mark.sim(enrollments=ENROLLMENTS)
def test_a_page_whose_bad_item_was_dead_lettered_costs_one_request(
    sim, broker, tmp_path: Path
) -> None:
    created = httpx.post(
        f"{sim.base_url}/_sim/acme/enrollments",
        params={"unchecked": "true"},
        json={"modified_at": "not a time"},
    )
    created.raise_for_status()
    config = feed_config(sim, broker, tmp_path)
    prefix = config["kafka"]["topic_template"].split(".")[0]
    config["kafka"]["dead_letter_topic"] = f"{prefix}.deadletter"
    config["bindbee"]["max_attempts"] = MAX_ATTEMPTS
    config["bindbee"]["page_size"] = PAGE_SIZE
    settings = load_settings(None, **config)
    pages = math.ceil((ENROLLMENTS + 1) / PAGE_SIZE)

    before = ok_requests(sim)
    first = full_pass(settings)
    # Met for the first time: its page is fetched max_attempts times, then dead-lettered.
    assert (first.rejected, first.dead_lettered) == (1, 1)
    assert ok_requests(sim) - before == first.stats.requests == pages + MAX_ATTEMPTS - 1

    before = ok_requests(sim)
    second = full_pass(settings)
    assert (second.rejected, second.dead_lettered) == (1, 0)
    assert ok_requests(sim) - before == second.stats.requests == pages
    assert second.stats.items == ENROLLMENTS

    letters = read_topic(
        broker.bootstrap, settings.kafka.dead_letter_topic, expected=1, quiet_seconds=1.0
    )
    assert len(letters) == 1  # no second dead letter


@pytest.mark.sim(enrollments=ENROLLMENTS)
def test_a_new_bad_item_beside_a_known_one_is_still_retried(sim, broker, tmp_path: Path) -> None:
    # Only a page whose bad items are *all* known is taken at once: a new one may be a
    # glitch, so its page gets the usual tries.
    config = feed_config(sim, broker, tmp_path)
    prefix = config["kafka"]["topic_template"].split(".")[0]
    config["kafka"]["dead_letter_topic"] = f"{prefix}.deadletter"
    config["bindbee"]["max_attempts"] = MAX_ATTEMPTS
    settings = load_settings(None, **config)
    create = f"{sim.base_url}/_sim/acme/enrollments"
    httpx.post(create, params={"unchecked": "true"}, json={"modified_at": 1}).raise_for_status()
    assert full_pass(settings).dead_lettered == 1
    httpx.post(create, params={"unchecked": "true"}, json={"modified_at": 2}).raise_for_status()

    before = ok_requests(sim)
    result = full_pass(settings)
    assert (result.rejected, result.dead_lettered) == (2, 1)
    # Both new records sort last (UUIDv7 ids): one page holds them both.
    pages = math.ceil((ENROLLMENTS + 2) / PAGE_SIZE)
    assert ok_requests(sim) - before == result.stats.requests == pages + MAX_ATTEMPTS - 1
