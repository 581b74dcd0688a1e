"""Serving the app: socket binding, the uvicorn server, and ``SimServer`` for tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import uvicorn

from bindbee_sim.responses import quiet_disconnect_notices
from bindbee_sim.server import build_app
from bindbee_sim.state import SimState
from bindbee_sim.webhooks import WebhookPolicy


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 picks a free port).

    Binding before uvicorn starts means the port is known (and accepts
    connections into the backlog) as soon as this returns.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say
    # so, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def url_for(host: str, sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def make_server(
    state: SimState, log_level: str = "warning", access_log: bool = False
) -> uvicorn.Server:
    """A uvicorn server for the simulator app (not started)."""
    config = uvicorn.Config(
        build_app(state),
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        # A delay fault must not hold shutdown for its full length.
        timeout_graceful_shutdown=1,
    )
    quiet_disconnect_notices()  # after Config: it (re)configures uvicorn's loggers
    return uvicorn.Server(config)


class SimServer:
    """The simulator on a background thread, for in-process tests.

    ``with SimServer(enrollments=250, seed=7) as sim: ...`` serves on a free
    loopback port until the block ends. The record, fault, sync and connector
    helpers act on the state directly (thread-safe), with the same semantics
    as ``/_sim``. The keyword arguments mirror the ``bindbee-sim`` options.
    """

    def __init__(
        self,
        connectors: Mapping[str, str] | None = None,
        enrollments: int = 100,
        seed: int = 1,
        api_key: str = "test-api-key",
        rate_limit: int = 0,
        rate_window_seconds: float = 60.0,
        honor_modified_after: bool = False,
        sync_mode: str = "live",
        sync_interval_seconds: float = 0.0,
        sync_duration_seconds: float = 1.0,
        sync_touches_all: bool = False,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_signature_encoding: str = "base64url",
        webhook_timeout_seconds: float = 10.0,
        webhook_retry_window_seconds: float = 60.0,
        webhook_retries: int = 4,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        start_timeout: float = 10.0,
    ) -> None:
        self.state = SimState(
            dict(connectors) if connectors is not None else {"acme": "tok_acme"},
            enrollments=enrollments,
            seed=seed,
            api_key=api_key,
            rate_limit=rate_limit,
            rate_window_seconds=rate_window_seconds,
            honor_modified_after=honor_modified_after,
            sync_mode=sync_mode,
            sync_interval_seconds=sync_interval_seconds,
            sync_duration_seconds=sync_duration_seconds,
            sync_touches_all=sync_touches_all,
            webhook=webhook_policy(
                webhook_url,
                webhook_secret,
                webhook_signature_encoding,
                webhook_timeout_seconds,
                webhook_retry_window_seconds,
                webhook_retries,
            ),
        )
        self.host = host
        self.port = port
        self._log_level = log_level
        self._start_timeout = start_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> SimServer:
        """Serve in a background thread; returns once requests are being handled."""
        if self._thread is not None:
            raise RuntimeError("SimServer already started")
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.base_url = url_for(self.host, sock)
        try:
            server = self._server = make_server(self.state, self._log_level)
        except Exception:
            sock.close()
            raise
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="bindbee-sim", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not server.started:
            if not self._thread.is_alive():
                sock.close()
                raise RuntimeError("bindbee-sim server thread exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("bindbee-sim did not start in time")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down and join its thread; sync and webhook threads stop too."""
        self.state.close()
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- identity --------------------------------------------------------------

    @property
    def api_key(self) -> str:
        """The bearer key clients must send."""
        return self.state.api_key

    @property
    def tokens(self) -> dict[str, str]:
        """Connector name -> connector token."""
        return {name: ds.token for name, ds in self.state.datasets.items()}

    # ---- records ---------------------------------------------------------------

    def create(
        self, connector: str, model: str, fields: Mapping[str, Any], unchecked: bool = False
    ) -> dict[str, Any]:
        """Create a record (like ``POST /_sim/{connector}/{model}``); returns it in full.

        In scheduled mode the change is staged and the staged copy comes back.
        ``unchecked`` stores ``fields`` as given (``?unchecked=true``).
        """
        return self.state.create(connector, model, fields, unchecked)

    def update(
        self, connector: str, model: str, record_id: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge fields, bumping ``modified_at`` unless given (raises ``NotFound``)."""
        return self.state.update(connector, model, record_id, fields)

    def delete(self, connector: str, model: str, record_id: str) -> None:
        """Delete a record (raises ``NotFound``)."""
        self.state.delete(connector, model, record_id)

    def get(
        self, connector: str, model: str, record_id: str, staged: bool = False
    ) -> dict[str, Any] | None:
        """A record in full as the API serves it (``staged``: after the next sync), or None."""
        return self.state.get(connector, model, record_id, staged)

    def records(self, connector: str, model: str) -> list[dict[str, Any]]:
        """Every current record in full, in id order."""
        return self.state.records(connector, model)

    def ids(self, connector: str, model: str) -> list[str]:
        """Every current id, in order."""
        return self.state.ids(connector, model)

    # ---- behaviour -------------------------------------------------------------

    def add_fault(self, **fault: Any) -> dict[str, Any]:
        """Arm a fault; keywords mirror the ``POST /_sim/faults`` body."""
        return self.state.add_fault(fault)

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self.state.clear_faults()

    def stats(self) -> dict[str, dict[str, int]]:
        """Data responses per connector name and status code."""
        return self.state.stats()

    def reset(self) -> None:
        """Seed data back; faults, stats and rate windows cleared."""
        self.state.reset()

    def set_rate_limit(self, limit: int, window_seconds: float) -> None:
        """Change the rate limit (0 disables it); every window restarts."""
        self.state.configure(rate_limit=limit, rate_window_seconds=window_seconds)

    def set_honor_modified_after(self, flag: bool) -> None:
        """Whether list endpoints filter on ``modified_after``."""
        self.state.configure(honor_modified_after=flag)

    def configure_syncs(self, **changes: Any) -> dict[str, Any]:
        """Change ``sync_mode``, ``sync_interval_seconds``, ``sync_duration_seconds`` or
        ``sync_touches_all`` (like ``POST /_sim/config``); returns every switch."""
        return self.state.configure(sync=changes)

    # ---- syncs, connectors, webhooks --------------------------------------------

    def sync(
        self, connector: str, fail: bool = False, wait: bool = True, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Start a sync (``POST /_sim/syncs``); with ``wait``, return once it has ended.

        Raises ``Refused`` while one runs, ``TimeoutError`` if it outlasts ``timeout``.
        """
        started = self.state.start_sync(connector, fail)
        if not wait:
            return started
        ended = self.state.wait_sync(started["sync_id"], timeout)
        if ended["status"] == "Syncing":
            raise TimeoutError(f"sync {ended['sync_id']} still running after {timeout} s")
        return ended

    def syncs(self) -> list[dict[str, Any]]:
        """Syncs so far, oldest first (``GET /_sim/syncs``)."""
        return self.state.sync_history()

    def staged(self) -> dict[str, int]:
        """Staged changes per connector (``GET /_sim/staged``)."""
        return self.state.staged()

    def connector(self, name: str) -> dict[str, Any]:
        """One connector as ``GET /api/lms/v1/connectors`` lists it."""
        return self.state.connector(name)

    def set_connector(
        self, name: str, status: str | None = None, is_active: bool | None = None
    ) -> dict[str, Any]:
        """Set a connector's link ``status`` or ``is_active`` (``PATCH /_sim/connectors/...``)."""
        return self.state.set_connector(name, status, is_active)

    def add_connector(
        self, name: str, token: str, enrollments: int | None = None
    ) -> dict[str, Any]:
        """Link a connector at run time (``POST /_sim/connectors``); returns its listing."""
        return self.state.add_connector(name, token, enrollments)

    def webhooks(self) -> list[dict[str, Any]]:
        """Webhook delivery attempts so far (``GET /_sim/webhooks``)."""
        return self.state.webhook_log()

    def drop_webhooks(
        self, count: int = 1, event: str | None = None, connector: str | None = None
    ) -> list[dict[str, Any]]:
        """Lose the next ``count`` deliveries of ``event`` for ``connector`` (None: any):
        never sent, logged as ``dropped`` (``POST /_sim/webhooks/drop``); the armed rules."""
        return self.state.drop_webhooks(count, event, connector)

    def webhook_drops(self) -> list[dict[str, Any]]:
        """Drop rules still armed (``GET /_sim/webhooks/drop``)."""
        return self.state.webhook_drops()

    def clear_webhook_drops(self) -> None:
        """Disarm every drop rule (``DELETE /_sim/webhooks/drop``)."""
        self.state.clear_webhook_drops()

    def replay_webhook(
        self, index: int | None = None, times: int = 1, delivery_id: int | None = None
    ) -> list[int]:
        """Send the delivery at ``index`` of ``webhooks()`` (or ``delivery_id``) again
        ``times`` times, byte for byte (``POST /_sim/webhooks/replay``); the new ids."""
        return self.state.replay_webhook(times, index, delivery_id)

    def send_webhook(
        self,
        connector: str,
        data: Any,
        event: str = "connector_data_modified",
        sync_id: str | None = None,
    ) -> int:
        """Sign and send an event of one's own making (``POST /_sim/webhooks/send``),
        e.g. a ``connector_data_modified`` naming chosen ids; its delivery id."""
        return self.state.send_webhook(connector, event, data, sync_id)

    def reads(self) -> dict[str, dict[str, Any]]:
        """Data requests past the rate gate per connector: ``pages``, ``by_id`` and
        reads per ``model/id`` (``GET /_sim/reads``)."""
        return self.state.reads()


def webhook_policy(
    url: str | None,
    secret: str | None,
    encoding: str = "base64url",
    timeout_seconds: float = 10.0,
    retry_window_seconds: float = 60.0,
    retries: int = 4,
) -> WebhookPolicy | None:
    """The delivery policy for these options; None without a URL. Raises ``ValueError``."""
    if url is None:
        if secret is not None:
            raise ValueError("a webhook secret needs a webhook URL")
        return None
    return WebhookPolicy(
        url, secret or "", encoding, timeout_seconds, retry_window_seconds, retries
    )
