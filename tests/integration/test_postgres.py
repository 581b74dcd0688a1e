"""The feed with its state on the machine's PostgreSQL instead of SQLite."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import psycopg
import pytest

from daemon.errors import StateStoreError, StreamHeldElsewhere
from daemon.runtime import Runtime
from daemon.settings import load_settings
from tests.helpers import feed_config, new_enrollment
from tests.kafka_read import read_topic, scan_end


@pytest.mark.sim(enrollments=300)
def test_feed_on_postgres_state(sim, broker, pg_schema: str, tmp_path: Path) -> None:
    config = feed_config(sim, broker, tmp_path)
    config["state"] = {"url": pg_schema}
    settings = load_settings(None, **config)
    topic = settings.kafka.topic_for("acme", "enrollments")

    runtime = Runtime.open(settings)
    try:
        assert runtime.store.dialect == "postgresql"
        (stream,) = runtime.passes()
        assert stream.run().stats.created == 300
        ids = sim.ids("acme", "enrollments")
        sim.update("acme", "enrollments", ids[0], {"end_date": "2036-01-01T00:00:00Z"})
        sim.delete("acme", "enrollments", ids[1])
        sim.create("acme", "enrollments", new_enrollment(sim))
        result = stream.run(force_full=True)
        assert (result.stats.created, result.stats.updated, result.stats.deleted) == (1, 1, 1)
        assert runtime.store.state(stream.key).records == 300
    finally:
        runtime.close()
    events = [orjson.loads(r.value) for r in read_topic(broker.bootstrap, topic, expected=303)]
    assert Counter(e["type"].rsplit(".", 1)[1] for e in events) == {
        "created": 301,
        "updated": 1,
        "deleted": 1,
    }


@pytest.mark.sim(enrollments=50)
def test_two_replicas_never_poll_the_same_stream(sim, broker, pg_schema: str, tmp_path) -> None:
    config = feed_config(sim, broker, tmp_path)
    config["state"] = {"url": pg_schema}
    settings = load_settings(None, **config)
    first, second = Runtime.open(settings), Runtime.open(settings)
    try:
        (mine,) = first.passes()
        (theirs,) = second.passes()
        assert mine.run().stats.created == 50
        with pytest.raises(StreamHeldElsewhere):
            theirs.run()
    finally:
        first.close()
        second.close()


@pytest.mark.sim(enrollments=300)
def test_a_page_whose_commit_fails_on_a_dropped_connection_is_walked_again(
    sim, broker, pg_schema: str, tmp_path: Path
) -> None:
    """The server drops the store's connection between two pages of an initial sync: the
    next page's commit fails, and the pass with it. The pass must not then commit that
    page's cursor without its rows and events (the retry gets a fresh connection): the
    next pass walks it again, and every record arrives."""
    config = feed_config(sim, broker, tmp_path)
    config["state"] = {"url": pg_schema}
    settings = load_settings(None, **config)
    topic = settings.kafka.topic_for("acme", "enrollments")
    mine = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    with psycopg.connect(pg_schema, autocommit=True) as admin:
        others = [pid for (pid,) in admin.execute(mine).fetchall()]
        runtime = Runtime.open(settings)
        try:
            (stream,) = runtime.passes()
            dropped: list[int] = []

            def drop_the_store_connection(_result: object) -> None:
                if not dropped:  # after page 1 (committed and sent)
                    dropped.extend(
                        pid
                        for (pid, _) in admin.execute(
                            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> ALL(%s)",
                            [others],
                        ).fetchall()
                    )

            with pytest.raises(StateStoreError, match="commit page failed"):
                stream.run(on_page=drop_the_store_connection)
            assert dropped
            assert runtime.store.state(stream.key).scan_pages == 1  # page 2 not committed
            assert stream.run().stats.created == 200  # pages 2 and 3
        finally:
            runtime.close()
    through = scan_end(broker.bootstrap, settings.kafka.control_topic, "acme/enrollments")
    events = [orjson.loads(r.value) for r in read_topic(broker.bootstrap, topic, through=through)]
    assert {e["subject"] for e in events} == set(sim.ids("acme", "enrollments"))
    assert len(events) <= 300 + 100  # at most page 1 again, the same bytes (same ids)
