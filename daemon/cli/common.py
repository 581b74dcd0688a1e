"""What the commands share: exit codes, loading settings, naming streams and ages."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from datetime import UTC, datetime

from daemon import log as logsetup
from daemon.errors import StoreMissing, UsageError
from daemon.models import StreamKey
from daemon.settings import Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130


def interrupted_or(code: int, received: str | None) -> int:
    """Ctrl-C (SIGINT) ends a command with 130 whatever it was doing; SIGTERM is the
    ordinary way to stop a service and keeps ``code``."""
    return EXIT_INTERRUPTED if received == "SIGINT" else code


def settings_for(args: argparse.Namespace) -> Settings:
    """The configuration of ``--config`` (or ``$CHANGEFEED_CONFIG``), logging configured."""
    settings = load_settings(args.config)
    logsetup.configure(settings.log.level, settings.log.format)
    return settings


def store_where(settings: Settings) -> str:
    """The state store for people (no secrets)."""
    return settings.state.location()


def require_current_store(settings: Settings) -> str:
    """The store's schema revision when it exists and is this version's; otherwise
    StoreMissing naming ``lms-changefeed migrate`` (an inspecting command creates and
    migrates nothing)."""
    from daemon.state import current_revision, head_revision, require_store

    require_store(settings.state)
    revision, head = current_revision(settings.state), head_revision()
    if revision != head:
        where = store_where(settings)
        raise StoreMissing(
            where,
            f"the state store at {where} is at schema revision {revision or 'none'}, this "
            f"version needs {head}: run `lms-changefeed migrate`",
        )
    return revision


def check_streams(
    settings: Settings, known: Iterable[StreamKey], connector: str | None, model: str | None
) -> None:
    """Refuse a ``--connector`` or ``--model`` that is neither configured nor in the store."""
    known = list(known)
    stored_connectors = {key.connector for key in known}
    stored_models = {key.model for key in known}
    configured = {c.name for c in settings.connectors}
    where = store_where(settings)
    if connector is not None and connector not in configured | stored_connectors:
        raise UsageError(
            f"--connector: unknown connector {connector!r}: not configured "
            f"({', '.join(sorted(configured)) or 'none'}) and not in {where}"
        )
    if model is not None and model not in set(settings.models) | stored_models:
        raise UsageError(
            f"--model: unknown model {model!r}: not configured "
            f"({', '.join(sorted(settings.models))}) and not in {where}"
        )


def ts(value: float | None) -> str:
    """A time for tables, UTC to the second; ``-`` for none."""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def age(seconds: float) -> str:
    """A duration for people, to the unit that matters: 42s, 7m, 3h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"
