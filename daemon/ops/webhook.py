"""The Bindbee webhook receiver: signed deliveries become *hints*.

A delivery never carries data the daemon trusts. ``connector_synced`` only makes the
watcher read that connector's status from the API now (coalesced per connector, one per
``hint_interval_seconds``). ``connector_data_modified`` names the ids a sync touched:
they are handed to ``on_ids`` (which writes them to the state store) before the delivery
is answered 200, since Bindbee never redelivers; it is never coalesced, as coalescing
would drop ids. The records themselves are then read from the API by id, so a forged or
replayed delivery costs at most one read per id (a replay has the same dedupe key).

An id that is not a safe URL path segment, or a list longer than ``max_hint_ids``, is
not read id by id: the hint asks for a walk of the sync instead (nothing is truncated).
A body over the limit (413) cannot be verified and so names no connector: ``on_too_large``
makes every connector walk its next sync, which a forger can only make as costly as
``full_scan_every_syncs: 1``. As that path is unauthenticated, ``on_too_large`` runs at
most once per ``hint_interval_seconds`` (its effect is idempotent: a later 413 in the same
interval would only ask again for the walk already asked for).

Order of checks, cheapest and safest first: path (404) and method (405); size
from Content-Length before reading (413; any body is counted as it arrives); the
read deadline (408); the HMAC-SHA256 signature of the raw body (401) before
anything is parsed; then the envelope (400). Accepted and ignored events answer 200;
a hint event that arrives once ``stop()`` has begun answers 503 (Bindbee retries it).
HTTP itself is uvicorn's (h11) on a thread of its own (``_server``, ``_webhook_app``):
an idle connection holds no thread, so hundreds of them do not delay a delivery.

It listens on its own port, apart from the ops server: the webhook port may face the
internet (through an ingress), /metrics should not. Nothing here logs the secret or
the signature header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Collection
from http import HTTPStatus
from typing import Literal

import orjson
import structlog
from pydantic import SecretStr

from daemon.ops import metrics
from daemon.ops._ids import MAX_HINT_IDS, SAFE_ID, IdsHint, parse_ids_hint, safe_id
from daemon.ops._server import MAX_CONNECTIONS, ServerThread
from daemon.ops._throttle import Clock, _HintLimiter, _LogThrottle
from daemon.ops._webhook_app import WebhookApp

log = structlog.get_logger("daemon.ops.webhook")

Encoding = Literal["base64url", "base64", "hex"]
ENCODINGS: tuple[Encoding, ...] = ("base64url", "base64", "hex")
SIGNATURE_HEADER = "X-Bindbee-Webhook-Signature"
DEFAULT_PATH = "/webhooks/bindbee"
MAX_BODY_BYTES = 1 << 20
IDS_EVENT = "connector_data_modified"
HINT_EVENTS = frozenset({"connector_synced", IDS_EVENT})
# Long enough for any real id; keeps a hostile-but-signed body out of log lines.
_MAX_FIELD = 200

Hint = Callable[[str, str], None]
__all__ = [
    "ENCODINGS",
    "HINT_EVENTS",
    "IDS_EVENT",
    "MAX_HINT_IDS",
    "SAFE_ID",
    "IdsHint",
    "WebhookReceiver",
    "parse_envelope",
    "parse_ids_hint",
    "safe_id",
    "sign",
    "verify_signature",
]


# -- signatures ------------------------------------------------------------------


def sign(secret: SecretStr | bytes, body: bytes, encoding: Encoding = "base64url") -> str:
    """The signature header value Bindbee would send for ``body`` (for tests and the sim)."""
    key = secret.get_secret_value().encode() if isinstance(secret, SecretStr) else secret
    digest = hmac.new(key, body, hashlib.sha256).digest()
    if encoding == "hex":
        return digest.hex()
    if encoding == "base64":
        return base64.b64encode(digest).decode()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def verify_signature(
    key: bytes, body: bytes, header: str | None, encodings: Collection[Encoding] = ENCODINGS
) -> bool:
    """True if ``header`` is HMAC-SHA256(key, body) in one of ``encodings``.

    base64 and base64url match with or without padding, hex in either case, and an
    optional ``sha256=`` prefix is allowed. Every candidate is compared with
    ``hmac.compare_digest`` (no early exit), so timing says nothing about the key.
    """
    if not header:
        return False
    value = header.strip()
    if value[:7].lower() == "sha256=":
        value = value[7:]
    digest = hmac.new(key, body, hashlib.sha256).digest()
    given = value.encode("utf-8", "replace")
    given_lower = value.lower().encode("utf-8", "replace")
    matched = False
    if "hex" in encodings:
        matched |= hmac.compare_digest(digest.hex().encode(), given_lower)
    for name, encode in (
        ("base64url", base64.urlsafe_b64encode),
        ("base64", base64.b64encode),
    ):
        if name in encodings:
            padded = encode(digest)
            matched |= hmac.compare_digest(padded, given)
            matched |= hmac.compare_digest(padded.rstrip(b"="), given)
    return matched


def parse_envelope(body: bytes) -> tuple[str, str]:
    """``(event, connector_id)`` of a delivery; ValueError if it is not the envelope."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("body is not a JSON object")
    webhook = data.get("webhook")
    connector = data.get("connector")
    if not isinstance(webhook, dict) or not isinstance(connector, dict):
        raise ValueError("body lacks the webhook or connector object")
    event = webhook.get("event")
    connector_id = connector.get("id")
    if not isinstance(event, str) or not event or len(event) > _MAX_FIELD:
        raise ValueError("webhook.event is missing or not a short string")
    if not isinstance(connector_id, str) or not connector_id or len(connector_id) > _MAX_FIELD:
        raise ValueError("connector.id is missing or not a short string")
    return event, connector_id


class WebhookReceiver:
    """Serves ``POST {path}`` on its own listener; calls ``on_hint(connector_id, event)``.

    ``on_hint`` runs on the listener's event loop: it must only wake the sync
    watcher (set an event, put on a queue), never wait. If it raises, the delivery
    answers 500 and the hint is not coalesced, so Bindbee's retry gets another chance.

    ``read_timeout_seconds`` bounds both the wait for a request head on an open
    connection and the wait for a body once its head has arrived (then: 408).
    ``max_connections`` caps open connections (idle ones included); past it a new
    connection is closed at once.

    ``clock`` (monotonic seconds) drives hint coalescing and log throttling; tests
    inject one they control.

    ``on_ids(hint)`` takes a ``connector_data_modified`` (never coalesced) and must have
    made it durable when it returns; if it raises, the delivery answers 500 so Bindbee
    retries. ``on_too_large()`` is told of a body refused for its size (413), at most once
    per ``hint_interval_seconds`` (it writes to the store, and a 413 is unauthenticated).
    Both run on a worker thread, not on the listener's loop.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: SecretStr,
        on_hint: Hint,
        path: str = DEFAULT_PATH,
        encodings: Collection[Encoding] = ENCODINGS,
        max_body_bytes: int = MAX_BODY_BYTES,
        hint_interval_seconds: float = 5.0,
        read_timeout_seconds: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
        bad_signature_log_interval_seconds: float = 60.0,
        clock: Clock = time.monotonic,
        on_ids: Callable[[IdsHint], None] | None = None,
        on_too_large: Callable[[], None] | None = None,
        max_hint_ids: int = MAX_HINT_IDS,
    ) -> None:
        key = secret.get_secret_value().encode()
        if not key:
            raise ValueError("webhook secret must not be empty")
        if not path.startswith("/"):
            raise ValueError("webhook path must start with /")
        unknown = set(encodings) - set(ENCODINGS)
        if not encodings or unknown:
            raise ValueError(f"encodings must be a non-empty subset of {ENCODINGS}")
        self.host = host
        self.path = path
        self.encodings = tuple(encodings)
        self.max_body_bytes = max_body_bytes
        self.read_timeout_seconds = read_timeout_seconds
        self.max_connections = max_connections
        self._key = key
        self._on_hint = on_hint
        self._on_ids = on_ids
        self.max_hint_ids = max_hint_ids
        self._hints = _HintLimiter(hint_interval_seconds, clock)
        self._bad_signature_log = _LogThrottle(bad_signature_log_interval_seconds, clock)
        self._bad_request_log = _LogThrottle(bad_signature_log_interval_seconds, clock)
        self._stopped = threading.Event()
        self._clock = clock
        self._on_too_large = on_too_large
        self._too_large_interval = hint_interval_seconds
        self._too_large_lock = threading.Lock()
        self._too_large_at: float | None = None
        app = WebhookApp(
            path,
            self.handle,
            signature_header=SIGNATURE_HEADER,
            max_body_bytes=max_body_bytes,
            read_timeout_seconds=read_timeout_seconds,
            on_too_large=None if on_too_large is None else self._too_large,
        )
        self._server = ServerThread(
            app,
            host,
            port,
            name="webhook",
            field="webhook.port",
            head_timeout=read_timeout_seconds,
            max_connections=max_connections,
            # What is left of a refused body is read and dropped up to this much, so
            # the sender can finish and read its 413; a sender of more is cut off.
            drain_bytes=max(4 * max_body_bytes, 1 << 20),
            on_malformed=self._malformed,
            # A restart may bind while connections of the old listener linger (an idle
            # client, TIME_WAIT); Linux still refuses a port another socket listens on.
            reuse_address=True,
        )

    def __repr__(self) -> str:
        return f"WebhookReceiver(host={self.host!r}, port={self.port}, path={self.path!r})"

    @property
    def port(self) -> int:
        """The bound port once started (port 0 picks a free one)."""
        return self._server.port

    @property
    def url(self) -> str:
        """``http://host:port/path`` of the bound listener."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}{self.path}"

    def handle(
        self, body: bytes, signature: str | None, remote: str
    ) -> tuple[HTTPStatus, str, str]:
        """One delivery's raw body → ``(status, outcome, detail)``; the HTTP-free core."""
        if not verify_signature(self._key, body, signature, self.encodings):
            held = self._bad_signature_log.allow()
            if held is not None:
                log.warning(
                    "webhook_bad_signature",
                    remote=remote,
                    signature_present=bool(signature),
                    suppressed_since_last=held,
                )
            return HTTPStatus.UNAUTHORIZED, "bad_signature", "missing or invalid signature"
        try:
            event, connector_id = parse_envelope(body)
        except ValueError as exc:
            held = self._bad_request_log.allow()
            if held is not None:
                log.warning("webhook_bad_request", remote=remote, reason=str(exc), suppressed=held)
            return HTTPStatus.BAD_REQUEST, "bad_request", str(exc)
        if event not in HINT_EVENTS:
            log.info("webhook_ignored", webhook_event=event, connector_id=connector_id)
            return HTTPStatus.OK, "ignored", f"event {event} needs no action"
        if self._stopped.is_set():
            # Bindbee never redelivers a 200: a hint that arrives while this replica
            # shuts down is refused so Bindbee retries it (on another replica, or here
            # once restarted) instead of it being dropped.
            log.info("webhook_refused_stopping", webhook_event=event, connector_id=connector_id)
            return HTTPStatus.SERVICE_UNAVAILABLE, "stopping", "shutting down; retry later"
        if event == IDS_EVENT and self._on_ids is not None:
            failed = self._take_ids(body, connector_id)
            if failed is not None:
                return failed
        if not self._hints.admit(connector_id):
            log.debug("webhook_coalesced", webhook_event=event, connector_id=connector_id)
            return HTTPStatus.OK, "coalesced", "a hint for this connector was just taken"
        try:
            self._on_hint(connector_id, event)
        except Exception as exc:
            self._hints.forget(connector_id)
            log.error(
                "webhook_hint_failed",
                webhook_event=event,
                connector_id=connector_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            return HTTPStatus.INTERNAL_SERVER_ERROR, "error", "hint could not be taken"
        log.info("webhook_hint", webhook_event=event, connector_id=connector_id)
        return HTTPStatus.OK, "accepted", f"connector {connector_id} will be checked"

    def _take_ids(self, body: bytes, connector_id: str) -> tuple[HTTPStatus, str, str] | None:
        """Hand a ``connector_data_modified``'s ids over (durably); None when taken."""
        assert self._on_ids is not None
        try:
            hint = parse_ids_hint(body, connector_id, self.max_hint_ids)
        except ValueError as exc:
            return HTTPStatus.BAD_REQUEST, "bad_request", str(exc)
        try:
            self._on_ids(hint)
        except Exception as exc:
            log.error("webhook_hint_failed", webhook_event=IDS_EVENT, connector_id=connector_id,
                      error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            return HTTPStatus.INTERNAL_SERVER_ERROR, "error", "hint could not be stored"
        log.info("webhook_ids", connector_id=connector_id, sync_id=hint.sync_id,
                 ids=len(hint.ids), walk_reason=hint.walk_reason)  # fmt: skip
        return None

    def _too_large(self) -> None:
        """A 413: tell ``on_too_large``, at most once per hint interval (in memory)."""
        assert self._on_too_large is not None
        now = self._clock()
        with self._too_large_lock:
            last = self._too_large_at
            if last is not None and now - last < self._too_large_interval:
                return
            self._too_large_at = now
        try:
            self._on_too_large()
        except Exception:
            with self._too_large_lock:  # not taken: the next 413 tries again
                if self._too_large_at == now:
                    self._too_large_at = last
            raise

    def _malformed(self) -> None:
        """A request h11 refused (400) before the app saw it: counted, logged throttled."""
        metrics.WEBHOOK_DELIVERIES.labels("bad_request").inc()
        held = self._bad_request_log.allow()
        if held is not None:
            log.warning("webhook_bad_request", reason="malformed HTTP request", suppressed=held)

    def start(self) -> None:
        """Bind and serve on the listener's own thread; returns once it answers.

        Raises ConfigError naming ``webhook.port`` when the address cannot be bound.
        """
        self._stopped.clear()
        self._server.start()
        log.info("webhook_listening", host=self.host, port=self.port, path=self.path)

    def stop(self) -> None:
        """Stop serving and release the port; in-flight deliveries no longer hint."""
        self._stopped.set()
        self._server.stop()

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
