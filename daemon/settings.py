"""Typed, frozen configuration: YAML file plus ``CHANGEFEED_*`` environment (env wins).

This is the only module that reads the environment (``CHANGEFEED_CONFIG``, the
``CHANGEFEED_*`` variables, connectors' ``token_env``): other modules take their values
from ``load_settings`` (the whole daemon) or ``load_kafka_settings`` (``tail``, ``schema``:
the ``kafka`` section only). How a refusal is worded: ``settings_errors``.

The sections' classes live in ``settings_sections`` (re-exported here); this module holds
the root, the connectors (their ``token_env``) and the loaders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import (
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
from daemon.settings_sections import (
    AUTO_MAX_SPACING,
    DEFAULT_POLL_INTERVAL,
    LMS_MODELS,
    BindbeeSettings,
    DiscoverFilter,
    HttpSettings,
    KafkaSettings,
    LogSettings,
    ModelSettings,
    RateLimitSettings,
    SchedulerSettings,
    StateSettings,
    WebhookSettings,
    _Section,
)

__all__ = [
    "AUTO_MAX_SPACING",
    "CONFIG_ENV",
    "DEFAULT_POLL_INTERVAL",
    "LMS_MODELS",
    "BindbeeSettings",
    "ConnectorSettings",
    "DiscoverFilter",
    "HttpSettings",
    "KafkaSettings",
    "LogSettings",
    "ModelSettings",
    "RateLimitSettings",
    "SchedulerSettings",
    "Settings",
    "StateSettings",
    "WebhookSettings",
    "load_kafka_settings",
    "load_settings",
]


class ConnectorSettings(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    token: SecretStr | None = None
    token_env: str | None = None
    poll_interval_seconds: dict[str, float] = Field(default_factory=dict)
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
