"""Response helpers: fast JSON, and the response that breaks the connection."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

# uvicorn logs this when an app returns mid-body; for the disconnect fault it
# is the intended outcome, so it is not worth an error line.
_INCOMPLETE_MESSAGE = "ASGI callable returned without completing response."


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised with orjson (several times faster than the default)."""
    return Response(
        orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json"
    )


class DisconnectResponse(Response):
    """Announces a body, sends part of it, then stops: the server drops the connection.

    uvicorn closes the transport when an app returns before the body is
    complete, so the client sees a truncated message (``httpx`` raises
    ``RemoteProtocolError``) rather than any HTTP status it could act on.
    """

    def __init__(self, partial: bytes) -> None:
        super().__init__(content=b"", media_type="application/json")
        self.partial = partial

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the head and a fraction of the promised body, then return."""
        declared = len(self.partial) * 4 + 1024
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(declared).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.partial, "more_body": True})


class _DropIncompleteNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _INCOMPLETE_MESSAGE


def quiet_disconnect_notices() -> None:
    """Stop uvicorn logging an error for each deliberate disconnect (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropIncompleteNotice) for f in logger.filters):
        logger.addFilter(_DropIncompleteNotice())
