"""Webhook deliveries: Bindbee's envelope, its signature, and its retry policy.

Events are queued by the sync cycle (under the state lock, without blocking)
and POSTed by one background thread, in order. An attempt fails on a network
error, a timeout or a non-2xx answer; failed attempts are retried after 1, 2,
4, 8... units (a unit is chosen so the delays of ``retries`` retries add up to
half the window), while the next retry would still start within
``retry_window_seconds`` of the first attempt. Then the event is given up:
Bindbee has no replay. Every attempt lands in the delivery log.

For tests of what a receiver does when deliveries go wrong, two controls
Bindbee does not have:

- ``drop``: the next N events matching (event name, connector) are never sent;
  each is logged once with outcome ``dropped`` (attempt 0, no status);
- ``replay``: a logged delivery (sent or dropped) is sent again K times, the
  exact same body and so the same signature, each time as a new delivery
  (logged with ``replay_of`` = the original's ``delivery_id``) under the same
  retry policy. Replaying a dropped delivery delivers it late.

The bodies of the last ``_BODIES_KEPT`` deliveries are kept for replays.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import queue
import threading
import time
from collections import OrderedDict
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
_BODIES_KEPT = 2_000  # deliveries whose body is kept for replays
_REPLAY_LIMIT = 1_000  # copies one replay request may send


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
    sync_id: str | None = None
    replay_of: int | None = None
    dropped: bool = False


@dataclass
class DropRule:
    """Lose the next ``remaining`` deliveries of ``event`` for ``connector`` (None: any)."""

    event: str | None
    connector: str | None
    remaining: int

    def matches(self, event: str, connector: str) -> bool:
        """Whether a delivery of ``event`` for ``connector`` is one to lose."""
        return (
            self.remaining > 0
            and self.event in (None, event)
            and self.connector in (None, connector)
        )

    def as_dict(self) -> dict[str, Any]:
        """The rule as ``GET /_sim/webhooks/drop`` shows it."""
        return {"event": self.event, "connector": self.connector, "count": self.remaining}


class WebhookSender:
    """Queues events and delivers them from a daemon thread, started on first use."""

    def __init__(self, policy: WebhookPolicy, now_us: Callable[[], int]) -> None:
        self.policy = policy
        self._now_us = now_us
        self._queue: queue.Queue[_Delivery | None] = queue.Queue()
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._bodies: OrderedDict[int, _Delivery] = OrderedDict()
        self._drops: list[DropRule] = []
        self._next_id = 1
        self._generation = 0
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, envelope: dict[str, Any], connector: str) -> int:
        """Queue one event (the envelope's ``webhook.event`` names it); never blocks.

        Returns its ``delivery_id``. An armed drop rule that matches loses it instead
        (logged as ``dropped``, kept for a replay).
        """
        body = orjson.dumps(envelope)
        event = envelope["webhook"]["event"]
        sync_id = (envelope.get("sync") or {}).get("sync_id")
        with self._lock:
            delivery = _Delivery(self._next_id, event, connector, body, self._generation, sync_id)
            self._next_id += 1
            self._keep(delivery)
            rule = next((r for r in self._drops if r.matches(event, connector)), None)
            if rule is not None:
                # Chosen now, logged in its turn: the log keeps the order of events.
                rule.remaining -= 1
                self._drops = [r for r in self._drops if r.remaining > 0]
                delivery = dataclasses.replace(delivery, dropped=True)
            self._start_thread()
        self._queue.put(delivery)
        return delivery.delivery_id

    def drop(self, count: int, event: str | None = None, connector: str | None = None) -> None:
        """Lose the next ``count`` deliveries of ``event`` for ``connector`` (None: any).

        Rules are checked in the order they were armed; a delivery consumes one count
        of the first rule it matches.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        with self._lock:
            self._drops.append(DropRule(event, connector, count))

    def drops(self) -> list[dict[str, Any]]:
        """Drop rules still armed, with their remaining counts."""
        with self._lock:
            return [rule.as_dict() for rule in self._drops]

    def clear_drops(self) -> None:
        """Disarm every drop rule."""
        with self._lock:
            self._drops.clear()

    def replay(
        self, times: int = 1, *, index: int | None = None, delivery_id: int | None = None
    ) -> list[int]:
        """Send a logged delivery again ``times`` times, byte for byte; the new ids.

        ``index`` is a position in the delivery log (``log()``; negative counts from
        its end), ``delivery_id`` names the delivery itself; give exactly one. Raises
        ``LookupError`` when it is unknown or its body is no longer kept,
        ``ValueError`` for bad arguments.
        """
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= _REPLAY_LIMIT:
            raise ValueError(f"times must be an integer from 1 to {_REPLAY_LIMIT}")
        if (index is None) == (delivery_id is None):
            raise ValueError("give exactly one of index and delivery_id")
        with self._lock:
            if index is not None:
                try:
                    delivery_id = self._log[index]["delivery_id"]
                except IndexError:
                    raise LookupError(
                        f"no delivery at index {index} (the log has {len(self._log)})"
                    ) from None
            original = self._bodies.get(delivery_id)  # type: ignore[arg-type]
            if original is None:
                raise LookupError(f"no kept delivery with delivery_id {delivery_id}")
            copies = []
            for _ in range(times):
                copy = _Delivery(
                    self._next_id,
                    original.event,
                    original.connector,
                    original.body,
                    self._generation,
                    original.sync_id,
                    original.delivery_id,
                )
                self._next_id += 1
                self._keep(copy)
                copies.append(copy)
            self._start_thread()
        for copy in copies:
            self._queue.put(copy)
        return [copy.delivery_id for copy in copies]

    def log(self) -> list[dict[str, Any]]:
        """Every attempt so far, oldest first."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def reset(self) -> None:
        """Drop queued and retrying deliveries; clear the log, kept bodies and drop rules."""
        with self._lock:
            self._generation += 1
            self._log.clear()
            self._bodies.clear()
            self._drops.clear()

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

    def _start_thread(self) -> None:
        # Callers hold the lock.
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="bindbee-sim-webhooks", daemon=True
            )
            self._thread.start()

    def _keep(self, delivery: _Delivery) -> None:
        # Callers hold the lock.
        self._bodies[delivery.delivery_id] = delivery
        while len(self._bodies) > _BODIES_KEPT:
            self._bodies.popitem(last=False)

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
                if not self._current(delivery):
                    continue
                if delivery.dropped:
                    self._record(delivery, 0, None, None, "dropped")
                else:
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
            self._append(delivery, attempt, status, error, outcome)
            return True

    def _append(
        self, delivery: _Delivery, attempt: int, status: int | None, error: str | None, outcome: str
    ) -> None:
        # Callers hold the lock.
        if len(self._log) >= _LOG_LIMIT:
            del self._log[: _LOG_LIMIT // 10]
        self._log.append(
            {
                "delivery_id": delivery.delivery_id,
                "event": delivery.event,
                "connector": delivery.connector,
                "sync_id": delivery.sync_id,
                "replay_of": delivery.replay_of,
                "attempt": attempt,
                "status": status,
                "error": error,
                "outcome": outcome,
                "time": format_us(self._now_us()),
            }
        )
