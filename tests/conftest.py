"""Shared fixtures: brokers, simulators, topic names, PostgreSQL schemas (helpers: helpers.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from bindbee_sim import SimServer
from devtools.tansu import TansuBroker
from tests.helpers import SECRET_API_KEY, SECRET_TOKEN


@pytest.fixture(scope="session")
def broker() -> Iterator[TansuBroker]:
    """A tansu broker shared by the whole session: do not stop, pause or restart it."""
    with TansuBroker() as started:
        yield started


@pytest.fixture
def own_broker() -> Iterator[TansuBroker]:
    """A broker this test may pause, stop or start (never the session's)."""
    with TansuBroker() as started:
        yield started


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"test-{uuid.uuid4().hex[:16]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sim(**kwargs): SimServer arguments for the `sim` fixture (e.g. enrollments=N)"
    )


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    """A fresh in-process Bindbee simulator (connector acme); size it with @pytest.mark.sim."""
    options = {"connectors": {"acme": "tok_acme"}, "enrollments": 250, "seed": 7, "rate_limit": 0}
    marker = request.node.get_closest_marker("sim")
    if marker is not None:
        options.update(marker.kwargs)
    with SimServer(**options) as server:
        yield server


@pytest.fixture
def sim_secret() -> Iterator[SimServer]:
    """A simulator whose API key and token are recognisable, to hunt for leaks."""
    with SimServer(
        connectors={"acme": SECRET_TOKEN},
        enrollments=120,
        seed=7,
        rate_limit=0,
        api_key=SECRET_API_KEY,
    ) as server:
        yield server


PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A throw-away schema on the machine's PostgreSQL; the store's DSN points into it."""
    psycopg = pytest.importorskip("psycopg")
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG_URL}: {exc}")
    admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        admin.execute(f"DROP SCHEMA {name} CASCADE")
        admin.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throw-away database on the machine's PostgreSQL (for dumps that name ``public``)."""
    psycopg = pytest.importorskip("psycopg")
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG_URL}: {exc}")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()
