"""APScheduler jobs, one per stream: interval + jitter, back-off on failure, graceful stop."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from daemon.errors import (
    ChangefeedError,
    RetriableError,
    ScanInterrupted,
    StreamFatalError,
    StreamHeldElsewhere,
)
from daemon.models import StreamKey
from daemon.ops import metrics
from daemon.runtime import Runtime
from daemon.stream import StreamPass

log = structlog.get_logger("daemon.schedule.scheduler")


@dataclass(slots=True)
class StreamHealth:
    """In-memory health of one stream, for probes and logs."""

    failures: int = 0
    last_error: str | None = None
    running_since: float | None = None
    last_success: float | None = None


class Scheduler:
    """Runs every stream on its own interval in a bounded thread pool."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.passes: dict[StreamKey, StreamPass] = {p.key: p for p in runtime.passes()}
        self.health: dict[StreamKey, StreamHealth] = {key: StreamHealth() for key in self.passes}
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(settings.scheduler.max_workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        self._idle = threading.Condition()
        self._running = 0

    def start(self) -> None:
        """Schedule every stream, first run now."""
        settings = self.runtime.settings
        now = datetime.now().astimezone()
        for key in self.passes:
            interval = settings.poll_interval(key.connector, key.model)
            self._scheduler.add_job(
                self._run,
                IntervalTrigger(
                    seconds=interval, jitter=min(settings.scheduler.jitter_seconds, interval / 2)
                ),
                args=[key],
                id=str(key),
                name=f"poll {key}",
                next_run_time=now,
            )
        self._scheduler.start()
        log.info("scheduler_started", streams=[str(k) for k in self.passes])

    @property
    def alive(self) -> bool:
        """True while the scheduler thread runs."""
        return bool(self._scheduler.running)

    def _run(self, key: StreamKey) -> None:
        health = self.health[key]
        if self.runtime.stop.is_set():
            return
        with self._idle:
            self._running += 1
        health.running_since = time.monotonic()
        bound = log.bind(connector=key.connector, model=key.model)
        try:
            self.passes[key].run()
        except ScanInterrupted as exc:
            bound.info("scan_interrupted", reason=str(exc))
        except StreamHeldElsewhere as exc:
            bound.debug("stream_held_elsewhere", reason=str(exc))
        except StreamFatalError as exc:
            self._failed(key, exc, self.runtime.settings.scheduler.fatal_backoff_seconds)
        except RetriableError as exc:
            self._failed(key, exc, self._retry_delay(key, health.failures + 1))
        except ChangefeedError as exc:
            self._failed(key, exc, self._retry_delay(key, health.failures + 1))
        except Exception as exc:  # a bug in one stream must not stop the rest
            bound.exception("stream_crashed")
            self._failed(key, exc, self._retry_delay(key, health.failures + 1))
        else:
            health.failures = 0
            health.last_error = None
            health.last_success = time.monotonic()
        finally:
            health.running_since = None
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _retry_delay(self, key: StreamKey, failures: int) -> float:
        interval = self.runtime.settings.poll_interval(key.connector, key.model)
        cap = min(interval, self.runtime.settings.scheduler.retry_backoff_max_seconds)
        return min(cap, 2.0 * 2 ** (failures - 1))

    def _failed(self, key: StreamKey, exc: BaseException, delay: float) -> None:
        health = self.health[key]
        health.failures += 1
        health.last_error = f"{type(exc).__name__}: {exc}"
        metrics.STREAM_UP.labels(key.connector, key.model).set(0)
        log.error(
            "scan_failed",
            connector=key.connector,
            model=key.model,
            error=health.last_error,
            failures=health.failures,
            retry_in_s=round(delay, 1),
        )
        try:
            self.runtime.store.record_error(key, health.last_error, time.time())
        except ChangefeedError as store_exc:
            log.error("state_store_unavailable", error=str(store_exc))
        if self.runtime.stop.is_set():
            return
        next_run = datetime.now().astimezone() + timedelta(seconds=delay)
        # The job may be gone when shutdown races with this.
        with contextlib.suppress(Exception):
            self._scheduler.modify_job(str(key), next_run_time=next_run)

    def liveness(self) -> tuple[bool, str]:
        """Alive: the scheduler runs and no scan has been stuck too long."""
        if not self.alive:
            return False, "scheduler is not running"
        bound = self.runtime.settings.scheduler.stuck_scan_seconds
        now = time.monotonic()
        for key, health in self.health.items():
            if health.running_since is not None and now - health.running_since > bound:
                return False, f"{key}: scan running for {now - health.running_since:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready: the state store answers and Kafka metadata is reachable."""
        try:
            self.runtime.store.ping()
            self.runtime.sink.check_ready()
        except ChangefeedError as exc:
            return False, str(exc)
        return True, "ok"

    def shutdown(self, timeout: float) -> bool:
        """Stop scheduling, let running scans reach a page boundary; True if all did in time."""
        self.runtime.stop.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True
