"""``dev``: a whole local stack — tansu broker, Bindbee simulator, the daemon, a mutator, a tail."""

from __future__ import annotations

import random
import signal
import tempfile
import threading
from pathlib import Path

import structlog

from daemon import log as logsetup
from daemon.settings import load_settings

DEV_CONNECTORS = {"acme": "tok_acme", "globex": "tok_globex"}


def _mutate(sim: object, stop: threading.Event, every: float, seed: int = 1) -> None:
    """Create, update and delete a few enrollments every ``every`` seconds."""
    rng = random.Random(seed)
    log = structlog.get_logger("daemon.dev")
    while not stop.wait(every):
        connector = rng.choice(list(DEV_CONNECTORS))
        ids = sim.ids(connector, "enrollments")  # type: ignore[attr-defined]
        action = rng.choice(("create", "update", "update", "delete"))
        if action == "create" and ids:
            template = sim.get(connector, "enrollments", rng.choice(ids))  # type: ignore[attr-defined]
            fields = {k: v for k, v in template.items() if k not in ("id", "modified_at")}
            fields["remote_id"] = f"dev-{rng.randrange(10**9)}"
            record = sim.create(connector, "enrollments", fields)  # type: ignore[attr-defined]
        elif action == "update" and ids:
            day = rng.randrange(1, 28)
            record = sim.update(  # type: ignore[attr-defined]
                connector,
                "enrollments",
                rng.choice(ids),
                {"start_date": f"2026-01-{day:02d}T09:00:00Z"},
            )
        elif ids:
            victim = rng.choice(ids)
            sim.delete(connector, "enrollments", victim)  # type: ignore[attr-defined]
            record = {"id": victim}
        else:
            continue
        log.info("dev_mutation", connector=connector, action=action, id=record["id"])


def run_dev(config_path: Path) -> int:
    """Run the dev stack until Ctrl-C; returns the exit code."""
    from bindbee_sim import SimServer
    from daemon.dev.tail import tail
    from daemon.dev.tansu import TansuBroker
    from daemon.runtime import Runtime
    from daemon.schedule.scheduler import Scheduler

    workdir = Path(tempfile.mkdtemp(prefix="lms-changefeed-dev-"))
    with (
        TansuBroker(log_path=workdir / "tansu.log") as broker,
        SimServer(
            connectors=DEV_CONNECTORS,
            enrollments=200,
            seed=1,
            honor_modified_after=True,
            rate_limit=200,
        ) as sim,
    ):
        settings = load_settings(
            config_path,
            bindbee={"base_url": sim.base_url, "api_key": sim.api_key},
            kafka={"bootstrap_servers": broker.bootstrap},
            state={"path": str(workdir / "changefeed.db")},
        )
        logsetup.configure(settings.log.level, settings.log.format)
        log = structlog.get_logger("daemon.dev")
        log.info(
            "dev_stack_up",
            simulator=sim.base_url,
            kafka=broker.bootstrap,
            state=str(settings.state.path),
            hint="Ctrl-C to stop",
        )
        runtime = Runtime.open(settings)
        # Ctrl-C sets the stop event rather than raising KeyboardInterrupt wherever the main
        # thread happens to be (inside the Kafka client, a KeyboardInterrupt can be lost).
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: runtime.stop.set())
        scheduler = Scheduler(runtime)
        scheduler.start()
        mutator = threading.Thread(target=_mutate, args=(sim, runtime.stop, 3.0), daemon=True)
        mutator.start()
        try:
            topic = settings.kafka.topic_for("acme", "enrollments")
            runtime.sink.ensure_topics([topic])
            tail(broker.bootstrap, topic, from_beginning=True, stop=runtime.stop)
        finally:
            scheduler.shutdown(settings.scheduler.shutdown_timeout_seconds)
            runtime.close()
    return 0
