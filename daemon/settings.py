"""Typed, frozen configuration: YAML file plus ``CHANGEFEED_*`` environment (env wins).

This is the only module that reads the environment.
"""

from __future__ import annotations

import os
import re
import string
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.errors import ConfigError

LMS_MODELS = ("users", "courses", "contents", "enrollments", "completions")
CONFIG_ENV = "CHANGEFEED_CONFIG"
_NAMED_MESSAGE = re.compile(r"^([a-z_][a-z0-9_.]*): (.*)$", re.DOTALL)
_TOPIC_PLACEHOLDERS = {"model", "connector"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitSettings(_Section):
    requests: int = Field(200, gt=0)
    per_seconds: float = Field(60.0, gt=0)


class BindbeeSettings(_Section):
    base_url: str = "https://api.bindbee.dev"
    api_key: SecretStr
    page_size: int = Field(100, ge=1, le=100)
    timeout_seconds: float = Field(30.0, gt=0)
    rate_limit: RateLimitSettings = RateLimitSettings()
    max_attempts: int = Field(6, ge=1, le=50)
    backoff_base_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(30.0, gt=0)

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

    @model_validator(mode="after")
    def _resolve_token(self) -> ConnectorSettings:
        if self.token is None and self.token_env:
            value = os.environ.get(self.token_env)
            if value:
                object.__setattr__(self, "token", SecretStr(value))
        if self.token is None or not self.token.get_secret_value():
            where = f" (env var {self.token_env} is empty or unset)" if self.token_env else ""
            raise ValueError(f"connector {self.name!r} has no token{where}")
        for interval in self.poll_interval_seconds.values():
            if interval <= 0:
                raise ValueError("poll_interval_seconds overrides must be > 0")
        return self


class ModelSettings(_Section):
    poll_interval_seconds: float = Field(300.0, gt=0)
    full_scan_interval_seconds: float = Field(86400.0, gt=0)
    incremental_param: str | None = "modified_after"
    lookback_seconds: float = Field(300.0, ge=0)
    params: dict[str, str | int | float | bool] = {}
    ignore_fields: tuple[str, ...] = ("modified_at",)
    initial_sync: Literal["emit", "baseline"] = "emit"
    max_delete_fraction: float = Field(0.5, ge=0, le=1)
    emit_tombstones: bool = False


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

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("must name at least one host:port")
        return ",".join(servers)

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

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// URL")
        return value


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


class SchedulerSettings(_Section):
    max_workers: int = Field(4, ge=1, le=64)
    jitter_seconds: float = Field(5.0, ge=0)
    shutdown_timeout_seconds: float = Field(25.0, gt=0)
    stuck_scan_seconds: float = Field(3600.0, gt=0)
    fatal_backoff_seconds: float = Field(900.0, gt=0)
    retry_backoff_max_seconds: float = Field(300.0, gt=0)


_yaml_path: ContextVar[Path | None] = ContextVar("_yaml_path", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML config file chosen by ``load_settings``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # whole-file source; see __call__

    def __call__(self) -> dict[str, Any]:
        path = _yaml_path.get()
        if path is None:
            return {}
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError("config", f"{path} is not valid YAML{where}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError("config", f"{path} must hold a mapping at the top level")
        return data


class Settings(BaseSettings):
    """The whole daemon configuration."""

    model_config = SettingsConfigDict(
        env_prefix="CHANGEFEED_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    bindbee: BindbeeSettings
    connectors: tuple[ConnectorSettings, ...] = Field(min_length=1)
    models: dict[str, ModelSettings] = {"enrollments": ModelSettings()}
    kafka: KafkaSettings = KafkaSettings()
    state: StateSettings = StateSettings()
    log: LogSettings = LogSettings()
    http: HttpSettings = HttpSettings()
    scheduler: SchedulerSettings = SchedulerSettings()

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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    def connector(self, name: str) -> ConnectorSettings:
        """The connector called ``name``; ConfigError when there is none."""
        for connector in self.connectors:
            if connector.name == name:
                return connector
        raise ConfigError("connectors", f"no connector named {name!r}")

    def poll_interval(self, connector: str, model: str) -> float:
        """Poll interval of one stream, honouring per-connector overrides."""
        override = self.connector(connector).poll_interval_seconds.get(model)
        return override if override is not None else self.models[model].poll_interval_seconds


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "constrained-"))]
    return ".".join(parts) or "config"


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$CHANGEFEED_CONFIG``) and the environment.

    Raises ConfigError naming the first offending field.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    token = _yaml_path.set(Path(path) if path is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = _field_name(tuple(first["loc"]))
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        # Cross-field validators name the field themselves: "name: what is wrong".
        named = _NAMED_MESSAGE.match(message)
        if named:
            inner, message = named.groups()
            field = inner if field == "config" else f"{field}.{inner}"
        raise ConfigError(field, message) from None
    finally:
        _yaml_path.reset(token)
