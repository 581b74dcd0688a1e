"""``check-config``, ``migrate`` and ``schema``: the configuration, the store's schema and
the events' schemas."""

from __future__ import annotations

import argparse
import sys

from daemon.cli.common import EXIT_OK, settings_for, store_where
from daemon.errors import UsageError
from daemon.settings import LMS_MODELS, config_path, load_kafka_settings, load_settings


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and print a one-line summary (no secrets)."""
    settings = load_settings(args.config)
    print(
        f"config OK: {len(settings.connectors)} connector(s) x {len(settings.models)} model(s), "
        f"kafka {settings.kafka.bootstrap_servers}, state {store_where(settings)}"
    )
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the state store's schema to this version's (run/poll do it at start unless
    ``state.auto_migrate`` is false)."""
    from daemon.state import current_revision, migrate

    settings = settings_for(args)
    before = current_revision(settings.state)
    after = migrate(settings.state)
    if before == after:
        print(f"state store already at schema revision {after}")
    else:
        print(f"state store migrated: {before or 'none'} -> {after}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schemas (draft 2020-12) of the events, as docs/schemas holds them."""
    from daemon.sink.schemas import render

    if args.model is not None and args.model not in LMS_MODELS:
        raise UsageError(f"--model: unknown model {args.model!r}; known: {', '.join(LMS_MODELS)}")
    base = args.base_uri
    if base is None and config_path(args.config) is not None:
        base = load_kafka_settings(args.config, needs_bootstrap=False).schema_base_uri
    sys.stdout.write(render(args.model, base))
    return EXIT_OK
