"""Poison records never stop the feed: a malformed item is dead-lettered once, the rest of
its page goes on, nothing is taken for deleted, and a fixed record flows again.

Real parts: a tansu broker, the daemon's Runtime and StreamPass (as `poll` runs them),
SQLite state on disk, and the API over loopback HTTP: the simulator where it can serve the
poison (``?unchecked=true`` records, the item-without-id fault), otherwise a scripted API
(``ScriptedApi``, a plain HTTP server) for items the simulator cannot hold: not an object,
a non-string id, no id at all, and a value nested deeper than orjson writes (the
simulator encodes its pages with orjson, so it cannot serve one).
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
import pytest
import yaml
from prometheus_client import REGISTRY

from daemon.__main__ import main
from daemon.runtime import Runtime
from daemon.settings import Settings, load_settings
from daemon.sink.events import fingerprint
from tests.helpers import feed_config, new_enrollment
from tests.kafka_read import read_topic
from tests.schema_check import validate_event

LABELS = {"connector": "acme", "model": "enrollments"}


# ---- a scripted API: serves exactly the items it is given -----------------------------------


class ScriptedApi:
    """``GET /api/lms/v1/enrollments`` over loopback, paging ``items`` (any JSON values,
    encoded with the standard library, so deeper than orjson writes) by offset cursors."""

    api_key = "scripted-key"

    def __init__(self, items: list[Any]) -> None:
        self.tokens = {"acme": "scripted-token"}
        self.items = items
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/api/lms/v1/enrollments":
                    self.send_error(404)
                    return
                query = parse_qs(url.query)
                size = int(query.get("page_size", ["100"])[0])
                start = int(query.get("cursor", ["0"])[0])
                page = api.items[start : start + size]
                more = start + size < len(api.items)
                body = {"items": page, "cursor": str(start + size) if more else None}
                content = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def good(n: int, modified: str = "2025-01-01T00:00:00Z", **fields: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=n + 1)),
        "remote_id": f"R-{n}",
        "modified_at": modified,
        "user": str(uuid.UUID(int=1000 + n)),
        "course": str(uuid.UUID(int=2000 + n)),
        **fields,
    }


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _without(record: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in names}


# name -> (make the poison from the record it replaces, reason, identifiable)
POISON: dict[str, tuple[Callable[[dict[str, Any]], Any], str, bool]] = {
    "not an object": (lambda r: [r["id"], r["modified_at"]], "not_an_object", False),
    "no id, remote_id stored": (lambda r: _without(r, "id"), "no_id", True),
    "no id, no remote_id": (lambda r: _without(r, "id", "remote_id"), "no_id", False),
    "non-string id, remote_id stored": (lambda r: {**r, "id": 7}, "bad_id", True),
    "non-string id, no remote_id": (
        lambda r: {**_without(r, "remote_id"), "id": 7},
        "bad_id",
        False,
    ),
    "modified_at missing": (lambda r: _without(r, "modified_at"), "no_modified_at", True),
    "modified_at garbage": (lambda r: {**r, "modified_at": "garbage"}, "bad_modified_at", True),
    "unhashable value": (lambda r: {**r, "raw_data": {"deep": _nested(300)}}, "unhashable", True),
}


# ---- helpers ----------------------------------------------------------------------------------


def config_for(api: Any, broker: Any, tmp_path: Path, **model: Any) -> dict[str, Any]:
    config = feed_config(api, broker, tmp_path, **model)
    prefix = config["kafka"]["topic_template"].split(".")[0]
    config["kafka"]["dead_letter_topic"] = f"{prefix}.deadletter"
    config["bindbee"]["max_attempts"] = 2
    return config


def poll_full(settings: Settings):
    runtime = Runtime.open(settings)
    try:
        (stream_pass,) = runtime.passes(["acme"], ["enrollments"])
        result = stream_pass.run(force_full=True)
    finally:
        runtime.close()
    assert result.completed
    return result


def events(broker: Any, topic: str, expected: int) -> list[dict[str, Any]]:
    # read_topic validates every CloudEvent against its schema (tests/schema_check).
    records = read_topic(broker.bootstrap, topic, expected=expected, quiet_seconds=1.0)
    assert len(records) == expected, [r.key for r in records]
    for record in records:
        validate_event(record.value)
    return [orjson.loads(r.value) for r in records if r.value is not None]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {**LABELS, **labels}) or 0.0


def status(config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    code = main(["status", "--config", str(path)])
    out = capsys.readouterr().out
    (header,) = [line for line in out.splitlines() if "┃ stream" in line]
    (row,) = [line for line in out.splitlines() if "acme/enrollments" in line]
    names = [c.strip() for c in header.strip("┃").split("┃")]
    cells = [c.strip() for c in row.strip("│").split("│")]
    return code, dict(zip(names, cells, strict=True)), out


# ---- every kind of poison ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(POISON))
def test_a_poison_record_is_dead_lettered_once_and_the_feed_goes_on(
    broker, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    make, reason, identifiable = POISON[kind]
    records = [good(n) for n in range(30)]
    with ScriptedApi(copy.deepcopy(records)) as api:
        config = config_for(api, broker, tmp_path)
        settings = load_settings(None, **config)
        topic = settings.kafka.topic_for("acme", "enrollments")
        dead = settings.kafka.dead_letter_topic
        poll_full(settings)
        assert len(events(broker, topic, 30)) == 30

        # Record 5 turns into poison, record 9 is deleted, 30 and 31 are new: page 1
        # (page_size 20) carries the poison among good items.
        poison = make(copy.deepcopy(records[5]))
        api.items[5] = poison
        del api.items[9]
        api.items += [good(30), good(31)]
        config["bindbee"]["page_size"] = 20
        settings = load_settings(None, **config)
        rejected_before = sample("changefeed_items_rejected_total", reason=reason)
        first = poll_full(settings)
        second = poll_full(settings)  # the same poison again: not dead-lettered again

        assert (first.rejected, first.dead_lettered) == (1, 1)
        assert (second.rejected, second.dead_lettered) == (1, 0)
        assert sample("changefeed_items_rejected_total", reason=reason) == rejected_before + 1
        data = events(broker, topic, 30 + 2 + (1 if identifiable else 0))
        kinds = Counter((e["type"].rsplit(".", 1)[1], e["subject"]) for e in data[30:])
        expected = {("created", good(30)["id"]): 1, ("created", good(31)["id"]): 1}
        if identifiable:
            expected[("deleted", records[9]["id"])] = 1
        # Never a false delete of the poisoned record 5.
        assert dict(kinds) == expected

        (letter,) = events(broker, dead, 1)
        body = letter["data"]
        assert letter["type"] == "bindbee.lms.enrollments.rejected"
        assert body["item"] == json.loads(json.dumps(poison))
        assert (body["connector"], body["model"], body["reason"]) == ("acme", "enrollments", reason)
        assert (body["page"], body["position"]) == (1, 5)
        assert body["scan"] == first.scan_number and body["fingerprint"] == fingerprint(poison)
        assert body["record_id"] == (records[5]["id"] if identifiable else None)
        assert letter.get("subject") == body["record_id"]

        withheld = sample("changefeed_deletes_withheld")
        code, row, out = status(config, tmp_path, capsys)
        if identifiable:
            assert first.delete_guard is None and first.stats.deleted == 1 and withheld == 0
            assert code == 0
        else:
            assert first.stats.deleted == 0 and second.stats.deleted == 0
            assert "cannot identify" in (first.delete_guard or "")
            assert withheld == 1.0
            assert row["delete guard"].startswith("the full scan rejected 1 item(s) it")
            assert "cannot identify" in out
            assert code == 1  # the delete guard column says why
        assert row["rejected"] == "1"

        # Fixed upstream: the record flows as usual, and held deletes go through.
        api.items[5] = {**records[5], "modified_at": "2025-06-01T00:00:00Z", "grade": "A"}
        fixed = poll_full(settings)
        assert (fixed.rejected, fixed.stats.updated) == (0, 1)
        assert fixed.delete_guard is None and sample("changefeed_deletes_withheld") == 0
        assert fixed.stats.deleted == (0 if identifiable else 1)
        latest = events(broker, topic, 30 + 2 + 1 + 1)
        (update,) = [e for e in latest if e["type"].endswith(".updated")]
        assert update["subject"] == records[5]["id"]
        assert update["data"]["record"]["grade"] == "A"
        code, row, _ = status(config, tmp_path, capsys)
        assert code == 0 and row["rejected"] == "0" and row["delete guard"] == "-"
        assert len(events(broker, dead, 1)) == 1  # nothing more dead-lettered


def test_a_page_of_only_poison_commits_and_moves_on(broker, tmp_path: Path) -> None:
    items = [good(n) for n in range(10)] + [{"no": "id"}, "junk", 42] + [good(10)]
    with ScriptedApi(items) as api:
        config = config_for(api, broker, tmp_path, params={})
        config["bindbee"]["page_size"] = 10
        settings = load_settings(None, **config)
        result = poll_full(settings)
        assert result.stats.pages == 2 and (result.rejected, result.dead_lettered) == (3, 3)
        assert result.stats.created == 11
        letters = events(broker, settings.kafka.dead_letter_topic, 3)
        assert sorted(e["data"]["position"] for e in letters) == [0, 1, 2]
        assert {e["data"]["reason"] for e in letters} == {"no_id", "not_an_object"}


# ---- the simulator: the "done when" ---------------------------------------------------


@pytest.fixture
def sim_1000() -> Iterator[Any]:
    from bindbee_sim import SimServer

    with SimServer(connectors={"acme": "tok_acme"}, enrollments=1000, seed=3, rate_limit=0) as sim:
        yield sim


def test_done_when_1050_good_records_and_one_garbage(
    sim_1000, broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = sim_1000
    config = config_for(sim, broker, tmp_path)
    settings = load_settings(None, **config)
    topic = settings.kafka.topic_for("acme", "enrollments")
    poll_full(settings)
    created = [sim.create("acme", "enrollments", new_enrollment(sim))["id"] for _ in range(50)]
    bad = sim.create("acme", "enrollments", {"modified_at": "garbage"}, unchecked=True)["id"]
    passes = [poll_full(settings), poll_full(settings)]

    data = events(broker, topic, 1050)
    assert Counter(e["type"] for e in data) == {"bindbee.lms.enrollments.created": 1050}
    assert {e["subject"] for e in data} == set(sim.ids("acme", "enrollments")) - {bad}
    assert set(created) <= {e["subject"] for e in data}
    (letter,) = events(broker, settings.kafka.dead_letter_topic, 1)
    assert letter["subject"] == bad and letter["data"]["reason"] == "bad_modified_at"
    assert letter["data"]["item"] == {"id": bad, "modified_at": "garbage"}
    assert [(p.stats.deleted, p.delete_guard, p.rejected) for p in passes] == [
        (0, None, 1),
        (0, None, 1),
    ]
    code, row, _ = status(config, tmp_path, capsys)
    assert code == 0 and row["rejected"] == "1" and row["delete guard"] == "-"

    # Fixed through the simulator: its normal event follows (it was never stored: created).
    sim.update("acme", "enrollments", bad, {**new_enrollment(sim)})
    assert sim.get("acme", "enrollments", bad)["modified_at"] != "garbage"
    fixed = poll_full(settings)
    assert (fixed.rejected, fixed.stats.created) == (0, 1)
    (last,) = [e for e in events(broker, topic, 1051) if e["subject"] == bad]
    assert last["type"] == "bindbee.lms.enrollments.created"
    code, row, _ = status(config, tmp_path, capsys)
    assert code == 0 and row["rejected"] == "0"
