"""The organisation's connectors list, ``GET /api/lms/v1/connectors``: who syncs, and when.

The sync watcher reads every page of it (Bearer API key only, no connector token)
to learn each connector's ``sync_status`` and ``last_sync_start_time``. The reads go
through ``source.transport`` like the data client's (one pool, the ``bindbee.*`` retry
policy, one error translation, one page parser), on the organisation's lane: they never
take a connector's connection slots or spend its rate budget.

Malformed items are skipped and counted rather than failing the whole list: one
broken connector must not stop the watcher from seeing the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import SecretStr

from daemon.errors import MalformedResponseError
from daemon.ops import metrics
from daemon.settings import BindbeeSettings
from daemon.source.pagination import CursorWalk
from daemon.source.transport import API_PREFIX, Transport, page_body
from daemon.timestamps import normalize_time

log = structlog.get_logger("daemon.source.connectors")

CONNECTORS_PATH = f"{API_PREFIX}/connectors"


@dataclass(frozen=True)
class ConnectorInfo:
    """One connector as the list shows it. ``token`` is a SecretStr and stays out of repr."""

    id: str
    is_active: bool
    status: str | None
    sync_status: str | None
    last_sync_start_time: str | None
    next_sync_start_time: str | None
    integration_slug: str | None
    is_test_connector: bool
    origin_id: str | None
    category: str | None
    token: SecretStr = field(repr=False)


@dataclass(frozen=True)
class ConnectorListing:
    """Every connector of one full read of the list, plus what the read cost."""

    connectors: tuple[ConnectorInfo, ...]
    skipped: int
    pages: int
    requests: int

    def by_id(self, connector_id: str) -> ConnectorInfo | None:
        """The connector with this Bindbee id, or None."""
        return next((c for c in self.connectors if c.id == connector_id), None)

    def by_token(self, token: SecretStr | str) -> ConnectorInfo | None:
        """The connector whose ``connector_token`` is ``token``, or None."""
        wanted = token.get_secret_value() if isinstance(token, SecretStr) else token
        return next((c for c in self.connectors if c.token.get_secret_value() == wanted), None)

    def __iter__(self) -> Iterator[ConnectorInfo]:
        return iter(self.connectors)

    def __len__(self) -> int:
        return len(self.connectors)


class _Malformed(ValueError):
    """Internal: one item cannot be read; the message names the field, never a value."""


def _optional_str(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Malformed(f"{key} is not a string")
    return value


def _optional_time(item: Mapping[str, Any], key: str) -> str | None:
    value = _optional_str(item, key)
    if value is None or not value.strip():
        return None
    try:
        return normalize_time(value.strip())
    except ValueError:
        raise _Malformed(f"{key} is not an ISO 8601 time") from None


def _flag(item: Mapping[str, Any], key: str, default: bool) -> bool:
    value = item.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Malformed(f"{key} is not a boolean")
    return value


def parse_connector(item: Any) -> ConnectorInfo:
    """One list item → ConnectorInfo; raises ValueError naming the bad field (never a value).

    ``is_active`` missing counts as active (the list would not show a deleted one);
    ``connector_token`` is required because streams are matched to connectors by it.
    """
    if not isinstance(item, Mapping):
        raise _Malformed("item is not an object")
    connector_id = item.get("id")
    if not isinstance(connector_id, str) or not connector_id:
        raise _Malformed("id is missing")
    token = item.get("connector_token")
    if not isinstance(token, str) or not token:
        raise _Malformed("connector_token is missing")
    end_user = item.get("end_user")
    if end_user is not None and not isinstance(end_user, Mapping):
        raise _Malformed("end_user is not an object")
    origin_id = _optional_str(end_user, "origin_id") if end_user else None
    return ConnectorInfo(
        id=connector_id,
        is_active=_flag(item, "is_active", True),
        status=_optional_str(item, "status"),
        sync_status=_optional_str(item, "sync_status"),
        last_sync_start_time=_optional_time(item, "last_sync_start_time"),
        next_sync_start_time=_optional_time(item, "next_sync_start_time"),
        integration_slug=_optional_str(item, "integration_slug"),
        is_test_connector=_flag(item, "is_test_connector", False),
        origin_id=origin_id,
        category=_optional_str(item, "category"),
        token=SecretStr(token),
    )


class ConnectorDirectory:
    """Reads the connectors list, every page, with retries; raises ``daemon.errors`` only.

    5xx, timeouts, dropped connections and malformed answers are retried up to
    ``max_attempts`` times with jittered exponential back-off (the transport's policy);
    a 429 waits ``Retry-After`` (capped at ``max_retry_after_seconds``), ``max_attempts``
    of them at most. Setting ``stop`` ends any wait at once with ScanInterrupted.

    ``ConnectorDirectory(base_url, api_key, ...)`` opens its own transport, built like
    ``BindbeeSettings`` from any further ``bindbee`` field given (``max_attempts``,
    ``backoff_base_seconds``, ``timeout_seconds``…: the settings' defaults otherwise). The
    daemon uses ``ConnectorDirectory.over(client.transport)`` instead: one pool per process,
    and the configured ``bindbee.*`` policy.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        page_size: int = 100,
        max_retry_after_seconds: float = 60.0,
        max_pages: int = 10_000,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        **bindbee: Any,
    ) -> None:
        settings = BindbeeSettings(base_url=base_url, api_key=api_key, **bindbee)
        transport = Transport(settings, stop=stop, sleep=sleep)
        self._open(transport, page_size, None, max_retry_after_seconds, max_pages, owned=True)

    @classmethod
    def over(
        cls,
        transport: Transport,
        *,
        page_size: int = 100,
        timeout_seconds: float | None = None,
        max_retry_after_seconds: float = 60.0,
        max_pages: int = 10_000,
    ) -> ConnectorDirectory:
        """A directory over a shared transport (the data client's), which it never closes;
        ``timeout_seconds`` overrides the transport's for the list's requests."""
        directory = cls.__new__(cls)
        directory._open(
            transport, page_size, timeout_seconds, max_retry_after_seconds, max_pages, owned=False
        )
        return directory

    def _open(
        self,
        transport: Transport,
        page_size: int,
        timeout_seconds: float | None,
        max_retry_after_seconds: float,
        max_pages: int,
        *,
        owned: bool,
    ) -> None:
        if not 1 <= page_size <= 100:
            raise ValueError("page_size must be between 1 and 100")
        self.base_url = transport.settings.base_url
        self.page_size = page_size
        self.max_pages = max_pages
        self._transport = transport
        self._owned = owned
        self._lane = transport.org_lane(
            timeout_seconds=timeout_seconds, max_retry_after_seconds=max_retry_after_seconds
        )

    def __repr__(self) -> str:
        return f"ConnectorDirectory(base_url={self.base_url!r})"

    def __enter__(self) -> ConnectorDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool, if this directory opened it."""
        if self._owned:
            self._transport.close()

    def list(
        self,
        *,
        connector_token: SecretStr | None = None,
        origin_id: str | None = None,
        is_active: bool | None = None,
    ) -> ConnectorListing:
        """Every connector matching the filters, all pages followed.

        Prefer one unfiltered read matched locally with ``ConnectorListing.by_token``:
        it covers every stream at once and keeps tokens out of request URLs.
        """
        filters: dict[str, str | int] = {}
        if connector_token is not None:
            filters["connector_token"] = connector_token.get_secret_value()
        if origin_id is not None:
            filters["origin_id"] = origin_id
        if is_active is not None:
            filters["is_active"] = "true" if is_active else "false"
        connectors: dict[str, ConnectorInfo] = {}
        walk = CursorWalk("connectors list")
        cursor: str | None = None
        skipped = requests = pages = 0
        while True:
            pages += 1
            if pages > self.max_pages:
                raise MalformedResponseError(
                    f"connectors list: more than {self.max_pages} pages; giving up"
                )
            query = {**filters, "page_size": self.page_size}
            if cursor is not None:
                query["cursor"] = cursor
            where = f"connectors list page {pages}"
            items, next_cursor, sent = self._transport.call(
                self._lane,
                CONNECTORS_PATH,
                query,
                where,
                lambda body, sent, where=where: (*page_body(body, where), sent),
            )
            requests += sent
            skipped += _collect(items, pages, connectors)
            cursor = walk.follow(pages, next_cursor)  # raises on a cursor loop
            if cursor is None:
                return ConnectorListing(tuple(connectors.values()), skipped, pages, requests)

    def find_by_token(self, token: SecretStr) -> ConnectorInfo | None:
        """The connector of one token, via the ``connector_token`` filter (one small read)."""
        return self.list(connector_token=token).by_token(token)


def _collect(items: list[Any], page: int, connectors: dict[str, ConnectorInfo]) -> int:
    """Add a page's readable connectors to ``connectors`` (by id; a connector met twice,
    the list having moved under the cursor, keeps its first sighting); returns how many
    items were skipped as unreadable."""
    skipped = 0
    for position, item in enumerate(items):
        try:
            info = parse_connector(item)
        except ValueError as exc:
            skipped += 1
            metrics.SYNC_CHECK_MALFORMED_ITEMS.inc()
            log.warning("connector_item_skipped", page=page, position=position, reason=str(exc))
            continue
        connectors.setdefault(info.id, info)
    return skipped
