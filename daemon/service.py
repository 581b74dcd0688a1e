"""The long-lived process behind ``lms-changefeed run``: start-up and shutdown in one place.

Opens the runtime (store, client, sink), the ops server (/healthz /readyz /metrics), the
webhook receiver on its own listener, the sync watcher and the scheduler; stops them in
reverse order on SIGTERM/SIGINT within ``scheduler.shutdown_timeout_seconds`` (below
Kubernetes' grace period), and re-reads the configuration on SIGHUP. A clean stop exits
0 after SIGTERM and 130 after SIGINT (Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog

from daemon.errors import ChangefeedError, ConfigError
from daemon.settings import Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


class StopOnSignal:
    """First SIGTERM/SIGINT asks for a graceful stop; a second one exits at once."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: str | None = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            os._exit(128 + signum)
        self.received = signal.Signals(signum).name
        self.stop.set()


class Reloader:
    """SIGHUP: re-read the configuration; an invalid one is refused and the old one kept."""

    def __init__(self, config_path: Path | str | None) -> None:
        self._path = config_path
        self._apply: Callable[[Settings], None] | None = None
        self._wake = threading.Event()
        self._stopped = False
        # Installed first thing: SIGHUP's default action ends the process, and a HUP during
        # start-up (config management after a deploy) must wait for the reload, not kill.
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self._wake.set())

    def start(self, apply: Callable[[Settings], None]) -> None:
        """Apply reloads from now on (one that arrived during start-up goes first)."""
        self._apply = apply
        threading.Thread(target=self._loop, name="config-reload", daemon=True).start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _loop(self) -> None:
        log = structlog.get_logger("daemon")
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            # Read off the signal handler's thread: loading touches files and logging.
            try:
                settings = load_settings(self._path)
            except ConfigError as exc:
                log.error("config_reload_refused", field=exc.field, error=exc.message)
                continue
            assert self._apply is not None
            try:
                self._apply(settings)
            except ChangefeedError as exc:
                log.error("config_reload_failed", error=str(exc))


def run_daemon(settings: Settings, *, config_path: Path | str | None = None) -> int:
    """Run every stream on its triggers until signalled; the process's exit code."""
    from daemon.ops.health import HealthServer
    from daemon.ops.webhook import WebhookReceiver
    from daemon.runtime import Runtime
    from daemon.schedule.scheduler import Scheduler

    log = structlog.get_logger("daemon")
    stop = threading.Event()
    signals = StopOnSignal(stop)
    reloader = Reloader(config_path)
    runtime = Runtime.open(settings, stop)
    scheduler = Scheduler(runtime)
    health = webhook = None
    try:
        if settings.http.enabled:
            health = HealthServer(
                settings.http.host,
                settings.http.port,
                liveness=scheduler.liveness,
                readiness=scheduler.readiness,
            )
            health.start()
            log.info("http_listening", host=settings.http.host, port=health.port)
        hooks = settings.webhook
        if hooks.enabled:
            assert hooks.secret is not None  # settings refuse enabled without a secret

            def on_hint(connector_id: str, event: str) -> None:
                # Only a hint: the watcher re-reads the connectors list and decides.
                if scheduler.watcher is not None:
                    scheduler.watcher.poke()

            webhook = WebhookReceiver(
                hooks.host,
                hooks.port,
                secret=hooks.secret,
                on_hint=on_hint,
                path=hooks.path,
                encodings=hooks.signature_encodings,
                max_body_bytes=hooks.max_body_bytes,
                hint_interval_seconds=hooks.hint_interval_seconds,
                read_timeout_seconds=hooks.read_timeout_seconds,
                on_ids=scheduler.hints.receive,
                on_too_large=scheduler.hints.too_large,
                max_hint_ids=hooks.max_hint_ids,
            )
            webhook.start()
            log.info("webhook_listening", host=hooks.host, port=webhook.port, path=hooks.path)
    except BaseException:
        for server in (webhook, health):
            if server is not None:
                server.stop()
        runtime.close()
        raise
    scheduler.start()
    reloader.start(scheduler.reload)
    runtime.stop.wait()
    log.info(
        "shutting_down",
        signal=signals.received,
        timeout_s=settings.scheduler.shutdown_timeout_seconds,
    )
    reloader.stop()
    if webhook is not None:
        webhook.stop()
    clean = scheduler.shutdown(settings.scheduler.shutdown_timeout_seconds)
    if health is not None:
        health.stop()
    if not clean:
        # A page is still in flight (a slow request or send). Its rows are not committed,
        # so the next start sends it again; waiting longer would only earn a SIGKILL.
        log.error("stopped", clean=False, reason="a scan did not reach a page boundary in time")
        sys.stderr.flush()
        os._exit(EXIT_FAILED)
    runtime.close()
    log.info("stopped", clean=True)
    # SIGTERM is how a service is stopped (Kubernetes, systemd): 0. Ctrl-C interrupts: 130.
    return EXIT_INTERRUPTED if signals.received == "SIGINT" else EXIT_OK
