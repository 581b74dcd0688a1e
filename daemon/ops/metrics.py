"""Prometheus metrics. Labels are connector and model names only, never tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
STREAM_UP = Gauge("changefeed_stream_up", "1 when the last pass of a stream succeeded", _STREAM)


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
