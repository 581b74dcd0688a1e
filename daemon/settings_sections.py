"""The configuration's sections, one small typed class each, with their defaults and checks.

None of them reads the environment: ``settings`` (the root ``Settings``, connectors'
``token_env`` and the loaders) is the one module that does.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

LMS_MODELS = ("users", "courses", "contents", "enrollments", "completions")
_TOPIC_PLACEHOLDERS = {"model", "connector"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitSettings(_Section):
    requests: int = Field(200, gt=0)
    per_seconds: float = Field(60.0, gt=0)


class DiscoverFilter(_Section):
    """Which listed connectors discovery follows; every condition must hold."""

    integration_slug: tuple[str, ...] = ()  # empty: any
    is_test_connector: bool | None = None  # None: both
    origin_id: str = Field("*", min_length=1)  # fnmatch glob on end_user.origin_id


class BindbeeSettings(_Section):
    base_url: str = "https://api.bindbee.dev"
    api_key: SecretStr
    page_size: int = Field(100, ge=1, le=100)
    timeout_seconds: float = Field(30.0, gt=0)
    rate_limit: RateLimitSettings = RateLimitSettings()
    max_attempts: int = Field(6, ge=1, le=50)
    # Requests of one connector in flight at once (its own slots: one connector's slow
    # answers never hold back another's). A pass has one in flight; 4 keep 200/min flowing
    # up to ~1.2 s per request.
    connections_per_connector: int = Field(4, ge=1, le=64)
    backoff_base_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(30.0, gt=0)
    # The sync watcher reads GET /connectors this often (API key only, no data budget);
    # 0: only when a webhook hints at a sync (and once at start).
    sync_check_interval_seconds: float = Field(60.0, ge=0)
    # Reads of the connectors list are at least this far apart, however many hints arrive.
    sync_check_min_gap_seconds: float = Field(5.0, ge=0)
    # Take the connectors (and their tokens) from the connectors list instead of config.
    discover_connectors: bool = False
    discover_filter: DiscoverFilter = DiscoverFilter()
    # A walk asked for a sync first waits up to this long for that sync's hinted ids
    # (``connector_data_modified``), reads them by id, then walks: hinted changes first.
    hint_grace_seconds: float = Field(3.0, ge=0, le=60)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


DEFAULT_POLL_INTERVAL = {"sync": 86400.0, "interval": 300.0}
AUTO_MAX_SPACING = 7
"""``full_scan_every_syncs: auto`` spaces walks at most this many syncs apart."""


class ModelSettings(_Section):
    # sync: a full scan after each Bindbee sync of the connector (the sync watcher), and
    # every poll_interval_seconds as a safety net; interval: every poll_interval_seconds.
    trigger: Literal["sync", "interval"] = "sync"
    # Default by trigger (DEFAULT_POLL_INTERVAL): 86400 for sync, 300 for interval.
    poll_interval_seconds: float = Field(None, gt=0, validate_default=False)  # type: ignore[assignment]
    full_scan_interval_seconds: float = Field(86400.0, gt=0)
    incremental_param: str | None = "modified_after"
    lookback_seconds: float = Field(300.0, ge=0)
    params: dict[str, str | int | float | bool] = {}
    ignore_fields: tuple[str, ...] = ("modified_at",)
    initial_sync: Literal["emit", "baseline"] = "emit"
    max_delete_fraction: float = Field(0.5, ge=0, le=1)
    emit_tombstones: bool = False
    # trigger: sync. 1: walk every sync (hinted ids are read first); N: walk when N syncs
    # completed since the last walk, the others get only their hinted reads; auto: every
    # sync until walks stop finding changes the hints missed, then doubling up to 7.
    full_scan_every_syncs: int | Literal["auto"] = Field(1)

    @field_validator("full_scan_every_syncs")
    @classmethod
    def _every(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1000:
            raise ValueError("must be an integer from 1 to 1000, or auto")
        return value

    @model_validator(mode="after")
    def _default_interval(self) -> ModelSettings:
        if self.poll_interval_seconds is None:
            default = DEFAULT_POLL_INTERVAL[self.trigger]
            if self.trigger == "sync":
                # The safety net must not cancel the spacing: N syncs (about daily), or
                # the widest auto spacing.
                every = self.full_scan_every_syncs
                default *= AUTO_MAX_SPACING if every == "auto" else int(every)
            object.__setattr__(self, "poll_interval_seconds", default)
        return self


class KafkaSettings(_Section):
    bootstrap_servers: str = "localhost:9092"
    topic_template: str = "bindbee.lms.{model}"
    client_id: str = "lms-changefeed"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    compression_type: Literal["gzip", "lz4", "snappy", "zstd", "none"] = "lz4"
    create_topics: bool = True
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)
    request_timeout_ms: int = Field(30000, gt=0)
    delivery_timeout_ms: int = Field(60000, gt=0)
    linger_ms: int = Field(5, ge=0)
    # Events name their JSON Schema in `dataschema`: a URN by default, or {base}/{file}
    # for schemas served from here (docs/schemas/ holds the files).
    schema_base_uri: str | None = None
    # Items of a page the daemon cannot diff (no id, unreadable modified_at, ...) go here
    # as bindbee.lms.{model}.rejected CloudEvents, once per distinct content.
    dead_letter_topic: str = Field("bindbee.lms.deadletter", min_length=1)
    # After every completed scan, a bindbee.lms.{model}.scan_completed CloudEvent here,
    # keyed by stream: what the scan covered, up to which offsets of the data topic.
    control_topic: str = Field("bindbee.lms.control", min_length=1)
    scan_markers: bool = True

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("must name at least one host:port")
        return ",".join(servers)

    @field_validator("schema_base_uri")
    @classmethod
    def _schema_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "://" not in value and not value.startswith("urn:"):
            raise ValueError("must be an absolute URI (https://... or urn:...)")
        return value.rstrip("/")

    @field_validator("topic_template")
    @classmethod
    def _template(cls, value: str) -> str:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = names - _TOPIC_PLACEHOLDERS
        if unknown or "" in names:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; allowed: {{model}}, {{connector}}"
            )
        return value

    @model_validator(mode="after")
    def _delivery_covers_request(self) -> KafkaSettings:
        # kafka-python refuses this only when a producer is built: catch it at start-up.
        floor = self.linger_ms + self.request_timeout_ms
        if self.delivery_timeout_ms < floor:
            raise ValueError(
                f"delivery_timeout_ms: must be at least linger_ms + request_timeout_ms ({floor})"
            )
        return self

    def topic_for(self, connector: str, model: str) -> str:
        """The topic a stream publishes to."""
        return self.topic_template.format(connector=connector, model=model)


class StateSettings(_Section):
    path: Path = Path("./data/changefeed.db")
    # postgresql://user:pass@host/db: shared state for several replicas instead of SQLite.
    url: SecretStr | None = None
    # run/poll apply pending schema migrations at start (under a lock); off: `migrate` does.
    auto_migrate: bool = True
    # A stream's lease (PostgreSQL: replicas share the streams) is free for any replica
    # once its holder has not renewed it for this long; the holder renews every third.
    lease_seconds: float = Field(30.0, ge=1.0, le=3600.0)
    # Database connections per process (PostgreSQL): workers share them, they never get
    # one each. Keep replicas x pool_size below the server's max_connections.
    pool_size: int = Field(5, ge=1, le=50)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// URL")
        return value

    def location(self) -> str:
        """Where the store is, for people: the SQLite path, or the PostgreSQL server and
        database (never the user, password or query of ``url``)."""
        if self.url is None:
            return str(self.path)
        parts = urlsplit(self.url.get_secret_value())
        try:
            host = parts.hostname or "localhost"
            port = parts.port or 5432
        except ValueError:  # a port that is not a number: say no more than the scheme
            return "PostgreSQL (state.url)"
        database = parts.path.lstrip("/") or "(default database)"
        return f"PostgreSQL {host}:{port}/{database}"


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console", "auto"] = "auto"
    progress_every_pages: int = Field(50, ge=1)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class HttpSettings(_Section):
    host: str = "0.0.0.0"  # probes reach the pod from outside
    port: int = Field(9102, ge=0, le=65535)
    enabled: bool = True


class WebhookSettings(_Section):
    """Bindbee's webhooks, received on their own listener: it faces the internet, the
    ops port (/metrics) must not. A delivery is only a hint to read the connectors list."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = Field(9103, ge=0, le=65535)
    path: str = Field("/webhooks/bindbee", pattern=r"^/")
    secret: SecretStr | None = None
    signature_encodings: tuple[Literal["base64url", "base64", "hex"], ...] = Field(
        ("base64url", "base64", "hex"), min_length=1
    )
    # At most one hint per connector this often; later ones are answered 200, coalesced.
    hint_interval_seconds: float = Field(5.0, ge=0)
    read_timeout_seconds: float = Field(10.0, gt=0, le=60)
    max_body_bytes: int = Field(1 << 20, ge=1024, le=16 << 20)
    # A connector_data_modified listing more ids than this is not read id by id: the
    # sync is walked instead (nothing is truncated). 10,000 ids fit ~400 KB of body.
    max_hint_ids: int = Field(10_000, ge=1, le=100_000)
    # Hints are kept this long at most (a hint is pruned sooner once every stream of its
    # connector read it and walked past it); a replay after that is read again.
    hint_retention_seconds: float = Field(35 * 86400.0, gt=0)

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> WebhookSettings:
        if self.enabled and (self.secret is None or not self.secret.get_secret_value()):
            raise ValueError(
                "secret: required when webhook.enabled (set CHANGEFEED_WEBHOOK__SECRET)"
            )
        return self


class SchedulerSettings(_Section):
    # Passes running at once in this process; unset: one per stream, at most 32.
    max_workers: int | None = Field(None, ge=1, le=1000)
    # How often this process looks for due streams in the state store (a request from
    # the sync watcher, a webhook or `resync` wakes it at once).
    claim_interval_seconds: float = Field(1.0, gt=0, le=60)
    # This process's name in leases, logs, metrics and `status`; unset: host name + pid.
    replica_id: str | None = Field(None, min_length=1, max_length=200)
    jitter_seconds: float = Field(5.0, ge=0)
    shutdown_timeout_seconds: float = Field(25.0, gt=0)
    stuck_scan_seconds: float = Field(3600.0, gt=0)
    fatal_backoff_seconds: float = Field(900.0, gt=0)
    retry_backoff_max_seconds: float = Field(300.0, gt=0)
