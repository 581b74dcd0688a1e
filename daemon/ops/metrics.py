"""Prometheus metrics, and the only labels they may carry.

Every label has a bounded set of values: configured names (a connector's display
name, a model, this process's replica name) or a small closed vocabulary. Never a
token, a key, a record id or anything a request sent. ``LABELS`` is that list, and
a test holds every metric declared here to it:

- ``connector``, ``model``: configured names of a stream;
- ``replica``: ``scheduler.replica_id`` (default: the host name);
- ``kind``: full or incremental; ``result``: ok, failed or interrupted;
- ``type``: the event type published (created, updated, deleted, ...);
- ``status``: an HTTP status code of the Bindbee API, or the transport failure
  instead of one (timeout, error);
- ``outcome``: the bounded outcome each metric's help text lists;
- ``reason``: why an item was rejected or a pass skipped; ``action``: the sync
  rule's decision; ``state``: a connector's state; ``trigger``: interval or sync.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LABELS = frozenset(
    {
        "connector",
        "model",
        "replica",
        "kind",
        "result",
        "type",
        "status",
        "outcome",
        "reason",
        "action",
        "state",
        "trigger",
    }
)

_STREAM = ("connector", "model")

SCANS = Counter("changefeed_scans", "Passes over a stream, by result", [*_STREAM, "kind", "result"])
SCAN_DURATION = Histogram(
    "changefeed_scan_duration_seconds",
    "Duration of one pass over a stream",
    _STREAM,
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200),
)
ITEMS_SEEN = Counter("changefeed_items_seen", "Items read from the API", _STREAM)
EVENTS_PUBLISHED = Counter(
    "changefeed_events_published", "Events acknowledged by Kafka", [*_STREAM, "type"]
)
STALE_ITEMS = Counter(
    "changefeed_stale_items", "Items older than the stored copy (ignored)", _STREAM
)
API_REQUESTS = Counter(
    "changefeed_api_requests", "Bindbee API requests by HTTP status", ["connector", "status"]
)
API_RATE_LIMITED = Counter("changefeed_api_rate_limited", "429 answers received", ["connector"])
API_RATE_LIMIT_REMAINING = Gauge(
    "changefeed_api_rate_limit_remaining", "X-RateLimit-Remaining of the last answer", ["connector"]
)
WATERMARK = Gauge(
    "changefeed_watermark_timestamp_seconds", "Watermark (max modified_at published)", _STREAM
)
LAST_SUCCESS = Gauge(
    "changefeed_last_successful_scan_timestamp_seconds", "When the last pass succeeded", _STREAM
)
DELETE_GUARD_TRIPS = Counter(
    "changefeed_delete_guard_trips", "Full scans whose deletes were withheld", _STREAM
)
ITEMS_REJECTED = Counter(
    "changefeed_items_rejected",
    "Poison items published to the dead-letter topic (once per distinct content), by reason",
    [*_STREAM, "reason"],
)
HINT_MISSED = Counter(
    "changefeed_hint_missed",
    "Changes a walk found whose ids no connector_data_modified hint received since the "
    "previous walk named (hints lost, or Bindbee not sending them)",
    _STREAM,
)
HINT_READS = Counter(
    "changefeed_hint_reads",
    "Hinted ids read by id, by outcome: created, updated, deleted, unchanged, not_found, "
    "rejected, filtered (outside the stream's filters), withheld (a delete the guard held)",
    ["outcome"],
)
HINTS_WALKED = Counter(
    "changefeed_hints_walked",
    "Hints not read by id (reads would cost more than a walk, over the id cap, unsafe "
    "ids): their sync was walked instead",
    _STREAM,
)
WALK_SPACING = Gauge(
    "changefeed_walk_spacing",
    "Syncs between two walks of the stream now (models.<m>.full_scan_every_syncs; auto "
    "moves it between 1 and 7)",
    _STREAM,
)
DELETES_WITHHELD = Gauge(
    "changefeed_deletes_withheld",
    "1 when the last full scan withheld its deletes (the delete guard, or a rejected item "
    "it cannot identify)",
    _STREAM,
)
STREAM_UP = Gauge("changefeed_stream_up", "1 when the last pass of a stream succeeded", _STREAM)

# Sync-aware polling: the connectors list, webhooks and the sync rule. Labels are
# connector display names, models and bounded outcomes: never tokens or request data.
SYNC_CHECK_REQUESTS = Counter(
    "changefeed_sync_check_requests",
    "GET /connectors requests of the sync watcher, by outcome "
    "(ok, http_<status>, timeout, error, malformed)",
    ["outcome"],
)
SYNC_CHECK_MALFORMED_ITEMS = Counter(
    "changefeed_sync_check_malformed_items",
    "Connector items skipped because they lacked an id or had unreadable fields",
)
WEBHOOK_DELIVERIES = Counter(
    "changefeed_webhook_deliveries",
    "Webhook deliveries by outcome (accepted, ignored, coalesced, bad_signature, "
    "too_large, bad_request, timeout, error, stopping)",
    ["outcome"],
)
SYNC_DECISIONS = Counter(
    "changefeed_sync_decisions",
    "Sync-rule decisions per stream check, by action",
    ["connector", "model", "action"],
)
SYNC_FAILED = Counter(
    "changefeed_sync_failed",
    "Bindbee syncs seen with sync_status Failed (counted once per sync)",
    ["connector"],
)
CONNECTOR_STATUS = Gauge(
    "changefeed_connector_status",
    "1 for the connector's current state (ok, syncing, failed, blocked, missing), else 0",
    ["connector", "state"],
)
SYNC_WATCHER_UP = Gauge(
    "changefeed_sync_watcher_up",
    "1 when the sync watcher's last read of the connectors list worked",
)
SYNC_WATCHER_LAST_OK = Gauge(
    "changefeed_sync_watcher_last_success_timestamp_seconds",
    "When the sync watcher last read the connectors list",
)
STREAM_TRIGGER = Gauge(
    "changefeed_stream_interval_seconds",
    "A stream's configured poll interval (for trigger=sync: the safety-net interval)",
    [*_STREAM, "trigger"],
)
PASSES_SKIPPED = Counter(
    "changefeed_passes_skipped",
    "Passes not started, by reason (blocked: the connector needs the customer; "
    "up_to_date: the sync asked for is already scanned)",
    [*_STREAM, "reason"],
)

# Per process: which replica of a fleet sharing one PostgreSQL state store says so.
REPLICA_INFO = Gauge(
    "changefeed_replica_info", "1, labelled with this process's replica name", ["replica"]
)
REPLICAS_LIVE = Gauge(
    "changefeed_replicas_live", "Replicas with a live heartbeat, as this one sees them", ["replica"]
)
LEASES_HELD = Gauge("changefeed_leases_held", "Stream leases this replica holds", ["replica"])
LEASE_LOST = Counter(
    "changefeed_lease_lost",
    "Passes stopped before writing because their lease expired (fencing)",
    ["replica", *_STREAM],
)
SYNC_WATCHER_LEADER = Gauge(
    "changefeed_sync_watcher_leader",
    "1 on the one replica that reads the connectors list for the fleet",
    ["replica"],
)

# Pre-create the label sets of bounded outcomes so dashboards see zeros, not gaps.
for _outcome in (
    "accepted",
    "ignored",
    "coalesced",
    "bad_signature",
    "too_large",
    "bad_request",
    "timeout",
    "error",
    "stopping",
):
    WEBHOOK_DELIVERIES.labels(_outcome)
for _outcome in ("ok", "timeout", "error", "malformed"):
    SYNC_CHECK_REQUESTS.labels(_outcome)


class _WatermarkLag(Collector):
    """Reports now - watermark at scrape time, so the lag grows while a stream is stuck."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "changefeed_watermark_lag_seconds",
            "Seconds between now and the watermark",
            labels=_STREAM,
        )
        now = time.time()
        for metric in WATERMARK.collect():
            for sample in metric.samples:
                labels = sample.labels
                family.add_metric([labels["connector"], labels["model"]], now - sample.value)
        yield family


def register_lag_collector(registry: CollectorRegistry = REGISTRY) -> None:
    """Add the lag collector once (idempotent)."""
    if not getattr(registry, "_changefeed_lag", False):
        registry.register(_WatermarkLag())
        registry._changefeed_lag = True  # type: ignore[attr-defined]


register_lag_collector()
