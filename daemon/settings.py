"""Typed, frozen configuration: YAML file plus ``CHANGEFEED_*`` environment (env wins).

This is the only module that reads the environment (``CHANGEFEED_CONFIG``, the
``CHANGEFEED_*`` variables, connectors' ``token_env``): other modules take their values
from ``load_settings`` (the whole daemon) or ``load_kafka_settings`` (``tail``, ``schema``:
the ``kafka`` section only). How a refusal is worded: ``settings_errors``.

Over 400 lines because it holds one small typed class per section of the file: the whole
configuration, its defaults and its checks read in one place.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from daemon.errors import ConfigError
from daemon.settings_errors import CONFIG_ENV, YamlFile, describe, yaml_path

__all__ = ["CONFIG_ENV", "LMS_MODELS", "Settings", "load_kafka_settings", "load_settings"]

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


class ConnectorSettings(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    token: SecretStr | None = None
    token_env: str | None = None
    poll_interval_seconds: dict[str, float] = {}
    # Set for discovered connectors only (never from a config file): Bindbee's connector
    # id, stable where the display name (from end_user.origin_id) may change, so it is
    # the stream's key in the store.
    _bindbee_id: str | None = PrivateAttr(None)

    @classmethod
    def discovered(cls, name: str, token: SecretStr, bindbee_id: str) -> ConnectorSettings:
        """A connector found in Bindbee's connectors list."""
        connector = cls(name=name, token=token)
        connector._bindbee_id = bindbee_id
        return connector

    @property
    def bindbee_id(self) -> str | None:
        """Bindbee's id of a discovered connector (None for configured ones)."""
        return self._bindbee_id

    @property
    def key(self) -> str:
        """The connector's identity in the state store (``StreamKey.connector``)."""
        return self._bindbee_id or self.name

    @model_validator(mode="after")
    def _resolve_token(self) -> ConnectorSettings:
        if self.token is None and self.token_env:
            value = os.environ.get(self.token_env)
            if value:
                object.__setattr__(self, "token", SecretStr(value))
        if self.token is None or not self.token.get_secret_value():
            if self.token_env:
                raise ValueError(
                    f"connector {self.name!r} has no token: set the environment variable "
                    f"{self.token_env} (its token_env); it is unset or empty"
                )
            raise ValueError(
                f"connector {self.name!r} has no token: give token, or token_env naming "
                "the environment variable that holds it"
            )
        for interval in self.poll_interval_seconds.values():
            if interval <= 0:
                raise ValueError("poll_interval_seconds overrides must be > 0")
        return self


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


class _FileAndEnv(BaseSettings):
    """Arguments first, then ``CHANGEFEED_*`` (``__`` nests), then the YAML file."""

    model_config = SettingsConfigDict(
        env_prefix="CHANGEFEED_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlFile(settings_cls))


class Settings(_FileAndEnv):
    """The whole daemon configuration."""

    bindbee: BindbeeSettings
    connectors: tuple[ConnectorSettings, ...] = ()
    models: dict[str, ModelSettings] = {"enrollments": ModelSettings()}
    kafka: KafkaSettings = KafkaSettings()
    state: StateSettings = StateSettings()
    log: LogSettings = LogSettings()
    http: HttpSettings = HttpSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    webhook: WebhookSettings = WebhookSettings()

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        unknown = sorted(set(value) - set(LMS_MODELS))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(LMS_MODELS)}")
        if not value:
            raise ValueError("at least one model is needed")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if not self.connectors and not self.bindbee.discover_connectors:
            raise ValueError(
                "connectors: Field required (at least one connector, "
                "or bindbee.discover_connectors: true)"
            )
        if (
            self.bindbee.sync_check_interval_seconds == 0
            and not self.webhook.enabled
            and any(m.trigger == "sync" for m in self.models.values())
        ):
            raise ValueError(
                "bindbee.sync_check_interval_seconds: 0 (check only when a webhook asks) "
                "needs webhook.enabled"
            )
        if self.webhook.enabled and self.http.enabled and self.webhook.port == self.http.port:
            raise ValueError(
                "webhook.port: must differ from http.port (the webhook listener faces the "
                "internet, /metrics must not)"
            )
        spaced = [m for m, s in self.models.items() if s.full_scan_every_syncs != 1]
        if spaced and not self.webhook.enabled:
            raise ValueError(
                f"models: {spaced[0]}.full_scan_every_syncs other than 1 needs webhook.enabled "
                "(syncs that are not walked are read from their connector_data_modified hints)"
            )
        names = [c.name for c in self.connectors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"connectors: duplicate connector name(s) {dupes}")
        for connector in self.connectors:
            unknown = sorted(set(connector.poll_interval_seconds) - set(self.models))
            if unknown:
                raise ValueError(
                    f"connectors: {connector.name}.poll_interval_seconds names model(s) "
                    f"{unknown} that are not configured under models"
                )
        return self

    def connector(self, name: str) -> ConnectorSettings:
        """The connector called ``name``; ConfigError when there is none."""
        for connector in self.connectors:
            if connector.name == name:
                return connector
        raise ConfigError("connectors", f"no connector named {name!r}")

    def poll_interval(self, connector: str | ConnectorSettings, model: str) -> float:
        """Poll interval of one stream, honouring per-connector overrides. A discovered
        connector is not in ``connectors``: pass it as itself."""
        if isinstance(connector, str):
            connector = self.connector(connector)
        override = connector.poll_interval_seconds.get(model)
        return override if override is not None else self.models[model].poll_interval_seconds


def config_path(path: Path | str | None) -> Path | None:
    """The configuration file: ``path``, else ``$CHANGEFEED_CONFIG``, else None."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    return Path(path) if path is not None else None


def _load(cls: type[BaseSettings], path: Path | str | None, **overrides: Any) -> Any:
    """``cls`` from ``path`` (or ``$CHANGEFEED_CONFIG``), the environment and ``overrides``;
    ConfigError naming the first offending field."""
    file = config_path(path)
    if file is not None:
        # The YAML source skips a file that is not there; a named file must be readable.
        try:
            with file.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError("config", f"cannot read {file}: {exc.strerror or exc}") from None
    token = yaml_path.set(file)
    try:
        return cls(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        raise describe(cls, first, file) from None
    finally:
        yaml_path.reset(token)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$CHANGEFEED_CONFIG``) and the environment.

    Raises ConfigError naming the first offending field.
    """
    settings: Settings = _load(Settings, path, **overrides)
    return settings


class KafkaOnlySettings(_FileAndEnv):
    """Only the ``kafka`` section, from the same file and ``CHANGEFEED_KAFKA__*``: reading a
    topic needs neither the Bindbee key nor connectors (other sections are not checked)."""

    model_config = SettingsConfigDict(extra="ignore")

    kafka: KafkaSettings | None = None


def load_kafka_settings(
    path: Path | str | None = None, *, bootstrap: str | None = None, needs_bootstrap: bool = True
) -> KafkaSettings:
    """The ``kafka`` section (file, then ``CHANGEFEED_KAFKA__*``, then ``bootstrap``).

    With ``needs_bootstrap``, ConfigError unless some source names the servers (the
    default ``localhost:9092`` is no answer to "which cluster do you mean").
    """
    overrides = {"kafka": {"bootstrap_servers": bootstrap}} if bootstrap else {}
    loaded: KafkaOnlySettings = _load(KafkaOnlySettings, path, **overrides)
    kafka = loaded.kafka
    if needs_bootstrap and (kafka is None or "bootstrap_servers" not in kafka.model_fields_set):
        raise ConfigError(
            "kafka.bootstrap_servers",
            f"needs --bootstrap HOST:PORT, or a config (--config or {CONFIG_ENV}) "
            "naming kafka.bootstrap_servers",
        )
    return kafka or KafkaSettings()
