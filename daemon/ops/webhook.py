"""The Bindbee webhook receiver: signed deliveries become *hints* for the sync watcher.

A delivery never carries data the daemon trusts. ``connector_synced`` and
``connector_data_modified`` only make the watcher read that connector's status from
the API now; the scan decision and the data always come from the API. So a forged,
replayed or duplicated delivery costs at most one connectors-list read, and hints
per connector are coalesced (one per ``hint_interval_seconds``).

Order of checks, cheapest and safest first: path (404) and method (405); size
from Content-Length before reading (413; chunked bodies are counted as they arrive);
the HMAC-SHA256 signature of the raw body (401) before anything is parsed; then
the envelope (400). Accepted and ignored events answer 200.

It listens on its own port, apart from the ops server: the webhook port may face the
internet (through an ingress), /metrics should not. Nothing here logs the secret or
the signature header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Callable, Collection
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
import structlog
from pydantic import SecretStr

from daemon.errors import ConfigError
from daemon.ops import metrics

log = structlog.get_logger("daemon.ops.webhook")

Encoding = Literal["base64url", "base64", "hex"]
ENCODINGS: tuple[Encoding, ...] = ("base64url", "base64", "hex")
SIGNATURE_HEADER = "X-Bindbee-Webhook-Signature"
DEFAULT_PATH = "/webhooks/bindbee"
MAX_BODY_BYTES = 1 << 20
HINT_EVENTS = frozenset({"connector_synced", "connector_data_modified"})
# Long enough for any real id; keeps a hostile-but-signed body out of log lines.
_MAX_FIELD = 200

Hint = Callable[[str, str], None]
Clock = Callable[[], float]


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


# -- rate limits -----------------------------------------------------------------


class _HintLimiter:
    """At most one hint per connector per ``interval`` seconds of ``clock``."""

    _PRUNE_AT = 4096

    def __init__(self, interval: float, clock: Clock) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def admit(self, connector_id: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(connector_id)
            if last is not None and now - last < self._interval:
                return False
            self._last[connector_id] = now
            if len(self._last) > self._PRUNE_AT:
                self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
            return True

    def forget(self, connector_id: str) -> None:
        with self._lock:
            self._last.pop(connector_id, None)


class _LogThrottle:
    """One log line per ``interval``; reports how many were held back in between."""

    def __init__(self, interval: float, clock: Clock) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._held = 0

    def allow(self) -> int | None:
        """None: stay quiet; otherwise the count suppressed since the last line."""
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._held += 1
                return None
            self._next = now + self._interval
            held, self._held = self._held, 0
            return held


# -- HTTP ------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class _BadBody(Exception):
    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR: a restart may bind while connections of the old listener linger (an
    # idle client, TIME_WAIT); Linux still refuses a port another socket listens on.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], receiver: WebhookReceiver) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.receiver = receiver
        self._slots = threading.BoundedSemaphore(receiver.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # A flood of idle connections must not grow threads without bound.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr (a header read timing out, a
        # reset connection); one quiet line is enough.
        log.debug("webhook_connection_error", remote=str(client_address[0]))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "lms-changefeed"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # StreamRequestHandler applies this to the socket: every read is bounded.
        self.timeout = self.server.receiver.read_timeout_seconds
        super().setup()

    def do_POST(self) -> None:
        receiver = self.server.receiver
        if not self._on_path():
            return
        deadline = time.monotonic() + receiver.read_timeout_seconds
        try:
            body = self._read_body(receiver.max_body_bytes, deadline)
        except _TooLarge:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", "body too large")
            self._linger()
            return
        except _BadBody as exc:
            self._reply(HTTPStatus.BAD_REQUEST, "bad_request", str(exc))
            return
        except (TimeoutError, OSError):
            metrics.WEBHOOK_DELIVERIES.labels("timeout").inc()
            self.close_connection = True
            return
        status, outcome, detail = receiver.handle(
            body, self.headers.get(SIGNATURE_HEADER), self.client_address[0]
        )
        self._reply(status, outcome, detail)

    def do_GET(self) -> None:
        self._not_allowed()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def do_HEAD(self) -> None:
        self._not_allowed(head=True)

    def _on_path(self, head: bool = False) -> bool:
        if urlsplit(self.path).path == self.server.receiver.path:
            return True
        self._send(HTTPStatus.NOT_FOUND, b'{"detail":"not found"}', head=head)
        return False

    def _not_allowed(self, head: bool = False) -> None:
        if self._on_path(head):
            self._send(
                HTTPStatus.METHOD_NOT_ALLOWED,
                b'{"detail":"method not allowed"}',
                head=head,
                extra={"Allow": "POST"},
            )

    def _read_body(self, limit: int, deadline: float) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise _BadBody("unsupported Transfer-Encoding")
            return self._read_chunked(limit, deadline)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise _BadBody("invalid Content-Length") from None
        if length < 0:
            raise _BadBody("invalid Content-Length")
        if length > limit:
            raise _TooLarge
        return self._read_exact(length, deadline)

    def _read_exact(self, size: int, deadline: float) -> bytes:
        # read1 returns after one socket read, so a client trickling bytes meets the
        # overall deadline, not just the per-read timeout.
        parts: list[bytes] = []
        remaining = size
        while remaining > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("body read deadline passed")
            chunk = self.rfile.read1(min(remaining, 65536))
            if not chunk:
                raise _BadBody("body shorter than announced")
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    def _read_line(self, deadline: float) -> bytes:
        if time.monotonic() > deadline:
            raise TimeoutError("body read deadline passed")
        line = self.rfile.readline(1024)
        if not line.endswith(b"\n"):
            raise _BadBody("malformed chunked body")
        return line

    def _read_chunked(self, limit: int, deadline: float) -> bytes:
        body = bytearray()
        while True:
            size_text = self._read_line(deadline).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadBody("malformed chunk size") from None
            if size < 0:
                raise _BadBody("malformed chunk size")
            if size == 0:
                for _ in range(64):  # trailers, up to the blank line
                    if self._read_line(deadline).strip() == b"":
                        return bytes(body)
                raise _BadBody("too many trailers")
            if len(body) + size > limit:
                raise _TooLarge
            body += self._read_exact(size, deadline)
            if self._read_exact(2, deadline) != b"\r\n":
                raise _BadBody("malformed chunked body")

    def _reply(self, status: HTTPStatus, outcome: str, detail: str) -> None:
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        self._send(status, orjson.dumps({"outcome": outcome, "detail": detail}))

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        *,
        head: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        # One delivery per connection: unread bodies (404, 405, 413) are never drained,
        # and idle keep-alive connections hold no thread.
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)
        except OSError:
            pass  # the sender hung up; nothing to tell it

    def _linger(self) -> None:
        # Closing with the client's body still unread makes the kernel send a reset,
        # which can destroy the 413 before the client reads it. Half-close, then
        # discard a bounded amount for a bounded time so the answer gets through.
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.2)
            deadline = time.monotonic() + 1.0
            drained = 0
            while drained < 4 * MAX_BODY_BYTES and time.monotonic() < deadline:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        # No access log: the request line is harmless, but one quiet place for logs
        # (handle()) keeps signature headers and bodies out by construction.
        return


class WebhookReceiver:
    """Serves ``POST {path}`` on its own listener; calls ``on_hint(connector_id, event)``.

    ``on_hint`` runs on the request thread: it should only wake the sync watcher
    (set an event, put on a queue). If it raises, the delivery answers 500 and the
    hint is not coalesced, so Bindbee's retry gets another chance.

    ``clock`` (monotonic seconds) drives hint coalescing and log throttling; tests
    inject one they control.
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
        max_connections: int = 64,
        bad_signature_log_interval_seconds: float = 60.0,
        clock: Clock = time.monotonic,
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
        self.port = port
        self.path = path
        self.encodings = tuple(encodings)
        self.max_body_bytes = max_body_bytes
        self.read_timeout_seconds = read_timeout_seconds
        self.max_connections = max_connections
        self._key = key
        self._on_hint = on_hint
        self._hints = _HintLimiter(hint_interval_seconds, clock)
        self._bad_signature_log = _LogThrottle(bad_signature_log_interval_seconds, clock)
        self._bad_request_log = _LogThrottle(bad_signature_log_interval_seconds, clock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def __repr__(self) -> str:
        return f"WebhookReceiver(host={self.host!r}, port={self.port}, path={self.path!r})"

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
        if event not in HINT_EVENTS or self._stopped.is_set():
            log.info("webhook_ignored", webhook_event=event, connector_id=connector_id)
            return HTTPStatus.OK, "ignored", f"event {event} needs no action"
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

    def start(self) -> None:
        """Bind (port 0 picks a free port; ``port`` then holds it) and serve in a thread.

        Raises ConfigError naming ``webhook.port`` when the address cannot be bound.
        """
        if self._server is not None:
            return
        try:
            server = _Server((self.host, self.port), self)
        except OSError as exc:
            raise ConfigError(
                "webhook.port", f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._stopped.clear()
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="webhook-http",
            daemon=True,
        )
        self._thread.start()
        log.info("webhook_listening", host=self.host, port=self.port, path=self.path)

    def stop(self) -> None:
        """Stop serving and release the port; in-flight deliveries no longer hint."""
        self._stopped.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
