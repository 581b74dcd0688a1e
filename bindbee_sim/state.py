"""Everything the simulator knows, behind one lock.

The HTTP handlers (event-loop thread), ``SimServer`` (the test's thread) and
the sync timer thread all go through ``SimState``; every method takes the
lock, and nothing holds it across an ``await`` or a network call (webhooks
are sent from their own thread).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Mapping
from typing import Any

from bindbee_sim.connectors import connectors_page
from bindbee_sim.data import Dataset
from bindbee_sim.faults import Fault, FaultBook
from bindbee_sim.ids import UuidV7Source
from bindbee_sim.ratelimit import FixedWindowLimiter, RateDecision
from bindbee_sim.schema import MODELS
from bindbee_sim.staging import unchecked_record
from bindbee_sim.store import Conflict, ModelStore
from bindbee_sim.syncs import Refused, SyncCycle, SyncSettings
from bindbee_sim.times import MonotonicUtc
from bindbee_sim.webhooks import WebhookPolicy, WebhookSender

UNKNOWN_CONNECTOR = "_unknown"
"""Stats key for data requests whose connector token is missing or unknown."""

ORG_STATS_KEY = "_org"
"""Stats key for ``GET /connectors`` requests (API key only, no connector)."""

__all__ = ["ORG_STATS_KEY", "UNKNOWN_CONNECTOR", "Conflict", "NotFound", "Refused", "SimState"]


class NotFound(LookupError):
    """No such connector, model or record."""


class SimState:
    """Connectors' data, faults, rate windows, stats and switches."""

    def __init__(
        self,
        connectors: Mapping[str, str],
        enrollments: int,
        seed: int,
        api_key: str,
        rate_limit: int = 200,
        rate_window_seconds: float = 60.0,
        honor_modified_after: bool = False,
        sync_mode: str = "live",
        sync_interval_seconds: float = 0.0,
        sync_duration_seconds: float = 1.0,
        sync_touches_all: bool = False,
        webhook: WebhookPolicy | None = None,
        org_name: str = "Simulated Org",
    ) -> None:
        if not connectors:
            raise ValueError("at least one connector is needed")
        if len(set(connectors.values())) != len(connectors):
            raise ValueError("connector tokens must be distinct")
        if enrollments < 0:
            raise ValueError("enrollments must be >= 0")
        if rate_window_seconds <= 0:
            raise ValueError("rate_window_seconds must be positive")
        settings = SyncSettings(
            sync_mode, sync_interval_seconds, sync_duration_seconds, sync_touches_all
        )
        for name in connectors:
            _check_name(name)
        self.lock = threading.RLock()
        self.api_key = api_key
        self.seed = seed
        self.enrollments = enrollments
        self.honor_modified_after = honor_modified_after
        self.datasets = {
            name: Dataset(name, token, seed, enrollments) for name, token in connectors.items()
        }
        self._by_token = {ds.token: ds for ds in self.datasets.values()}
        self.limiter = FixedWindowLimiter(rate_limit, rate_window_seconds)
        self.faults = FaultBook()
        self._stats: dict[str, dict[str, int]] = {}
        self._reads: dict[str, dict[str, Any]] = {}
        self.clock = MonotonicUtc()
        self.new_ids = UuidV7Source()
        self.webhooks = None if webhook is None else WebhookSender(webhook, self.clock.now_us)
        self.syncs = SyncCycle(
            self.lock,
            self.datasets,
            settings,
            self.clock,
            self.webhooks,
            org_name=org_name,
            seed=seed,
        )
        if honor_modified_after:
            self._build_modified_indexes()

    @property
    def sync_settings(self) -> SyncSettings:
        """The sync mode, interval, duration and touch-all switch."""
        return self.syncs.settings

    def close(self) -> None:
        """Stop the sync timer and webhook threads (the state stays readable)."""
        self.syncs.close()
        if self.webhooks is not None:
            self.webhooks.close()

    def _build_modified_indexes(self) -> None:
        # Sorting a million timestamps takes a moment: do it before the first
        # incremental poll rather than during it.
        for ds in self.datasets.values():
            for table in ds.tables.values():
                table.mod_index()

    # ---- request path ----------------------------------------------------------

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries our API key as a Bearer token."""
        if not authorization:
            return False
        scheme, _, credential = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self.api_key.encode()
        )

    def dataset_for_token(self, token: str | None) -> Dataset | None:
        """The dataset a connector token selects, or None."""
        return None if token is None else self._by_token.get(token)

    def attribution(self, token: str | None) -> str:
        """The stats key of a request carrying ``token``."""
        ds = self.dataset_for_token(token)
        return UNKNOWN_CONNECTOR if ds is None else ds.name

    def admit(self, token: str) -> RateDecision | None:
        """Count a request against the token's rate window (None: limiting is off)."""
        with self.lock:
            return self.limiter.hit(token)

    def take_fault(self, connector: str, model: str, is_page: bool) -> Fault | None:
        """Consume the fault this request triggers, if any."""
        with self.lock:
            return self.faults.take(connector, model, is_page)

    def take_connectors_list_fault(self) -> Fault | None:
        """Consume the fault a ``GET /connectors`` request triggers, if any."""
        with self.lock:
            return self.faults.take_connectors_list()

    def record_status(self, who: str, status: int) -> None:
        """Count one data response."""
        with self.lock:
            per = self._stats.setdefault(who, {})
            key = str(status)
            per[key] = per.get(key, 0) + 1

    def record_read(self, connector: str, model: str, record_id: str | None) -> None:
        """Count one data request past the rate gate: a page (``record_id`` None) or a
        read by id."""
        with self.lock:
            per = self._reads.get(connector)
            if per is None:
                per = self._reads[connector] = {"pages": 0, "by_id": 0, "ids": {}}
            if record_id is None:
                per["pages"] += 1
                return
            per["by_id"] += 1
            key = f"{model}/{record_id}"
            per["ids"][key] = per["ids"].get(key, 0) + 1

    # ---- control -----------------------------------------------------------------

    def reads(self) -> dict[str, dict[str, Any]]:
        """Data requests that passed the rate gate, per connector name: ``pages``,
        ``by_id`` and, per ``model/id``, how often it was read by id (404s included)."""
        with self.lock:
            return {who: {**per, "ids": dict(per["ids"])} for who, per in self._reads.items()}

    def stats(self) -> dict[str, dict[str, int]]:
        """Data responses so far: ``{connector name: {status code: count}}``."""
        with self.lock:
            return {who: dict(per) for who, per in self._stats.items()}

    def add_fault(self, description: Mapping[str, Any]) -> dict[str, Any]:
        """Arm a fault (see ``Fault``); raises ``ValueError`` when it is invalid."""
        fault = Fault.from_mapping(description, frozenset(self.datasets))
        with self.lock:
            self.faults.add(fault)
        return fault.as_dict()

    def clear_faults(self) -> None:
        """Disarm every fault."""
        with self.lock:
            self.faults.clear()

    def pending_faults(self) -> list[dict[str, Any]]:
        """Faults still armed."""
        with self.lock:
            return self.faults.pending()

    def configure(
        self,
        rate_limit: int | None = None,
        rate_window_seconds: float | None = None,
        honor_modified_after: bool | None = None,
        sync: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change run-time switches (a rate change restarts every window); returns them all.

        ``sync`` may hold ``sync_mode``, ``sync_interval_seconds``,
        ``sync_duration_seconds`` and ``sync_touches_all``.
        """
        with self.lock:
            if sync:
                self._configure_syncs(sync)
            if rate_limit is not None or rate_window_seconds is not None:
                self.limiter.configure(
                    self.limiter.limit if rate_limit is None else rate_limit,
                    self.limiter.window_seconds
                    if rate_window_seconds is None
                    else rate_window_seconds,
                )
            if honor_modified_after is not None:
                self.honor_modified_after = honor_modified_after
                if honor_modified_after:
                    self._build_modified_indexes()
            return {
                "rate_limit": self.limiter.limit,
                "rate_window_seconds": self.limiter.window_seconds,
                "honor_modified_after": self.honor_modified_after,
                "sync_mode": self.sync_settings.mode,
                "sync_interval_seconds": self.sync_settings.interval_seconds,
                "sync_duration_seconds": self.sync_settings.duration_seconds,
                "sync_touches_all": self.sync_settings.touches_all,
            }

    def _configure_syncs(self, changes: Mapping[str, Any]) -> None:
        current = self.sync_settings
        fields = {
            "sync_mode": "mode",
            "sync_interval_seconds": "interval_seconds",
            "sync_duration_seconds": "duration_seconds",
            "sync_touches_all": "touches_all",
        }
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown sync settings: {unknown}")
        updated = SyncSettings(
            **{attr: changes.get(key, getattr(current, attr)) for key, attr in fields.items()}
        )
        interval_changed = updated.interval_seconds != current.interval_seconds
        for attr in fields.values():
            setattr(current, attr, getattr(updated, attr))
        if interval_changed:
            self.syncs.rearm()

    def reset(self) -> None:
        """Seed data and connectors back (run-time ones removed), nothing staged, faults,
        stats, rate windows, sync history and the webhook log cleared."""
        with self.lock:
            for name in [n for n, ds in self.datasets.items() if ds.connector.added_at_run_time]:
                del self.datasets[name]
            self._by_token = {ds.token: ds for ds in self.datasets.values()}
            for ds in self.datasets.values():
                ds.reset()
            self.faults.clear()
            self._stats.clear()
            self._reads.clear()
            self.limiter.reset()
            self.syncs.reset()
            if self.webhooks is not None:
                self.webhooks.reset()

    # ---- records -------------------------------------------------------------------
    #
    # In live mode an edit is visible at once and counts as an instant sync; in
    # scheduled mode it is staged for the connector's next sync and the answer
    # is the staged copy.

    def _dataset(self, connector: str) -> Dataset:
        ds = self.datasets.get(connector)
        if ds is None:
            raise NotFound(f"unknown connector {connector!r}")
        return ds

    def _store(self, connector: str, model: str) -> ModelStore:
        ds = self._dataset(connector)
        if model not in MODELS:
            raise NotFound(f"unknown model {model!r}")
        return ds.stores[model]

    @property
    def _live(self) -> bool:
        return self.sync_settings.mode == "live"

    def create(
        self, connector: str, model: str, fields: Mapping[str, Any], unchecked: bool = False
    ) -> dict[str, Any]:
        """Add a record; id minted unless given, ``modified_at`` now unless given.

        ``unchecked`` stores ``fields`` exactly as given (plus an id), valid or not.
        """
        with self.lock:
            store = self._store(connector, model)
            new_id, now = self.new_ids.new(), self.clock.now_us()
            if not self._live:
                staging = self.datasets[connector].staging
                return staging.create(model, fields, new_id, now, unchecked)
            if unchecked:
                record = unchecked_record(fields, new_id)
                if store.locate(record["id"]) is not None:
                    raise Conflict(record["id"])
                store.put(record, unchecked=True)
            else:
                record = store.create(fields, new_id, now)
            self.syncs.instant(connector, [record["id"]])
            return dict(record)

    def update(
        self, connector: str, model: str, record_id: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge fields into a record and bump ``modified_at`` unless given."""
        with self.lock:
            store = self._store(connector, model)
            now = self.clock.now_us()
            if self._live:
                record = store.update(record_id, fields, now)
            else:
                record = self.datasets[connector].staging.update(model, record_id, fields, now)
            if record is None:
                raise NotFound(f"no {model} with id {record_id}")
            if self._live:
                self.syncs.instant(connector, [record_id])
            return record

    def delete(self, connector: str, model: str, record_id: str) -> None:
        """Remove a record."""
        with self.lock:
            store = self._store(connector, model)
            if self._live:
                found = store.delete(record_id)
            else:
                found = self.datasets[connector].staging.delete(model, record_id)
            if not found:
                raise NotFound(f"no {model} with id {record_id}")
            if self._live:
                self.syncs.instant(connector, [record_id])

    def get(
        self, connector: str, model: str, record_id: str, staged: bool = False
    ) -> dict[str, Any] | None:
        """The complete record the API serves (``staged``: as the next sync will leave it)."""
        with self.lock:
            store = self._store(connector, model)
            if staged:
                return self.datasets[connector].staging.record(model, record_id)
            entry = store.locate(record_id)
            return None if entry is None else store.full_record(entry)

    def records(self, connector: str, model: str) -> list[dict[str, Any]]:
        """Every current record in full, in id order."""
        with self.lock:
            store = self._store(connector, model)
            return [store.full_record(entry) for entry in store.walk()]

    def ids(self, connector: str, model: str) -> list[str]:
        """Every current id, in order."""
        with self.lock:
            store = self._store(connector, model)
            return [store.entry_id(entry) for entry in store.walk()]

    # ---- connectors and syncs -----------------------------------------------------------

    def connectors_page(
        self,
        page_size: int,
        after: str | None,
        is_active: bool | None = None,
        token: str | None = None,
        origin_id: str | None = None,
    ) -> dict[str, Any]:
        """The ``GET /connectors`` body: connectors by id, filtered and paged."""
        with self.lock:
            return connectors_page(
                (ds.connector for ds in self.datasets.values()),
                page_size,
                after,
                is_active,
                token,
                origin_id,
            )

    def connector(self, name: str) -> dict[str, Any]:
        """One connector as ``GET /connectors`` lists it."""
        with self.lock:
            return self._dataset(name).connector.listing()

    def set_connector(
        self, name: str, status: str | None = None, is_active: bool | None = None
    ) -> dict[str, Any]:
        """Change a connector's link ``status`` or ``is_active``; returns its listing."""
        with self.lock:
            conn = self._dataset(name).connector
            if is_active is not None and not isinstance(is_active, bool):
                raise ValueError("is_active must be a boolean")
            if status is not None:
                conn.set_status(status, self.clock.now_us())
            if is_active is not None:
                conn.is_active = is_active
            return conn.listing()

    def add_connector(
        self, name: str, token: str, enrollments: int | None = None
    ) -> dict[str, Any]:
        """Link a connector at run time, its seed data already synced; returns its listing.

        Raises ``ValueError`` for a bad name or size, ``Refused`` when the name or the
        token is taken. ``reset`` removes it again.
        """
        _check_name(name)
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string")
        size = self.enrollments if enrollments is None else enrollments
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("enrollments must be an integer >= 0")
        with self.lock:
            self._refuse_taken(name, token)
        ds = Dataset(name, token, self.seed, size)  # outside the lock: may take a while
        ds.connector.added_at_run_time = True
        with self.lock:
            self._refuse_taken(name, token)
            self.datasets[name] = ds
            self._by_token[token] = ds
            if self.honor_modified_after:
                for table in ds.tables.values():
                    table.mod_index()
            self.syncs.arm(name)
            return ds.connector.listing()

    def _refuse_taken(self, name: str, token: str) -> None:
        if name in self.datasets:
            raise Refused(f"a connector named {name!r} exists")
        if token in self._by_token:
            raise Refused("that connector token is taken")

    def start_sync(self, connector: str, fail: bool = False) -> dict[str, Any]:
        """Start a manual sync now (``fail``: it ends Failed, applying nothing)."""
        with self.lock:
            self._dataset(connector)
            return self.syncs.start(connector, fail=fail).as_dict()

    def wait_sync(self, sync_id: str, timeout: float) -> dict[str, Any]:
        """Block until a sync has ended or ``timeout`` passed; returns its state."""
        try:
            return self.syncs.wait(sync_id, timeout).as_dict()
        except KeyError:
            raise NotFound(f"no sync with id {sync_id}") from None

    def sync_history(self) -> list[dict[str, Any]]:
        """Syncs so far (the last 1000), oldest first."""
        with self.lock:
            return self.syncs.history()

    def staged(self) -> dict[str, int]:
        """Staged changes per connector name (records a sync would write)."""
        with self.lock:
            return {name: len(ds.staging) for name, ds in self.datasets.items()}

    def webhook_log(self) -> list[dict[str, Any]]:
        """Every webhook delivery attempt so far (empty without a webhook URL)."""
        return [] if self.webhooks is None else self.webhooks.log()

    def _sender(self) -> WebhookSender:
        if self.webhooks is None:
            raise Refused("no webhook URL is configured")
        return self.webhooks

    def drop_webhooks(
        self, count: int = 1, event: str | None = None, connector: str | None = None
    ) -> list[dict[str, Any]]:
        """Lose the next ``count`` deliveries of ``event`` for ``connector`` (None: any);
        returns the armed rules."""
        sender = self._sender()
        if connector is not None:
            with self.lock:
                self._dataset(connector)
        sender.drop(count, event, connector)
        return sender.drops()

    def webhook_drops(self) -> list[dict[str, Any]]:
        """Drop rules still armed."""
        return [] if self.webhooks is None else self.webhooks.drops()

    def clear_webhook_drops(self) -> None:
        """Disarm every drop rule."""
        if self.webhooks is not None:
            self.webhooks.clear_drops()

    def replay_webhook(
        self, times: int = 1, index: int | None = None, delivery_id: int | None = None
    ) -> list[int]:
        """Send a logged delivery again, byte for byte, ``times`` times; the new ids."""
        try:
            return self._sender().replay(times, index=index, delivery_id=delivery_id)
        except LookupError as exc:
            raise NotFound(str(exc)) from None

    def send_webhook(
        self, connector: str, event: str, data: Any, sync_id: str | None = None
    ) -> int:
        """Send an event of one's own making for ``connector`` (e.g. a
        ``connector_data_modified`` naming chosen ids); returns its delivery id."""
        if not isinstance(event, str) or not event:
            raise ValueError("event must be a non-empty string")
        with self.lock:
            self._dataset(connector)
            return self.syncs.send_event(connector, event, data, sync_id)


def _check_name(name: object) -> None:
    # Names appear in /_sim paths and in NAME:TOKEN lists.
    if not isinstance(name, str) or not name or any(c in name for c in "/:,? #"):
        raise ValueError(
            f"connector name must be a non-empty string without / : , ? # or spaces, got {name!r}"
        )
