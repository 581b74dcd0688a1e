"""Webhook deliveries: Bindbee's envelope, its signature, and its retry policy.

Events are queued by the sync cycle (under the state lock, without blocking)
and POSTed by one background thread, in order. An attempt fails on a network
error, a timeout or a non-2xx answer; failed attempts are retried after 1, 2,
4, 8... units (a unit is chosen so the delays of ``retries`` retries add up to
half the window), while the next retry would still start within
``retry_window_seconds`` of the first attempt. Then the event is given up:
Bindbee has no replay. Every attempt lands in the delivery log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson

from bindbee_sim.times import format_us

SIGNATURE_HEADER = "X-Bindbee-Webhook-Signature"
Encoding = Literal["base64url", "hex"]
ENCODINGS: tuple[str, ...] = ("base64url", "hex")
_LOG_LIMIT = 10_000  # attempts kept in the delivery log


def sign(secret: str, body: bytes, encoding: str = "base64url") -> str:
    """HMAC-SHA256 of ``body`` keyed with ``secret``: base64url (padded) or hex."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if encoding == "hex":
        return digest.hex()
    if encoding == "base64url":
        return base64.urlsafe_b64encode(digest).decode()
    raise ValueError(f"webhook signature encoding must be one of {list(ENCODINGS)}")


@dataclass(frozen=True)
class WebhookPolicy:
    """Where and how events are delivered; Bindbee's documented policy by default."""

    url: str
    secret: str
    encoding: str = "base64url"
    timeout_seconds: float = 10.0
    retry_window_seconds: float = 60.0
    retries: int = 4

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("webhook URL must start with http:// or https://")
        if not self.secret:
            raise ValueError("a webhook URL needs a webhook secret")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"webhook signature encoding must be one of {list(ENCODINGS)}")
        if self.timeout_seconds <= 0 or self.retry_window_seconds < 0 or self.retries < 0:
            raise ValueError("webhook timeout must be positive, window and retries >= 0")

    def retry_delays(self) -> list[float]:
        """Seconds to wait before each retry."""
        if self.retries == 0:
            return []
        unit = self.retry_window_seconds / (2 * (2**self.retries - 1))
        return [unit * 2**k for k in range(self.retries)]


@dataclass(frozen=True)
class _Delivery:
    delivery_id: int
    event: str
    connector: str
    body: bytes
    generation: int


class WebhookSender:
    """Queues events and delivers them from a daemon thread, started on first use."""

    def __init__(self, policy: WebhookPolicy, now_us: Callable[[], int]) -> None:
        self.policy = policy
        self._now_us = now_us
        self._queue: queue.Queue[_Delivery | None] = queue.Queue()
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._next_id = 1
        self._generation = 0
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, envelope: dict[str, Any], connector: str) -> None:
        """Queue one event (the envelope's ``webhook.event`` names it); never blocks."""
        body = orjson.dumps(envelope)
        with self._lock:
            delivery = _Delivery(
                self._next_id, envelope["webhook"]["event"], connector, body, self._generation
            )
            self._next_id += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="bindbee-sim-webhooks", daemon=True
                )
                self._thread.start()
        self._queue.put(delivery)

    def log(self) -> list[dict[str, Any]]:
        """Every attempt so far, oldest first."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def reset(self) -> None:
        """Drop queued and retrying deliveries and clear the log."""
        with self._lock:
            self._generation += 1
            self._log.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Stop delivering (an attempt in flight may finish) and join the thread.

        Queued deliveries are dropped; a later ``send`` starts a new thread.
        """
        with self._lock:
            thread, self._thread = self._thread, None
            self._generation += 1
        if thread is None:
            return
        self._closed.set()
        self._queue.put(None)
        thread.join(timeout)
        self._queue = queue.Queue()
        self._closed.clear()

    # ---- the delivery thread ----------------------------------------------------

    def _current(self, delivery: _Delivery) -> bool:
        with self._lock:
            return delivery.generation == self._generation and not self._closed.is_set()

    def _run(self) -> None:
        with httpx.Client(timeout=self.policy.timeout_seconds) as client:
            while True:
                delivery = self._queue.get()
                if delivery is None or self._closed.is_set():
                    return
                if self._current(delivery):
                    self._deliver(client, delivery)

    def _deliver(self, client: httpx.Client, delivery: _Delivery) -> None:
        policy = self.policy
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "bindbee-sim-webhooks",
            SIGNATURE_HEADER: sign(policy.secret, delivery.body, policy.encoding),
        }
        first = time.monotonic()
        delays = policy.retry_delays()
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            error: str | None = None
            try:
                response = client.post(policy.url, content=delivery.body, headers=headers)
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            retry = attempt - 1 < len(delays) and (
                time.monotonic() - first + delays[attempt - 1] <= policy.retry_window_seconds
            )
            outcome = "delivered" if error is None else "retrying" if retry else "given_up"
            if not self._record(delivery, attempt, status, error, outcome):
                return
            if outcome != "retrying":
                return
            if self._closed.wait(delays[attempt - 1]) or not self._current(delivery):
                return

    def _record(
        self, delivery: _Delivery, attempt: int, status: int | None, error: str | None, outcome: str
    ) -> bool:
        """Log one attempt; False when the delivery was dropped by a reset meanwhile."""
        with self._lock:
            if delivery.generation != self._generation:
                return False
            if len(self._log) >= _LOG_LIMIT:
                del self._log[: _LOG_LIMIT // 10]
            self._log.append(
                {
                    "delivery_id": delivery.delivery_id,
                    "event": delivery.event,
                    "connector": delivery.connector,
                    "attempt": attempt,
                    "status": status,
                    "error": error,
                    "outcome": outcome,
                    "time": format_us(self._now_us()),
                }
            )
            return True
