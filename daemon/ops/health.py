"""The operations endpoint: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``.

Served by uvicorn on its own thread (``_server.ServerThread``) as a small ASGI app;
``/metrics`` is prometheus_client's own ASGI app, which also speaks OpenMetrics
and gzip when the scraper asks.

The scheduler hands in two callables answering ``(ok, detail)``; this module only
serves them. Each check runs on a helper thread with a timeout, one run at a time,
and its answer is cached briefly, so a slow Kafka metadata call or a burst of
probes never piles up threads or blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app

from daemon.ops._server import ServerThread

Check = Callable[[], tuple[bool, str]]

# Probe bodies are read by people in `kubectl describe`; a runaway message is noise.
_MAX_DETAIL = 500
# Probes and scrapers send a request head at once; an idle one is let go after this.
_HEAD_TIMEOUT = 60.0


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
        self._inflight: Future[tuple[bool, str]] | None = None

    async def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if self._result is not None and self._clock() - self._result_at < self._ttl:
                return self._result
            run = self._inflight
            if run is None:
                # Later callers join this run instead of starting their own, so a
                # hung check costs one thread, not one per probe.
                run = self._inflight = Future()
                threading.Thread(
                    target=self._run, args=(run,), name=f"health-{self._name}", daemon=True
                ).start()
        # asyncio.wait leaves the run alone on timeout (wait_for would cancel it for
        # every later caller too).
        done, _ = await asyncio.wait({asyncio.wrap_future(run)}, timeout=self._timeout)
        if not done:
            return False, f"{self._name} check did not answer within {self._timeout:g}s"
        return done.pop().result()

    def _run(self, run: Future[tuple[bool, str]]) -> None:
        try:
            ok, detail = self._check()
            result = (bool(ok), str(detail)[:_MAX_DETAIL])
        except Exception as exc:
            result = (
                False,
                f"{self._name} check failed: {type(exc).__name__}: {exc}"[:_MAX_DETAIL],
            )
        with self._lock:
            self._result = result
            self._result_at = self._clock()
            self._inflight = None
        if run.set_running_or_notify_cancel():
            run.set_result(result)


Send = Callable[[dict[str, Any]], Any]


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, ok: bool, detail: str) -> None:
    body = json.dumps({"ok": ok, "detail": detail}).encode()
    await _send(send, status, body, b"application/json")


class _App:
    """The ASGI app: two probes and the metrics; everything else is 404 or 405."""

    def __init__(self, checks: dict[str, _CachedCheck], registry: CollectorRegistry) -> None:
        self._checks = checks
        self._metrics = make_asgi_app(registry)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        path = scope["path"]
        if path != "/metrics" and path not in self._checks:
            await _send_json(send, 404, False, f"no such path: {path}")
        elif scope["method"] not in ("GET", "HEAD"):
            await _send_json(send, 405, False, "method not allowed")
        elif path == "/metrics":
            await self._scrape(scope, receive, send)
        else:
            ok, detail = await self._checks[path]()
            await _send_json(send, 200 if ok else 503, ok, detail)

    async def _scrape(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        started = False

        async def tracking(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._metrics(scope, receive, tracking)
        except Exception as exc:
            if started:
                raise
            # A broken collector must show up as a failed scrape, not a dropped connection.
            detail = f"metrics collection failed: {type(exc).__name__}: {exc}"[:_MAX_DETAIL]
            await _send(send, 500, detail.encode(), b"text/plain; charset=utf-8")


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
        checks = {
            "/healthz": _CachedCheck("liveness", liveness, timeout=check_timeout, ttl=0.0),
            "/readyz": _CachedCheck(
                "readiness", readiness, timeout=check_timeout, ttl=readiness_ttl
            ),
        }
        self._server = ServerThread(
            _App(checks, registry),
            host,
            port,
            name="health",
            field="http.port",
            head_timeout=_HEAD_TIMEOUT,
            # Fail fast when another process holds the port rather than sharing it.
            reuse_address=False,
            grace=1.0,
        )

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        """The bound port once started (port 0 picks a free one)."""
        return self._server.port

    def start(self) -> None:
        """Bind and serve in a background thread; returns once requests are answered.

        Raises ConfigError naming ``http.port`` when the address cannot be bound.
        """
        self._server.start()

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        self._server.stop()

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
