"""The operations endpoint: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``.

The scheduler hands in two callables answering ``(ok, detail)``; this module only
serves them. Each check runs on a helper thread with a timeout, one run at a time,
and its answer is cached briefly, so a slow Kafka metadata call or a burst of
probes never piles up threads or blocks the server.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from daemon.errors import ConfigError

Check = Callable[[], tuple[bool, str]]

# Probe bodies are read by people in `kubectl describe`; a runaway message is noise.
_MAX_DETAIL = 500


class _CachedCheck:
    """Runs ``check`` on a worker thread: single-flight, bounded wait, short-lived cache."""

    def __init__(
        self,
        name: str,
        check: Check,
        *,
        timeout: float,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._check = check
        self._timeout = timeout
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._result: tuple[bool, str] | None = None
        self._result_at = -math.inf
        self._inflight: threading.Event | None = None

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if self._result is not None and self._clock() - self._result_at < self._ttl:
                return self._result
            done = self._inflight
            if done is None:
                # Later callers join this run instead of starting their own, so a
                # hung check costs one thread, not one per probe.
                done = self._inflight = threading.Event()
                threading.Thread(
                    target=self._run, args=(done,), name=f"health-{self._name}", daemon=True
                ).start()
        if not done.wait(self._timeout):
            return False, f"{self._name} check did not answer within {self._timeout:g}s"
        with self._lock:
            assert self._result is not None
            return self._result

    def _run(self, done: threading.Event) -> None:
        try:
            ok, detail = self._check()
            result = (bool(ok), str(detail))
        except Exception as exc:
            result = (False, f"{self._name} check failed: {type(exc).__name__}: {exc}")
        with self._lock:
            self._result = (result[0], result[1][:_MAX_DETAIL])
            self._result_at = self._clock()
            self._inflight = None
        done.set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Fail fast when another process holds the port rather than sharing it.
    allow_reuse_address = False

    def __init__(
        self,
        address: tuple[str, int],
        checks: Mapping[str, _CachedCheck],
        registry: CollectorRegistry,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.checks = checks
        self.registry = registry
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "lms-changefeed"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # An idle keep-alive connection must not hold a thread forever.
    timeout = 60

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._metrics()
        elif path in self.server.checks:
            ok, detail = self.server.checks[path]()
            body = json.dumps({"ok": ok, "detail": detail}).encode()
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, "application/json", body)
        else:
            body = json.dumps({"ok": False, "detail": f"no such path: {path}"}).encode()
            self._send(HTTPStatus.NOT_FOUND, "application/json", body)

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(self.server.registry)
        except Exception as exc:
            # A broken collector must show up as a failed scrape, not a dropped connection.
            detail = f"metrics collection failed: {type(exc).__name__}: {exc}"[:_MAX_DETAIL]
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            self._send(status, "text/plain; charset=utf-8", detail.encode())
            return
        self._send(HTTPStatus.OK, content_type, body)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes and scrapes arrive every few seconds; an access log would drown the real logs.
        return


class HealthServer:
    """Serves /healthz, /readyz and /metrics on a background thread.

    ``liveness`` and ``readiness`` return ``(ok, detail)``; an exception or a
    check slower than ``check_timeout`` counts as not ok. The readiness answer is
    cached for ``readiness_ttl`` seconds because it may cost a Kafka round trip.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        liveness: Check,
        readiness: Check,
        registry: CollectorRegistry = REGISTRY,
        check_timeout: float = 6.0,
        readiness_ttl: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._checks = {
            "/healthz": _CachedCheck("liveness", liveness, timeout=check_timeout, ttl=0.0),
            "/readyz": _CachedCheck(
                "readiness", readiness, timeout=check_timeout, ttl=readiness_ttl
            ),
        }
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (port 0 picks a free port, then ``port`` holds it) and serve in a daemon thread.

        Raises ConfigError naming ``http.port`` when the address cannot be bound.
        """
        if self._server is not None:
            return
        try:
            server = _Server((self.host, self.port), self._checks, self._registry)
        except OSError as exc:
            raise ConfigError(
                "http.port", f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            # Short so stop() returns promptly; an idle wake-up costs next to nothing.
            kwargs={"poll_interval": 0.1},
            name="health-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
