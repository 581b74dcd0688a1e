"""Leases: who may write a stream now, and fencing, so a holder that lost it writes nothing.

A pass claims its stream's lease (``stream:<sid>``, see ``stream_lease_name``); every
write of the pass renews it by token in the same transaction (``_fence``), so once a
lease was taken over, or dropped by ``reset``, the old holder's next write raises
LeaseLost and changes nothing. A lease nobody renewed for ``lease_seconds`` is free for
anyone. A lease also records the holder's host and pid, so a process restarted on the
same host frees its dead predecessor's leases at once (``pid_alive``, ``local_host``).
"""

from __future__ import annotations

import functools
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import bindparam, case, delete, func, select, update

from daemon.errors import LeaseLost
from daemon.models import LeaseInfo, StreamKey
from daemon.state.dialects import Backend
from daemon.state.schema import leases, streams
from daemon.state.sql import NOW, SID, StoreCore, Tx, stream_update

STREAM_LEASE_PREFIX = "stream:"


def stream_lease_name(sid: int) -> str:
    """The name of the lease a pass over stream ``sid`` holds."""
    return f"{STREAM_LEASE_PREFIX}{sid}"


def stream_lease_sid(name: str) -> int:
    """The stream id a stream lease's name holds."""
    return int(name.removeprefix(STREAM_LEASE_PREFIX))


def default_owner() -> str:
    """This process's name when none is configured: host name and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def local_host() -> str:
    """This host as a lease records it: the host name, plus the pid namespace where there
    is one (two containers with one host name, e.g. with host networking, differ)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/pidns:{namespace}"


def pid_alive(pid: int) -> bool:
    """True while a process with this pid runs here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


NAME = bindparam("p_name", type_=sa.Text)
TOKEN = bindparam("p_token", type_=sa.Text)
OWNER = bindparam("p_owner", type_=sa.Text)
EXPIRES = bindparam("p_expires", type_=sa.Double)
LIVE = leases.c.expires_at >= NOW
# Joins a stream's row to its lease's, in SQL: the same name as ``stream_lease_name``.
IS_STREAM_LEASE = leases.c.name == (
    sa.literal(STREAM_LEASE_PREFIX, sa.Text) + sa.cast(streams.c.sid, sa.Text)
)
# Renewals match the token alone: a token nobody replaced means nobody took the lease over
# (takers are serialised by the row lock), so a holder that was slow (a long Retry-After,
# a late heartbeat) keeps its lease; once another replica took it, the token differs and
# the old holder's next write fails.
RENEW = (
    update(leases).where(leases.c.name == NAME, leases.c.token == TOKEN).values(expires_at=EXPIRES)
)
DROP_LEASE = delete(leases).where(leases.c.name == NAME, leases.c.token == TOKEN)
# The operator's ``reset``: whoever holds the stream's lease is fenced out.
DROP_ANY_LEASE = delete(leases).where(leases.c.name == NAME)
_SELECT_DUE = select(streams.c.due_at).where(streams.c.sid == SID)
# A request newer than what the pass saw keeps the stream due at once (its trailing pass).
_SET_DUE = stream_update().values(
    due_at=case(
        (
            # Any other request time than the one the pass saw: requesters' clocks (another
            # replica, the `resync` command's host) need not agree with ours.
            func.coalesce(streams.c.requested_at, -1.0) != bindparam("p_seen", type_=sa.Double),
            streams.c.requested_at,
        ),
        else_=bindparam("p_due", type_=sa.Double),
    )
)
_STREAM_LEASES = select(
    streams.c.connector,
    streams.c.model,
    leases.c.owner,
    leases.c.acquired_at,
    leases.c.expires_at,
).select_from(streams.join(leases, IS_STREAM_LEASE))


class Lease:
    """A lease this store took: its token, and whether it is still known to be ours."""

    __slots__ = ("acquired_at", "confirmed", "key", "lost", "name", "token")

    def __init__(self, name: str, token: str, acquired_at: float, key: StreamKey | None) -> None:
        self.name = name
        self.token = token
        self.acquired_at = acquired_at
        self.key = key
        # Set by a heartbeat that found the lease gone: the holder's next write fails.
        self.lost = False
        # When the store last knew the lease was its own (monotonic): a check soon after
        # needs no round trip, since no one can take it before it expires.
        self.confirmed = time.monotonic()


def _no_check() -> None:
    pass


class _NotDue(Exception):
    """Raised inside a claim's transaction to roll the lease back."""


@dataclass(slots=True)
class Renewal:
    """One renewal of a held lease, sent with a write (``RENEW`` with ``params``); the
    write's transaction commits only after ``confirm`` saw the renewal's row count."""

    lease: Lease
    lost: LeaseLost
    lease_seconds: float
    sent_at: float = field(default_factory=time.monotonic)
    params: dict[str, object] = field(init=False)

    def __post_init__(self) -> None:
        now = time.time()
        self.params = {
            "p_name": self.lease.name,
            "p_token": self.lease.token,
            "p_expires": now + self.lease_seconds,
        }

    def confirm(self, renewed: int) -> None:
        """LeaseLost unless the renewal updated the lease's row (it is still ours)."""
        if renewed != 1:
            self.lease.lost = True
            raise self.lost
        self.lease.confirmed = self.sent_at


class LeaseFencing(StoreCore):
    """Taking, checking and giving back leases; the fence every write of a pass passes."""

    def __init__(
        self, backend: Backend, *, owner: str | None = None, lease_seconds: float = 30.0
    ) -> None:
        super().__init__(backend)
        self.owner = owner or default_owner()
        self.host = local_host()
        self.lease_seconds = lease_seconds
        self._leases: dict[str, Lease] = {}  # by name: the leases this store holds

    @functools.cached_property
    def _take_lease(self) -> sa.Insert:
        take = self.backend.insert(leases).values(
            name=NAME,
            owner=OWNER,
            token=TOKEN,
            acquired_at=NOW,
            expires_at=EXPIRES,
            host=bindparam("p_host", type_=sa.Text),
            pid=bindparam("p_pid", type_=sa.Integer),
        )
        # Only a lease nobody renewed in time is taken over: the upsert does nothing
        # (rowcount 0) while the holder's is live.
        return take.on_conflict_do_update(
            index_elements=[leases.c.name],
            set_={
                c: take.excluded[c]
                for c in ("owner", "token", "acquired_at", "expires_at", "host", "pid")
            },
            where=leases.c.expires_at < NOW,
        )

    def _lost(self, key: StreamKey) -> LeaseLost:
        return LeaseLost(
            f"{key}: lease lost (taken over, reset, or not renewed for {self.lease_seconds:g}s)"
        )

    def _fence(self, tx: Tx, sid: int, key: StreamKey) -> None:
        """Renew the stream's lease in ``tx``; raise LeaseLost if it is no longer ours."""
        self._fence_sent(tx, sid, key)()

    def _fence_sent(self, tx: Tx, sid: int, key: StreamKey) -> Callable[[], None]:
        """Send the renewal of the stream's lease in ``tx`` (on a cursor of its own);
        returns the check, which raises LeaseLost if it is no longer ours. In a pipeline
        (``Tx.pipeline``) the check runs once it ended, before the transaction commits:
        the writes sent after the renewal are then rolled back with it."""
        renewal = self._renewal(sid, key)
        if renewal is None:
            return _no_check  # not claimed here: an operator command, or a single-process test
        cursor = tx.fresh().run(RENEW, **renewal.params)

        def check() -> None:
            renewed = cursor.rowcount
            cursor.close()
            renewal.confirm(renewed)

        return check

    def _renewal(self, sid: int, key: StreamKey) -> Renewal | None:
        """The renewal of the stream's lease for a write about to be sent (None: this
        process holds none); LeaseLost at once if it is known lost."""
        lease = self._leases.get(stream_lease_name(sid))
        if lease is None:
            return None
        if lease.lost:
            # Stays lost until the pass releases it: no later write of it gets through.
            raise self._lost(key)
        return Renewal(lease, self._lost(key), self.lease_seconds)

    def _held(self, key: StreamKey) -> Lease | None:
        return next((held for held in list(self._leases.values()) if held.key == key), None)

    def check_lease(self, key: StreamKey) -> None:
        """Raise LeaseLost unless this store still holds the stream's lease (renewing it);
        nothing when it holds none. Before a send: a holder that lost its lease while
        paused must not put an older page after the new holder's newer one."""
        lease = self._held(key)
        if lease is None:
            return
        if lease.lost:
            raise self._lost(key)
        if time.monotonic() - lease.confirmed < self.lease_seconds / 2:
            # Renewed moments ago (the page's commit): no replica can have taken it over
            # since. (A ``reset`` in between may have dropped it: then the page committed
            # before the reset still goes out, and the pass stops at its next write.)
            return
        with self._tx("check lease") as tx:
            self._fence(tx, self._sid(tx, key), key)

    def claim(self, key: StreamKey, *, now: float | None = None, due_only: bool = False) -> bool:
        """Take the stream's lease for this process; False while another holder's lease
        is live (or, with ``due_only``, when the stream is not due). Holding it already:
        True. Every write of the stream checks the lease from then on (fencing)."""
        now = time.time() if now is None else now
        token = uuid.uuid4().hex
        try:
            with self._tx("claim stream") as tx:
                sid = self._sid(tx, key)
                name = stream_lease_name(sid)
                if self.holds(name):
                    return True
                if not self._take(tx, name, token, now):
                    return False
                if due_only:
                    due = tx.one(_SELECT_DUE, p_sid=sid)
                    if due is None or (due[0] is not None and due[0] > now):
                        raise _NotDue  # rolls the lease back
        except _NotDue:
            return False
        self._leases[name] = Lease(name, token, now, key)
        return True

    def claim_named(self, name: str, *, now: float | None = None) -> bool:
        """Take a fleet-wide lease that is not a stream's (``sync-watcher``)."""
        now = time.time() if now is None else now
        if self.holds(name):
            return True
        token = uuid.uuid4().hex
        with self._tx(f"claim {name}") as tx:
            if not self._take(tx, name, token, now):
                return False
        self._leases[name] = Lease(name, token, now, None)
        return True

    def holds(self, name: str) -> bool:
        """True while this store holds the named lease (as far as it knows)."""
        lease = self._leases.get(name)
        return lease is not None and not lease.lost

    def _take(self, tx: Tx, name: str, token: str, now: float) -> bool:
        cursor = tx.run(
            self._take_lease,
            p_name=name,
            p_owner=self.owner,
            p_token=token,
            p_now=now,
            p_expires=now + self.lease_seconds,
            p_host=self.host,
            p_pid=os.getpid(),
        )
        return bool(cursor.rowcount == 1)

    def release(
        self,
        key: StreamKey,
        *,
        next_due: float | None = None,
        seen_request: float | None = None,
    ) -> bool:
        """Give the stream's lease back, first setting when it is next due (unless a
        request newer than ``seen_request`` arrived: then it stays due). False when the
        lease was lost: another holder (or a ``reset``) decides the stream's due time then."""
        lease = self._held(key)
        if lease is None:
            return False
        self._leases.pop(lease.name, None)
        with self._tx("release stream") as tx:
            if tx.run(DROP_LEASE, p_name=lease.name, p_token=lease.token).rowcount != 1:
                return False
            if next_due is not None:
                seen = -1.0 if seen_request is None else seen_request
                sid = stream_lease_sid(lease.name)
                tx.run(_SET_DUE, p_sid=sid, p_due=next_due, p_seen=seen)
        return True

    def release_named(self, name: str) -> None:
        """Give a named lease back (shutdown, or the watcher stepping down)."""
        lease = self._leases.pop(name, None)
        if lease is not None:
            with self._tx(f"release {name}") as tx:
                tx.run(DROP_LEASE, p_name=lease.name, p_token=lease.token)

    def stream_leases(self) -> dict[StreamKey, LeaseInfo]:
        """Who holds which stream's lease (live or expired, as stored), for ``status``."""
        with self._tx("list leases", read=True) as tx:
            return {
                StreamKey(c, m): LeaseInfo(f"{c}/{m}", owner, acquired, expires)
                for c, m, owner, acquired, expires in tx.run(_STREAM_LEASES).fetchall()
            }
