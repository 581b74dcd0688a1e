"""Stores written by the 0004 code upgrade to 0005 (compact rows) with nothing re-sent.

The fixtures (tests/fixtures/state-0004, written by that code: make_fixtures.py there)
hold three stopped full scans: acme with 5 ``updated`` messages pending in its outbox,
globex stopped after page 2 (its events sent), initech in its delete phase with 50 of
its 150 deletes left. After the upgrade a real pass over the same simulator story sends
the outbox once, the 50 deletes, and nothing else; steady scans after that send nothing.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bindbee_sim import SimServer
from daemon.models import StreamKey
from daemon.runtime import Runtime
from daemon.settings import load_settings
from daemon.state import head_revision, migrate, open_store
from tests.kafka_read import read_topic

FIXTURES = Path(__file__).parents[1] / "fixtures" / "state-0004"
# By path: tests/fixtures/state-0.1.0 has a make_fixtures module too.
_spec = importlib.util.spec_from_file_location("make_fixtures_0004", FIXTURES / "make_fixtures.py")
assert _spec is not None and _spec.loader is not None
_story = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_story)
SIM, TOPICS, mutate = _story.SIM, _story.TOPICS, _story.mutate

ACME, GLOBEX, INITECH = (StreamKey(c, "enrollments") for c in ("acme", "globex", "initech"))


def _store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        path = tmp_path / "state.db"
        shutil.copy(FIXTURES / "sqlite.db", path)
        return str(path)
    url = request.getfixturevalue("pg_database")
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(FIXTURES / "postgres.sql")],
        check=True,
        capture_output=True,
    )
    return url


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_stopped_scans_resume_after_the_upgrade_and_send_nothing_twice(
    backend: str, broker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = _store_url(backend, tmp_path, request)
    assert migrate(target) == head_revision()
    with open_store(target) as store:
        outbox = [orjson.loads(m.value) for m in store.pending(ACME)]
        assert len(outbox) == 5 and {e["type"] for e in outbox} == {
            "bindbee.lms.enrollments.updated"
        }
        # What each scan saw before it stopped survived the upgrade.
        assert store.count_missing(GLOBEX) == (100, 300)  # page 3 not walked yet
        assert store.count_missing(INITECH) == (50, 200)  # 100 of 150 deleted already
        assert store.state(INITECH).scan_phase == "deletes"
    state = {"path": target} if backend == "sqlite" else {"url": target}
    template = TOPICS[backend]
    with SimServer(**SIM) as sim:
        for name in SIM["connectors"]:  # the fixture's initial syncs were of this data
            assert len(sim.ids(name, "enrollments")) == SIM["enrollments"]
        mutate(sim)
        settings = load_settings(
            None,
            bindbee={"base_url": sim.base_url, "api_key": sim.api_key, "page_size": 100},
            connectors=[{"name": n, "token": t} for n, t in SIM["connectors"].items()],
            models={"enrollments": {"lookback_seconds": 0, "max_delete_fraction": 0.9}},
            kafka={"bootstrap_servers": broker.bootstrap, "topic_template": template},
            state=state,
            http={"enabled": False},
        )
        runtime = Runtime.open(settings)
        try:
            passes = {p.key: p for p in runtime.passes()}
            acme, globex, initech = (passes[k].run() for k in (ACME, GLOBEX, INITECH))
            assert acme.completed and acme.resumed and acme.stats.pages == 2
            assert globex.completed and globex.stats.pages == 1 and globex.stats.updated == 0
            assert initech.completed and initech.stats.deleted == 50
            for key in (ACME, GLOBEX, INITECH):  # steady scans in the new layout
                steady = passes[key].run(force_full=True)
                assert steady.completed and steady.stats.unchanged == steady.stats.items
                assert steady.stats.deleted == 0
                assert runtime.store.pending(key) == []
            assert runtime.store.state(INITECH).records == 150
        finally:
            runtime.close()
        left = set(sim.ids("initech", "enrollments"))
    topic = settings.kafka.topic_for("acme", "enrollments")
    events = [orjson.loads(r.value) for r in read_topic(broker.bootstrap, topic, expected=55)]
    assert len(events) == 55 and set(Counter(e["id"] for e in events).values()) == {1}
    assert {e["id"] for e in outbox} <= {e["id"] for e in events}  # the outbox, once
    by_source = Counter(e["source"].rsplit("/", 1)[1] for e in events)
    assert by_source == {"acme": 5, "initech": 50}
    deleted = {e["subject"] for e in events if e["type"].endswith(".deleted")}
    assert len(deleted) == 50 and not deleted & left
