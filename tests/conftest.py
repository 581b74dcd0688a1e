"""Shared fixtures: brokers, simulators, topic names, PostgreSQL databases and schemas,
required tools; the `postgres` marker; the slowest-first order (helpers: harness.py).

Under pytest-xdist every worker is its own process with its own session: its own
``broker``, its own PostgreSQL database. ``CI`` set: a missing PostgreSQL or promtool
fails the tests that need it instead of skipping them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bindbee_sim import SimServer
from devtools.tansu import TansuBroker
from tests.harness import in_ci, require_tool
from tests.helpers import SECRET_API_KEY, SECRET_TOKEN

# -- Kafka, the simulator ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker() -> Iterator[TansuBroker]:
    """A tansu broker shared by the whole session (one per xdist worker): tests run one at a
    time on it, so a test may pause it briefly but must leave it running."""
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


# -- tools ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool's path (Debian's prometheus package); skipped without it, failed under CI."""
    return require_tool("promtool", "apt-get install prometheus (.ci/run does)")


# -- PostgreSQL -------------------------------------------------------------------------------

# The server, and a database on it to connect to for CREATE/DROP DATABASE. Tests never use a
# database they did not create.
PG_URL = os.environ.get("CHANGEFEED_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_FIXTURES = ("pg_server", "pg_worker_database", "pg_schema", "pg_database")


def pg_url(database: str, schema: str | None = None) -> str:
    """``PG_URL`` pointed at ``database`` (and with ``schema`` as its search path)."""
    parts = urlsplit(PG_URL)
    query = parts.query
    if schema is not None:
        query = "&".join(q for q in (query, f"options=-csearch_path%3D{schema}") if q)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, query, ""))


def _new_name() -> str:
    return f"cf_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[psycopg.Connection]:
    """An autocommit connection to ``PG_URL`` (the maintenance database)."""
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"no PostgreSQL at {PG_URL} (set CHANGEFEED_TEST_PG_URL): {exc}".strip()
        if in_ci():
            pytest.fail(f"CI is set, so this fails instead of skipping: {message}", pytrace=False)
        pytest.skip(message)
    with admin:
        yield admin


@pytest.fixture(scope="session")
def pg_worker_database(pg_server: psycopg.Connection) -> Iterator[str]:
    """This session's (this xdist worker's) own database, dropped at the end."""
    name = f"cf_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:8]}"
    pg_server.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        pg_server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_schema(pg_server: psycopg.Connection, pg_worker_database: str) -> Iterator[str]:
    """A throw-away schema in the worker's database; the store's DSN points into it."""
    name = _new_name()
    with psycopg.connect(pg_url(pg_worker_database), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        try:
            yield pg_url(pg_worker_database, name)
        finally:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def pg_database(pg_server: psycopg.Connection) -> Iterator[str]:
    """A throw-away database of its own (for dumps that name ``public``)."""
    name = _new_name()
    pg_server.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_url(name)
    finally:
        pg_server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- markers, order -------------------------------------------------------------------------

DURATIONS_KEY = "changefeed/durations"
# Seconds each module took in a measured run (4 workers, 2 loaded cores): the order when
# this checkout has not timed its tests yet (a fresh clone, CI).
MODULE_SECONDS = Path(__file__).with_name("durations.json")
# A test no run has timed yet, by folder.
FOLDER_WEIGHT = {"e2e": 10.0, "integration": 1.0, "deploy": 1.0, "unit": 0.05}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sim(**kwargs): SimServer arguments for the `sim` fixture (e.g. enrollments=N)"
    )


def _uses_postgres(item: pytest.Item) -> bool:
    if any(name in PG_FIXTURES for name in getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        value in ("postgres", "postgresql") for value in callspec.params.values()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark PostgreSQL tests; then order the modules slowest
    first (their tests' durations in the last runs, kept in pytest's cache; before any,
    by folder), each module's tests in their own order. xdist's workers then take tests
    one at a time from that queue, so no worker ends on a long test while the others idle,
    and a module's tests run back to back (its module-scoped fixtures set up once per
    worker; a module of WHOLE_MODULES runs on one worker). Every worker sorts its
    collection the same way (one cache file), as xdist requires."""
    for item in items:
        if _uses_postgres(item):
            item.add_marker(pytest.mark.postgres)
    cache = getattr(config, "cache", None)
    known: dict[str, float] = cache.get(DURATIONS_KEY, {}) if cache else {}
    timed = {_module(nodeid) for nodeid in known}  # modules timed on this machine
    measured: dict[str, float] = json.loads(MODULE_SECONDS.read_text())
    module_weight: dict[str, float] = {}
    for item in items:
        module = _module(item.nodeid)
        folder = module.split("/")[1] if module.count("/") >= 2 else ""
        guess = FOLDER_WEIGHT.get(folder, 1.0)
        if module in timed:
            module_weight[module] = module_weight.get(module, 0.0) + known.get(item.nodeid, guess)
        elif module in measured:
            module_weight[module] = measured[module]
        else:
            module_weight[module] = module_weight.get(module, 0.0) + guess
    # stable: each module's tests keep their order
    items.sort(key=lambda item: -module_weight[_module(item.nodeid)])


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


# Modules whose module-scoped fixture is dear (an installed image, a loaded chart): under
# `--dist loadgroup` one worker runs each of them whole. (xdist's own `xdist_group` mark
# does not group under pytest 9.2: it renames items through an attribute pytest no longer
# reads. Its scheduler is used here with these groups, and with "@group" ids should that
# be fixed.)
WHOLE_MODULES = ("test_dockerfile.py", "test_helm.py", "test_helm_monitoring.py")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ModuleGroups(LoadGroupScheduling):
        """loadgroup: a WHOLE_MODULES module is one unit of work; any other test is its
        own; units go out in collection order (slowest first), not by size."""

        def _split_scope(self, nodeid: str) -> str:
            if _module(nodeid).rsplit("/", 1)[-1] in WHOLE_MODULES:
                return _module(nodeid)
            return super()._split_scope(nodeid)

    config.option.loadscopereorder = False
    return ModuleGroups(config, log)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    nodeid = report.nodeid.split("@", 1)[0]  # without an xdist "@group" suffix
    _durations[nodeid] = _durations.get(nodeid, 0.0) + report.duration


_durations: dict[str, float] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember each test's duration (setup + call + teardown) for the next run's order;
    only in the controller (xdist workers report to it) and only for tests that ran."""
    config = session.config
    if hasattr(config, "workerinput") or getattr(config, "cache", None) is None or not _durations:
        return
    known: dict[str, float] = config.cache.get(DURATIONS_KEY, {})
    known.update({k: round(v, 2) for k, v in _durations.items()})
    config.cache.set(DURATIONS_KEY, known)
