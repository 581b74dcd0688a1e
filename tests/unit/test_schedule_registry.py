"""The stream registry and reload diffing (``daemon.schedule.registry``): values only."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.models import StreamKey
from daemon.schedule.registry import StreamRegistry, restart_needed
from daemon.settings import Settings
from daemon.source.connectors import ConnectorInfo


def settings(connectors: list[dict[str, Any]] | None = None, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "bindbee": {"api_key": "k"},
        "connectors": [{"name": "acme", "token": "t1"}] if connectors is None else connectors,
        "models": {"enrollments": {}, "users": {"trigger": "interval"}},
    }
    values.update(extra)
    return Settings(**values)


def listed(connector_id: str, origin: str, token: str, *, active: bool = True) -> ConnectorInfo:
    return ConnectorInfo(
        id=connector_id,
        is_active=active,
        status="ACTIVE",
        sync_status="Done",
        last_sync_start_time=None,
        next_sync_start_time=None,
        integration_slug="moodle",
        is_test_connector=False,
        origin_id=origin,
        category="lms",
        token=SecretStr(token),
    )


def test_apply_adds_and_removes_streams_and_keeps_health() -> None:
    registry = StreamRegistry(threading.RLock())
    first = settings([{"name": "acme", "token": "t1"}, {"name": "globex", "token": "t2"}])
    assert registry.apply(first) == [
        StreamKey("acme", "enrollments"),
        StreamKey("acme", "users"),
        StreamKey("globex", "enrollments"),
        StreamKey("globex", "users"),
    ]
    registry.get(StreamKey("acme", "users")).health.failures = 3  # type: ignore[union-attr]
    second = settings([{"name": "acme", "token": "new", "poll_interval_seconds": {"users": 9.0}}])
    assert registry.apply(second) == []  # nothing new; globex is gone
    assert set(registry.snapshot()) == {
        StreamKey("acme", "enrollments"),
        StreamKey("acme", "users"),
    }
    kept = registry.get(StreamKey("acme", "users"))
    assert kept is not None
    assert kept.health.failures == 3  # the same stream, with its health
    assert kept.connector.token.get_secret_value() == "new"  # type: ignore[union-attr]
    assert kept.interval(second) == 9.0


def test_discovery_adds_listed_connectors_once() -> None:
    registry = StreamRegistry(threading.RLock())
    config = settings([], bindbee={"api_key": "k", "discover_connectors": True})
    assert registry.apply(config) == []
    listing = [listed("c-1", "initech", "t3"), listed("c-2", "gone", "t4", active=False)]
    assert registry.discover(listing, config) == [
        StreamKey("c-1", "enrollments"),
        StreamKey("c-1", "users"),
    ]
    assert registry.name(StreamKey("c-1", "users")) == "initech/users"
    assert registry.discover(listing, config) == []  # the same list changes nothing
    assert registry.discover([], config) == []  # gone: no longer scheduled here
    assert len(registry) == 0


def test_watched_are_the_sync_streams() -> None:
    registry = StreamRegistry(threading.RLock())
    config = settings()
    registry.apply(config)
    [watched] = registry.watched(config)
    assert watched.key == StreamKey("acme", "enrollments")
    assert watched.token == "t1"


BASE = settings()


@pytest.mark.parametrize(
    ("changed", "restart"),
    [
        ({}, []),
        ({"scheduler": {"jitter_seconds": 1.0}}, []),  # applies to the next pass
        ({"connectors": [{"name": "other", "token": "t9"}]}, []),
        ({"models": {"enrollments": {"poll_interval_seconds": 60.0}, "users": {}}}, []),
        ({"bindbee": {"api_key": "k", "discover_connectors": True}}, []),
        ({"bindbee": {"api_key": "other"}}, ["bindbee"]),
        ({"kafka": {"bootstrap_servers": "elsewhere:9092"}}, ["kafka"]),
        ({"state": {"path": "other.db"}}, ["state"]),
        ({"http": {"port": 9999}}, ["http"]),
        ({"scheduler": {"max_workers": 3}}, ["scheduler.max_workers"]),
        (
            {"scheduler": {"claim_interval_seconds": 9.0}},
            ["scheduler.claim_interval_seconds"],
        ),
        ({"scheduler": {"replica_id": "r2"}}, ["scheduler.replica_id"]),
        ({"models": {"enrollments": {}}}, ["the set of models"]),
    ],
)
def test_restart_needed_names_what_a_reload_cannot_apply(
    changed: dict[str, Any], restart: list[str]
) -> None:
    assert restart_needed(BASE, settings(**changed), has_watcher=True) == restart


def test_a_sync_trigger_needs_a_running_watcher() -> None:
    interval_only = settings(models={"enrollments": {"trigger": "interval"}, "users": {}})
    now_sync = settings(
        models={"enrollments": {"trigger": "interval"}, "users": {"trigger": "sync"}}
    )
    assert restart_needed(interval_only, now_sync, has_watcher=False) == [
        "trigger: sync without a running sync watcher"
    ]
    assert restart_needed(interval_only, now_sync, has_watcher=True) == []
