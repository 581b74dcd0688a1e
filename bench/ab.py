"""A/B: the daemon of two (or more) source trees, alternating, on one simulator, broker
and store server: initial syncs, then steady full scans.

    .venv/bin/python bench/ab.py --store postgresql --reps 5 new=. old=/path/to/worktree

Each tree runs through ``bench/_peak.py`` with its own ``PYTHONPATH``, so the tree's
``daemon`` package is the one imported (make the other tree with
``git worktree add --detach /tmp/old <commit>``). The order alternates every repetition,
so drift on this shared machine falls on both alike; the floors (a bare walk, a bare
producer) are measured in the same repetitions. Reports medians: the pass's duration, its
ratio to the floor, and its CPU (the pass alone, and the whole process).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path

from _cases import KEY
from _floors import initial_sync_messages, raw_produce, raw_walk
from _harness import MODEL, DaemonRun, Simulator, new_topic_prefix, poll, write_config
from _storage import PG_ADMIN_URL, BenchDatabase, Workspace

from daemon import log as logsetup
from daemon.settings import KafkaSettings
from devtools.tansu import TansuBroker


def _run(tree: Path, ws: Workspace, config: Path, *args: str) -> DaemonRun:
    os.environ["PYTHONPATH"] = str(tree)
    try:
        return poll(ws, config, *args)
    finally:
        del os.environ["PYTHONPATH"]


def _line(name: str, runs: list[DaemonRun], floor: list[float]) -> str:
    seconds = [r.duration_s for r in runs]
    ratio = statistics.median(s / f for s, f in zip(seconds, floor, strict=True))
    passes = statistics.median(r.pass_cpu_s or 0.0 for r in runs)
    process = statistics.median(r.cpu_s for r in runs)
    shown = " ".join(f"{s:.2f}" for s in seconds)
    return (
        f"{name:10s} {statistics.median(seconds):.3f} s  ratio {ratio:.2f}  "
        f"pass CPU {passes:.3f} s  process CPU {process:.3f} s  [{shown}]"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="NAME=PATH of each source tree")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--reps", type=int, default=4, help="repetitions of each case")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--pg-url", default=PG_ADMIN_URL)
    args = parser.parse_args()
    trees = {}
    for item in args.trees:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "daemon").is_dir():
            parser.error(f"{item!r}: expected NAME=PATH of a source tree (with daemon/)")
        trees[name] = Path(path).resolve()
    logsetup.configure("WARNING", "json")
    sync: dict[str, list[DaemonRun]] = {name: [] for name in trees}
    scan: dict[str, list[DaemonRun]] = {name: [] for name in trees}
    sync_floor: list[float] = []
    scan_floor: list[float] = []
    n = args.records
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(TansuBroker())
        sim = stack.enter_context(Simulator(n))
        url = None
        if args.store == "postgresql":
            url = stack.enter_context(BenchDatabase(args.pg_url))
        ws = Workspace(state_url=url)
        stack.callback(ws.cleanup)
        warm = raw_walk(sim.base_url, keep=True)
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        configs: dict[str, Path] = {}
        for rep in range(args.reps):
            order = list(trees) if rep % 2 == 0 else list(reversed(trees))
            for name in order:
                prefix = new_topic_prefix()
                configs[name] = write_config(
                    ws, f"{name}-{rep}", sim=sim, bootstrap=broker.bootstrap,
                    state=ws.path(f"{name}-{rep}.db"), topic_prefix=prefix,
                )  # fmt: skip
                run = _run(trees[name], ws, configs[name], "--full")
                assert run.scan["created"] == n, run.log_tail
                sync[name].append(run)
            topic = f"{new_topic_prefix()}-floor.{MODEL}"
            walk = raw_walk(sim.base_url).seconds
            sync_floor.append(
                walk + raw_produce(kafka, topic, initial_sync_messages(KEY, topic, warm.pages))
            )
        for rep in range(args.reps):
            order = list(trees) if rep % 2 == 0 else list(reversed(trees))
            for name in order:
                run = _run(trees[name], ws, configs[name], "--full")
                assert run.scan["unchanged"] == n, run.scan
                scan[name].append(run)
            scan_floor.append(raw_walk(sim.base_url).seconds)
    print(f"{args.store}, {n:,} records, {args.reps} repetitions each, alternating")
    print(f"initial sync (floor: walk + producer, median {statistics.median(sync_floor):.3f} s)")
    for name, runs in sync.items():
        print("  " + _line(name, runs, sync_floor))
    print(f"full scan, nothing changed (floor: walk, median {statistics.median(scan_floor):.3f} s)")
    for name, runs in scan.items():
        print("  " + _line(name, runs, scan_floor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
