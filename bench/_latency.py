"""End-to-end latency: a record changes in the simulator → its event is readable on Kafka.

``lms-changefeed run`` polls every second with ``modified_after``; this module changes
records at random moments (``PATCH /_sim/...``) and a consumer, reading the topic from
the beginning (tansu misreports end offsets, so no seek to the end), notes when each
change's ``updated`` event arrives.
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from _harness import (
    MODEL,
    DaemonProcess,
    Simulator,
    Workspace,
    api_headers,
    new_topic_prefix,
    write_config,
)
from kafka import KafkaConsumer, TopicPartition

from daemon.timestamps import normalize_time

if TYPE_CHECKING:
    from _cases import Sizes

# The consumer's long-poll: short, so the measurement adds little to what it measures.
_FETCH_WAIT_MS = 20


EventKey = Callable[[dict[str, Any]], "tuple[str, str] | None"]


def updated_at_time(event: dict[str, Any]) -> tuple[str, str] | None:
    """An ``updated`` event's (subject, time): this module's key."""
    return (event["subject"], event["time"]) if event["type"].endswith(".updated") else None


class TopicWatcher:
    """Reads a topic from the beginning in a thread (assign + seek_to_beginning: tansu
    misreports end offsets); remembers when each event's ``key`` (None: not noted) was
    first read, by ``clock``. The one event reader of the benchmarks."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        key: EventKey = updated_at_time,
        *,
        clock: Callable[[], float] = time.monotonic,
        client_id: str = "bench-latency",
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.key = key
        self.clock = clock
        self.client_id = client_id
        self.arrivals: dict[tuple[str, str], float] = {}
        self.count = 0
        self.ready = threading.Event()  # assigned: what is sent from now on is read
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=client_id, daemon=True)

    def __enter__(self) -> TopicWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"consumer failed: {self.error!r}")

    def wait_for_count(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count < count:
            self._check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumer read {self.count} of {count} events in time")
            time.sleep(0.05)

    def wait_all(
        self,
        keys: list[tuple[str, str]],
        timeout: float,
        alive: Callable[[], None] | None = None,
    ) -> float:
        """The arrival time of the last of ``keys``; ``alive`` raises when waiting is
        pointless (e.g. the daemon exited)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check()
            if all(k in self.arrivals for k in keys):
                return max(self.arrivals[k] for k in keys)
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                missing = [k for k in keys if k not in self.arrivals]
                raise RuntimeError(
                    f"{len(missing)} of {len(keys)} events not read in {timeout} s: {missing[:3]}"
                )
            time.sleep(0.005)

    def _run(self) -> None:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=_FETCH_WAIT_MS,
                client_id=self.client_id,
            )
        except BaseException as exc:
            self.error = exc
            return
        try:
            partitions: set[int] | None = None
            while not partitions and not self._stop.is_set():
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    time.sleep(0.1)  # metadata retry back-off
            assigned = [TopicPartition(self.topic, p) for p in sorted(partitions or ())]
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
            self.ready.set()
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=50).values():
                    now = self.clock()
                    for record in records:
                        if record.value is None:
                            continue
                        self.count += 1
                        key = self.key(orjson.loads(record.value))
                        if key is not None:
                            self.arrivals.setdefault(key, now)
        except BaseException as exc:
            self.error = exc
        finally:
            consumer.close()


def sample_ids(base_url: str, headers: dict[str, str], count: int, seed: int) -> list[str]:
    """``count`` distinct record ids, chosen at random from the first pages."""
    ids: list[str] = []
    cursor = None
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        while len(ids) < count * 4:
            params: dict[str, str | int] = {"page_size": 100}
            if cursor:
                params["cursor"] = cursor
            body = orjson.loads(client.get(f"/api/lms/v1/{MODEL}", params=params).content)
            ids += [item["id"] for item in body["items"]]
            cursor = body["cursor"]
            if cursor is None:
                break
    return random.Random(seed).sample(ids, min(count, len(ids)))


def mutate_and_measure(
    patch: Callable[[httpx.Client, str, dict[str, Any]], dict[str, Any]],
    watcher: TopicWatcher,
    ids: list[str],
    *,
    gap: tuple[float, float],
    seed: int,
    settle_seconds: float = 10.0,
) -> tuple[list[float], int]:
    """Change each record once, at random gaps; (latencies in s, changes never seen)."""
    rng = random.Random(seed)
    sent: list[tuple[tuple[str, str], float]] = []
    with httpx.Client(timeout=30) as client:
        for n, record_id in enumerate(ids):
            time.sleep(rng.uniform(*gap))
            started = time.monotonic()
            new_start = f"2031-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z"
            changed = patch(client, record_id, {"start_date": new_start})
            sent.append(((record_id, normalize_time(changed["modified_at"])), started))
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline and any(k not in watcher.arrivals for k, _ in sent):
        time.sleep(0.05)
    latencies = [watcher.arrivals[k] - t for k, t in sent if k in watcher.arrivals]
    return latencies, len(sent) - len(latencies)


def latency_case(bootstrap: str, ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    """Mutation in the simulator → event readable on Kafka, ``run`` polling every second."""
    interval = 1.0
    with Simulator(sizes.latency_records, honor_modified_after=True) as sim:
        prefix = new_topic_prefix()
        config = write_config(
            ws,
            "latency",
            sim=sim,
            bootstrap=bootstrap,
            state=ws.path("latency.db"),
            topic_prefix=prefix,
            model={
                "poll_interval_seconds": interval,
                "full_scan_interval_seconds": 3600,
                "incremental_param": "modified_after",
                "lookback_seconds": 5,
            },
            scheduler={"jitter_seconds": 0},
        )
        daemon = DaemonProcess(ws, config)
        try:
            daemon.wait_for_scans(1, timeout=120)  # the initial sync
            ids = sample_ids(sim.base_url, api_headers(), sizes.latency_mutations, seed=7)
            with TopicWatcher(bootstrap, f"{prefix}.{MODEL}") as watcher:
                watcher.wait_for_count(sizes.latency_records, timeout=120)
                latencies, lost = mutate_and_measure(
                    sim.patch, watcher, ids, gap=(0.2, 1.8), seed=11
                )
            scans = daemon.scans()
        finally:
            code, rss = daemon.stop()
    if not latencies:
        raise RuntimeError("latency: no change was seen on Kafka")
    latencies.sort()
    p99_rank = max(1, math.ceil(0.99 * len(latencies)))
    incremental = [s for s in scans if s.get("kind") == "incremental"]
    return {
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p99_s": round(latencies[p99_rank - 1], 3),
        "details_latency": {
            "poll_interval_s": interval,
            "records": sizes.latency_records,
            "mutations": len(latencies) + lost,
            "lost": lost,
            "max_s": round(latencies[-1], 3),
            "incremental_passes": len(incremental),
            "incremental_pass_median_s": round(
                statistics.median(s["duration_s"] for s in incremental), 4
            )
            if incremental
            else None,
            "daemon_exit_code": code,
            "daemon_peak_rss_mb": round(rss, 1),
        },
    }
