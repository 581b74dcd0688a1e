"""Small helpers shared by test modules (test modules never import one another)."""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.harness import base_config

# Recognisable secrets for the ``sim_secret`` fixture, to hunt for leaks in texts and logs.
SECRET_API_KEY = "sim-api-key-s3cr3t"
SECRET_TOKEN = "tok_acme_s3cr3t"


def feed_config(sim, broker, tmp_path: Path, connectors=("acme",), **model) -> dict:
    """An in-process config on the simulator and ``broker``: fast retries, no HTTP server
    (``harness.base_config(..., in_process=True)``)."""
    return base_config(sim, broker.bootstrap, tmp_path, tuple(connectors), in_process=True, **model)


_RELATIONS = itertools.cycle([(True, True), (False, False), (True, False), (False, True)])


def new_enrollment(sim, connector: str = "acme") -> dict:
    """The body of a new enrollment. Successive calls go round what the API serves: user and
    course ids, both null, or one of each (it types them as any; events carry nulls)."""
    with_user, with_course = next(_RELATIONS)
    return {
        "user": sim.ids(connector, "users")[0] if with_user else None,
        "course": sim.ids(connector, "courses")[0] if with_course else None,
    }


# Series names of each metric type, from its family name (prometheus_client's naming).
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "info": ("_info",),
    "gauge": ("",),
}


def defined_metric_names() -> set[str]:
    """Every changefeed_* series name the daemon can export: the families registered by
    daemon/ops/metrics.py (also those without samples yet), expanded by type."""
    from prometheus_client import REGISTRY

    import daemon.ops.metrics  # noqa: F401  (registers the families)

    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("changefeed_"):
            names.update(f"{family.name}{s}" for s in _SUFFIXES.get(family.type, ("",)))
    return names
