"""Prometheus metrics of sync-aware polling: connectors-list reads, webhooks, sync decisions.

Kept apart from ``daemon.ops.metrics`` until the lead merges the two. Labels are
outcomes, actions and connector *names*; never tokens, ids from a request body or
anything a sender controls.
"""

from __future__ import annotations

from prometheus_client import Counter

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
    "too_large, bad_request, timeout, error)",
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
):
    WEBHOOK_DELIVERIES.labels(_outcome)
for _outcome in ("ok", "timeout", "error", "malformed"):
    SYNC_CHECK_REQUESTS.labels(_outcome)
