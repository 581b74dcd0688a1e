"""structlog set-up, done once at start-up: JSON lines in containers, console on a TTY."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Keys whose values must never reach a log line, whatever a caller binds.
_SECRET_KEYS = frozenset({"api_key", "token", "authorization", "x-connector-token", "password"})


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event.keys() & _SECRET_KEYS:
        event[key] = "**********"
    return event


_replica: str | None = None
# One lock for both writers of the stream: structlog's lines and the stdlib handler's
# (kafka, apscheduler). With a lock each, a library line could land between a message
# and its newline, and two JSON objects shared a line.
_WRITE_LOCK = threading.RLock()


class _LineLogger:
    """A structlog logger writing each line whole, in one write, under ``_WRITE_LOCK``."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def msg(self, message: str) -> None:
        with _WRITE_LOCK:
            self._out.write(message + "\n")
            self._out.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stdlib handler, sharing the structlog writer's lock."""

    def createLock(self) -> None:
        self.lock = _WRITE_LOCK


def set_replica(name: str | None) -> None:
    """Name this process in every log line (``replica``): one of a fleet's replicas."""
    global _replica
    _replica = name


def _add_replica(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _replica is not None:
        event.setdefault("replica", _replica)
    return event


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger (kafka, httpx, apscheduler)."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_replica,
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: _LineLogger(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging: render their lines the same way (one JSON
    # object per line in containers), and keep them quiet unless they warn.
    handler = _LineHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(LibraryChatter())
    logging.basicConfig(handlers=[handler], level=max(numeric, logging.WARNING), force=True)
    for noisy in ("kafka", "httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    # "Job ... skipped: maximum number of running instances reached": the claim loop still
    # running when its next tick comes is normal under load, not news (errors still show).
    logging.getLogger("apscheduler.scheduler").setLevel(max(numeric, logging.ERROR))


class LibraryChatter(logging.Filter):
    """Kafka client lines at most WARNING, one per subsystem per ``window`` seconds.

    kafka-python logs each failed connection attempt at ERROR, several times a second
    while a broker is down (about 12 lines per stream and pass). The daemon reports the
    failure itself (a SinkError naming the broker), so the library's lines are context:
    WARNING, and the first of a burst only, with the count of those held back.
    """

    def __init__(self, window: float = 60.0, prefixes: tuple[str, ...] = ("kafka",)) -> None:
        super().__init__()
        self.window = window
        self.prefixes = prefixes
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        # kafka.net.manager and kafka.net.connection report the same refused connection.
        key = ".".join(record.name.split(".")[:2])
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.window:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} similar {key} line(s) held back)"
            record.args = None
        return True
