"""``bindbee-sim``: run the simulator until SIGTERM or SIGINT.

Prints exactly one line on stdout once the port is bound,
``bindbee-sim listening on http://HOST:PORT``, for parent processes to parse.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from bindbee_sim.runner import bind_socket, make_server, url_for, webhook_policy
from bindbee_sim.state import SimState
from bindbee_sim.syncs import SYNC_MODES
from bindbee_sim.webhooks import ENCODINGS

_EPILOG = """\
sync modes:
  live       (default) every /_sim change is visible at once and counts as an
             instant sync: last_sync_start_time moves, sync_status stays Done.
  scheduled  /_sim creates, patches and deletes are staged; they become visible
             when a sync of that connector completes (POST /_sim/syncs, or every
             --sync-interval-seconds), with modified_at = the sync's end.

webhooks (with --webhook-url): connector_sync_started, connector_synced,
connector_sync_error and connector_data_modified, signed in the
X-Bindbee-Webhook-Signature header (HMAC-SHA256 of the body), retried on
errors and non-2xx answers, then given up. For tests: POST /_sim/webhooks/drop
loses chosen deliveries, /_sim/webhooks/replay re-sends one byte for byte,
/_sim/webhooks/send signs an event of your own making; GET /_sim/reads counts
reads by id.
"""


def parse_connectors(text: str) -> dict[str, str]:
    """``acme:tok_acme,globex:tok_globex`` -> ``{"acme": "tok_acme", ...}``."""
    connectors: dict[str, str] = {}
    for part in text.split(","):
        name, sep, token = part.strip().partition(":")
        if not sep or not name or not token:
            raise argparse.ArgumentTypeError(f"expected NAME:TOKEN, got {part!r}")
        if name in connectors:
            raise argparse.ArgumentTypeError(f"connector {name!r} given twice")
        connectors[name] = token
    return connectors


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="bindbee-sim",
        description="Run the Bindbee LMS API simulator until SIGTERM or SIGINT.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--api-key", default="test-api-key")
    p.add_argument(
        "--connectors",
        type=parse_connectors,
        default={"acme": "tok_acme"},
        metavar="NAME:TOKEN[,NAME:TOKEN...]",
    )
    p.add_argument("--enrollments", type=int, default=1000, help="per connector")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--rate-limit",
        type=int,
        default=200,
        help="requests per window per connector token; 0 disables limiting",
    )
    p.add_argument("--rate-window-seconds", type=float, default=60.0)
    p.add_argument(
        "--honor-modified-after",
        action="store_true",
        help="filter list endpoints on ?modified_after= (ignored by default)",
    )
    s = p.add_argument_group("syncs")
    s.add_argument(
        "--sync-mode",
        choices=SYNC_MODES,
        default="live",
        help="live: changes show at once; scheduled: changes wait for a sync "
        "(default: %(default)s)",
    )
    s.add_argument(
        "--sync-interval-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="sync every connector every S seconds; 0: only on demand (default: %(default)s)",
    )
    s.add_argument(
        "--sync-duration-seconds",
        type=float,
        default=1.0,
        metavar="D",
        help="how long sync_status stays Syncing (default: %(default)s)",
    )
    s.add_argument(
        "--sync-touches-all",
        action="store_true",
        help="every sync moves every record's modified_at (content unchanged)",
    )
    w = p.add_argument_group("webhooks")
    w.add_argument("--webhook-url", metavar="URL", help="POST sync events here")
    w.add_argument(
        "--webhook-secret",
        metavar="SECRET",
        default=os.environ.get("BINDBEE_SIM_WEBHOOK_SECRET"),
        help="the organisation's signature key, required with --webhook-url "
        "(default: $BINDBEE_SIM_WEBHOOK_SECRET)",
    )
    w.add_argument(
        "--webhook-signature-encoding",
        choices=ENCODINGS,
        default="base64url",
        help="encoding of the HMAC-SHA256 signature (default: %(default)s)",
    )
    w.add_argument(
        "--webhook-timeout-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="per attempt (default: %(default)s)",
    )
    w.add_argument(
        "--webhook-retry-window-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="no retry starts later than this after the first attempt (default: %(default)s)",
    )
    w.add_argument(
        "--webhook-retries",
        type=int,
        default=4,
        metavar="N",
        help="retries after the first attempt (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    # Before serving this ends start-up; while serving uvicorn's own handler
    # runs, and re-raises the signal here once it has shut down gracefully.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Generate the data, bind, announce the URL, serve until signalled."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    try:
        state = SimState(
            args.connectors,
            enrollments=args.enrollments,
            seed=args.seed,
            api_key=args.api_key,
            rate_limit=args.rate_limit,
            rate_window_seconds=args.rate_window_seconds,
            honor_modified_after=args.honor_modified_after,
            sync_mode=args.sync_mode,
            sync_interval_seconds=args.sync_interval_seconds,
            sync_duration_seconds=args.sync_duration_seconds,
            sync_touches_all=args.sync_touches_all,
            webhook=webhook_policy(
                args.webhook_url,
                args.webhook_secret,
                args.webhook_signature_encoding,
                args.webhook_timeout_seconds,
                args.webhook_retry_window_seconds,
                args.webhook_retries,
            ),
        )
        sock = bind_socket(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"bindbee-sim: {exc}", file=sys.stderr)
        return 2
    server = make_server(state, args.log_level, args.access_log)
    print(f"bindbee-sim listening on {url_for(args.host, sock)}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
