"""One uvicorn server on its own thread and event loop: the base of both ops listeners.

uvicorn (h11) parses HTTP; this module adds what a port facing the internet needs
and uvicorn leaves out, through what its ``Config`` and ``Server`` accept (a protocol
class for ``http``, a ``Server`` subclass). The protocol subclass leans on uvicorn's
h11 connection (its ``cycle`` and ``conn``), so tests/integration/
test_ops_listener_limits.py pins each behaviour below over real sockets:

- a deadline for a request head: uvicorn closes an idle connection only after a
  response (keep-alive), so a client that connects and says nothing, or trickles
  a header, would hold its connection for ever;
- a bound on what is discarded of a body answered before it was read (413, 404):
  uvicorn would read and drop it to its end, however long;
- a cap on open connections, so a flood cannot take the file descriptors the
  daemon needs for Kafka and its store (an asyncio connection holds no thread,
  so the cap can be well above the few hundred idle connections an ingress keeps);
- no log line per malformed request: the owner gets a callback and throttles;
- no signal handlers: the daemon owns SIGTERM, SIGINT and SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from daemon.errors import ConfigError

# uvicorn's connection code logs a warning for each malformed request or
# unsupported upgrade; those belong to the owner's throttled counters. Only a
# failure inside our own app (a bug) is worth a line.
_QUIET = logging.getLogger("daemon.ops.http")
_QUIET.setLevel(logging.ERROR)

# Room for the few hundred idle connections a proxy or ingress keeps, and far
# below a process's descriptor limit in a container.
MAX_CONNECTIONS = 1024
BACKLOG = 2048
# An HTTP/1.1 client reuses a connection within seconds or not at all.
KEEP_ALIVE_SECONDS = 5.0
# Request line and headers together; a Bindbee delivery needs a few hundred bytes.
MAX_HEAD_BYTES = 16 * 1024
_START_TIMEOUT = 30.0
# Of a body answered unread: enough that a client sending a normal body finishes
# and reads the answer (closing with its bytes unread would reset the connection
# and lose the answer), not so much that a client can make us read without end.
DRAIN_BYTES = 4 << 20


class _Protocol(H11Protocol):
    """uvicorn's h11 connection with a head deadline, a connection cap, and no logs.

    Subclassed per server by ``_protocol_class``, which sets the class attributes.
    """

    max_connections = MAX_CONNECTIONS
    head_timeout = 10.0
    drain_bytes = DRAIN_BYTES
    on_malformed: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = _QUIET
        self.access_log = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._drained = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.max_connections:
            transport.abort()  # type: ignore[attr-defined]
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and self.conn.their_state is h11.SEND_BODY:
            # The answer is out and the rest of this body is only being discarded.
            self._drained += len(data)
            if self._drained > self.drain_bytes:
                self.transport.close()
                return
        super().data_received(data)
        if self.cycle is not cycle:
            # A whole request head arrived: the app's own read deadline takes over.
            self._disarm()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        # Until the next request head arrives (or the rest of a body refused with
        # 413 has been discarded), the connection lives on the head deadline.
        if not self.transport.is_closing() and self.cycle is cycle:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self.on_malformed is not None:
            self.on_malformed()
        super().send_400_response(msg)

    def _arm(self) -> None:
        self._disarm()
        self._drained = 0
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def _protocol_class(
    name: str,
    max_connections: int,
    head_timeout: float,
    drain_bytes: int,
    on_malformed: Callable[[], None] | None,
) -> type[_Protocol]:
    # uvicorn builds the protocol itself from (config, server_state, app_state), so
    # per-server settings travel as class attributes of a subclass.
    attributes = {
        "max_connections": max_connections,
        "head_timeout": head_timeout,
        "drain_bytes": drain_bytes,
        "on_malformed": staticmethod(on_malformed) if on_malformed else None,
    }
    return type(f"_{name}_Protocol", (_Protocol,), attributes)


class _Server(uvicorn.Server):
    """Tells the starting thread when it serves (or failed to), and never takes signals."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await super().startup(sockets)
        finally:
            self._ready.set()

    async def main_loop(self) -> None:
        # uvicorn's loop sleeps 0.1 s between ticks; ``exit`` cuts the sleep short,
        # so a stop costs the shutdown itself, not a polling interval.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._wake.wait()

    def exit(self) -> None:
        """Ask the server to stop, from any thread."""
        self.should_exit = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(self._wake.set)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, *, reuse_address: bool) -> socket.socket:
    """A listening socket; binding here makes the port known and queueing at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so,
    # and without it a small answer can wait for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class ServerThread:
    """Serves an ASGI ``app`` with uvicorn on a thread of its own, with its own loop.

    ``start`` binds (a ConfigError naming ``field`` if it cannot), then returns once
    uvicorn serves; ``stop`` closes the listener and every connection, waits at most
    ``grace`` seconds for requests in flight, and joins the thread.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        host: str,
        port: int,
        *,
        name: str,
        field: str,
        head_timeout: float,
        max_connections: int = MAX_CONNECTIONS,
        drain_bytes: int = DRAIN_BYTES,
        on_malformed: Callable[[], None] | None = None,
        reuse_address: bool = True,
        grace: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self._app = app
        self._name = name
        self._field = field
        self._grace = grace
        self._protocol = _protocol_class(
            name, max_connections, head_timeout, drain_bytes, on_malformed
        )
        self._reuse_address = reuse_address
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind, then serve on the thread; returns once uvicorn answers (no-op if running)."""
        if self._server is not None:
            return
        try:
            sock = bind(self.host, self.port, reuse_address=self._reuse_address)
        except OSError as exc:
            raise ConfigError(
                self._field, f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        server = _Server(self._config(), ready)

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()
                ready.set()  # also when uvicorn failed before its startup

        thread = threading.Thread(target=serve, name=f"{self._name}-http", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        # Generous: binding is done, so only a wedged thread could take this long.
        ready.wait(_START_TIMEOUT)
        if not server.started:
            self.stop()
            raise ConfigError(self._field, f"the {self._name} listener did not start")

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self._app,
            http=self._protocol,
            interface="asgi3",
            loop="asyncio",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            # The remote address is the peer's; a forwarded header is anyone's to write.
            proxy_headers=False,
            server_header=False,
            # None: an idle connection costs a few KiB, and the cap on connections
            # (not on requests) is what keeps a flood from starving the daemon.
            limit_concurrency=None,
            backlog=BACKLOG,
            timeout_keep_alive=int(KEEP_ALIVE_SECONDS),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            timeout_graceful_shutdown=max(1, round(self._grace)),
        )

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.exit()
        thread.join(self._grace + 5.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5.0)  # a daemon thread: a wedged one cannot hold the exit
