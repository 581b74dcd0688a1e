"""The webhook listener's ASGI app: routing, the body limit, the read deadline.

Only what HTTP decides lives here; what a delivery means is the receiver's
``handle(body, signature, remote) -> (status, outcome, detail)``. Order of checks,
cheapest first: path (404), method (405), the announced size (413, before a byte
of the body is read), the body counted as it arrives (413 as soon as the running
total passes the limit, chunked or not), the read deadline (408). Nothing is
parsed and nothing is logged here: a malformed request costs a counter.

A refused body is not read into memory: uvicorn discards what still arrives (its
connection lives on the head deadline of ``_server``), so the client can read the
answer before the connection closes instead of meeting a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson

from daemon.ops import metrics

Handle = Callable[[bytes, "str | None", str], tuple[HTTPStatus, str, str]]
Send = Callable[[dict[str, Any]], Any]
Receive = Callable[[], Any]

_JSON = (b"content-type", b"application/json")
_NOT_FOUND = b'{"detail":"not found"}'
_NOT_ALLOWED = b'{"detail":"method not allowed"}'


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a (lower-case) header, as uvicorn hands them over."""
    for key, value in headers:
        if key == name:
            return value
    return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise _TooLarge
        body += chunk
        if not message.get("more_body", False):
            return bytes(body)


async def _send(
    send: Send, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _reply(
    send: Send,
    status: HTTPStatus,
    outcome: str,
    detail: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    await _send(send, status, orjson.dumps({"outcome": outcome, "detail": detail}), extra)


class WebhookApp:
    """``POST {path}`` → ``handle``; ``signature_header`` is the lower-case header name."""

    def __init__(
        self,
        path: str,
        handle: Handle,
        *,
        signature_header: str,
        max_body_bytes: int,
        read_timeout_seconds: float,
        on_too_large: Callable[[], None] | None = None,
    ) -> None:
        self._path = path
        self._on_too_large = on_too_large
        self._handle = handle
        self._signature = signature_header.lower().encode()
        self._limit = max_body_bytes
        self._timeout = read_timeout_seconds

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off and websockets are not served; nothing else comes
        if scope["path"] != self._path:
            await _send(send, HTTPStatus.NOT_FOUND, _NOT_FOUND)
            return
        if scope["method"] != "POST":
            allow = ((b"allow", b"POST"),)
            await _send(send, HTTPStatus.METHOD_NOT_ALLOWED, _NOT_ALLOWED, allow)
            return
        headers = scope["headers"]
        try:
            if self._announced_too_large(headers):
                raise _TooLarge
            async with asyncio.timeout(self._timeout):
                body = await _read_body(receive, self._limit)
        except _TooLarge:
            if self._on_too_large is not None:
                # A hint too large to take: its sync is walked instead (see the receiver).
                # Best effort: the store failing must not turn a 413 into a dropped answer.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._on_too_large)
            await _reply(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", "body too large")
            return
        except TimeoutError:
            # A client this slow is not worth its connection: answer and hang up.
            close = ((b"connection", b"close"),)
            await _reply(send, HTTPStatus.REQUEST_TIMEOUT, "timeout", "body too slow", close)
            return
        except _Disconnected:
            metrics.WEBHOOK_DELIVERIES.labels("bad_request").inc()
            return  # nobody to answer
        signature = _header(headers, self._signature)
        client = scope.get("client")
        # On a worker thread: a delivery may write to the state store before its answer,
        # and the loop must go on serving the other connections meanwhile.
        status, outcome, detail = await asyncio.to_thread(
            self._handle,
            body,
            None if signature is None else signature.decode("latin-1"),
            client[0] if client else "",
        )
        await _reply(send, status, outcome, detail)

    def _announced_too_large(self, headers: list[tuple[bytes, bytes]]) -> bool:
        # With Transfer-Encoding, Content-Length is ignored (h11 frames the body by the
        # chunks), and h11 has refused a malformed one; should one still not parse,
        # the running total decides.
        length = _header(headers, b"content-length")
        if length is None or _header(headers, b"transfer-encoding") is not None:
            return False
        try:
            return int(length) > self._limit
        except ValueError:
            return False
