"""Small helpers shared by test modules (test modules never import one another)."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

# Recognisable secrets for the ``sim_secret`` fixture, to hunt for leaks in texts and logs.
SECRET_API_KEY = "sim-api-key-s3cr3t"
SECRET_TOKEN = "tok_acme_s3cr3t"


def feed_config(sim, broker, tmp_path: Path, connectors=("acme",), **model) -> dict:
    """An in-process config on the simulator and ``broker``: fast retries, no HTTP server."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return {
        "bindbee": {
            "base_url": sim.base_url,
            "api_key": sim.api_key,
            "page_size": 100,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.1,
            "rate_limit": {"requests": 100_000, "per_seconds": 60},
        },
        "connectors": [{"name": name, "token": sim.tokens[name]} for name in connectors],
        "models": {
            "enrollments": {
                # timer polling is what these tests are about
                "trigger": "interval",
                "poll_interval_seconds": 1,
                "lookback_seconds": 0,
                **model,
            }
        },
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "partitions": 2,
            "topic_template": prefix + ".{model}",
            "control_topic": prefix + ".control",
        },
        "state": {"path": str(tmp_path / "state.db")},
        "http": {"enabled": False},
    }


_RELATIONS = itertools.cycle([(True, True), (False, False), (True, False), (False, True)])


def new_enrollment(sim, connector: str = "acme") -> dict:
    """The body of a new enrollment. Successive calls go round what the API serves: user and
    course ids, both null, or one of each (it types them as any; events carry nulls)."""
    with_user, with_course = next(_RELATIONS)
    return {
        "user": sim.ids(connector, "users")[0] if with_user else None,
        "course": sim.ids(connector, "courses")[0] if with_course else None,
    }
