"""``bindbee-sim``: run the simulator until SIGTERM or SIGINT.

Prints exactly one line on stdout once the port is bound,
``bindbee-sim listening on http://HOST:PORT``, for parent processes to parse.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from bindbee_sim.runner import bind_socket, make_server, url_for
from bindbee_sim.state import SimState


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
    p = argparse.ArgumentParser(prog="bindbee-sim", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--api-key", default="test-api-key")
    p.add_argument("--connectors", type=parse_connectors, default={"acme": "tok_acme"},
                   metavar="NAME:TOKEN[,NAME:TOKEN...]")
    p.add_argument("--enrollments", type=int, default=1000, help="per connector")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate-limit", type=int, default=200,
                   help="requests per window per connector token; 0 disables limiting")
    p.add_argument("--rate-window-seconds", type=float, default=60.0)
    p.add_argument("--honor-modified-after", action="store_true",
                   help="filter list endpoints on ?modified_after= (ignored by default)")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
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
        )
        sock = bind_socket(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"bindbee-sim: {exc}", file=sys.stderr)
        return 2
    server = make_server(state, args.log_level, args.access_log)
    print(f"bindbee-sim listening on {url_for(args.host, sock)}", flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
