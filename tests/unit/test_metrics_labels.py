"""metrics.py's docstring names every label a metric may carry, and only those exist."""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from daemon.ops import metrics


def test_every_metric_uses_only_the_documented_labels() -> None:
    declared = [obj for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)]
    assert declared
    used = {label for metric in declared for label in metric._labelnames}
    assert used <= metrics.LABELS, sorted(used - metrics.LABELS)
    # The docstring lists each of them, and no token or id is among them.
    doc = metrics.__doc__ or ""
    assert all(f"``{label}``" in doc for label in metrics.LABELS)
    assert not {"token", "api_key", "id", "record_id", "secret"} & metrics.LABELS
