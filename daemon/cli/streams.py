"""``resync`` and ``reset``: what an operator asks of one stream or several."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from daemon.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    age,
    check_streams,
    require_current_store,
    store_where,
)
from daemon.errors import UsageError
from daemon.models import StreamKey, StreamState
from daemon.settings import Settings, load_settings


def stored_streams(
    settings: Settings, stored: Sequence[StreamKey], connector: str | None, model: str | None
) -> list[StreamKey]:
    """The stored streams a filter selects; UsageError naming what selects none."""
    try:
        check_streams(settings, stored, connector, model)
    except UsageError as exc:
        if connector is None or model is None:
            raise
        raise UsageError(f"cannot resync {StreamKey(connector, model)}: {exc}") from None
    chosen = [
        key
        for key in stored
        if (connector is None or key.connector == connector)
        and (model is None or key.model == model)
    ]
    if not chosen:
        if connector is not None and model is not None:
            what = f"{StreamKey(connector, model)} has no"
        elif connector is not None:
            what = f"no stream of connector {connector!r} has"
        elif model is not None:
            what = f"no stream of model {model!r} has"
        else:
            what = "no stream has"
        raise UsageError(
            f"nothing to resync: {what} state in {store_where(settings)} yet "
            "(a stream's first pass is a full scan anyway)"
        )
    return chosen


def resync_notes(settings: Settings, state: StreamState) -> list[str]:
    """What would keep this daemon's configuration from running the requested scan."""
    notes = []
    model = settings.models.get(state.key.model)
    configured = {c.key for c in settings.connectors}
    if model is None or (
        state.key.connector not in configured and not settings.bindbee.discover_connectors
    ):
        notes.append("not configured here: only a daemon that follows it runs the scan")
    elif model.trigger == "sync" and state.connector_state:
        notes.append(f"its connector is held ({state.connector_state}): the scan waits for it")
    if state.in_progress:
        notes.append("the scan in progress finishes first")
    return notes


def cmd_resync(args: argparse.Namespace) -> int:
    """Ask the running daemon (whichever replica is free) for a full scan that compares with
    the stored snapshot: only real differences become events (``reset`` re-sends all)."""
    from daemon.state import open_store

    if args.all and (args.connector or args.model):
        raise UsageError("--all selects every stream: give it without --connector or --model")
    if not (args.all or args.connector or args.model):
        raise UsageError("resync needs --connector C [--model M], --model M, or --all")
    settings = load_settings(args.config)
    # No migration from an operator's command: a daemon of this version migrated already.
    require_current_store(settings)
    store = open_store(settings.state, create=False, auto_migrate=False)
    try:
        states = {st.key: st for st in store.states()}
        # Every stream checked before any request: a refusal leaves the store as it was.
        keys = stored_streams(settings, list(states), args.connector, args.model)
        now = time.time()
        for key in keys:
            store.request_scan(key, now, resync=True)
    finally:
        store.close()
    within = settings.scheduler.claim_interval_seconds
    for key in keys:
        state = states[key]
        pending = state.resync_requested_at
        said = f"already requested {age(now - pending)} ago" if pending else "requested"
        notes = "".join(f"; note: {note}" for note in resync_notes(settings, state))
        print(
            f"resync {key}: {said}; a running daemon starts a full scan comparing with the "
            f"stored snapshot (only real differences become events) within about {within:g}s "
            f"(scheduler.claim_interval_seconds); `lms-changefeed status` shows the request "
            f"until that scan is done{notes}"
        )
    return EXIT_OK


def _confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_reset(args: argparse.Namespace) -> int:
    """Forget a stream's snapshot and watermark: its next pass is an initial sync."""
    from daemon.state import open_store

    settings = load_settings(args.config)
    key = StreamKey(args.connector, args.model)
    where = store_where(settings)
    store = open_store(settings.state, create=False)
    try:
        states = {st.key: st for st in store.states()}
        check_streams(settings, list(states), args.connector, args.model)
        state = states.get(key)
        if state is None:
            print(f"nothing to reset: {key} has no state in {where} yet")
            return EXIT_OK
        question = (
            f"reset {key} in {where}: forget its {state.records} record(s) "
            "and watermark? Its next pass is an initial sync"
        )
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError(f"refusing to reset {key} without --yes (no terminal to ask on)")
            if not _confirm(question):
                print("not reset", file=sys.stderr)
                return EXIT_REFUSED
        store.reset(key)
    finally:
        store.close()
    print(f"reset {key}: {state.records} record(s) forgotten; its next pass is an initial sync")
    return EXIT_OK
