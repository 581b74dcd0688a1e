"""A bad config, met by the `lms-changefeed` process (the rules themselves:
tests/unit/test_config.py)."""

from __future__ import annotations

from pathlib import Path

from tests.harness import cli, write_config


def test_bad_config_as_a_process_prints_one_line_no_traceback(tmp_path: Path) -> None:
    config = {
        "bindbee": {"base_url": "http://127.0.0.1:1", "api_key": "k-secret-123", "page_size": 101},
        "connectors": [{"name": "acme", "token": "tok-secret-456"}],
        "models": {"enrollments": {"poll_interval_seconds": 10}},
        "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
    }
    path = write_config(tmp_path, config)
    proc = cli("run", "--config", str(path))
    assert proc.returncode == 2
    expected = "invalid config: bindbee.page_size: Input should be less than or equal to 100"
    assert proc.stderr.strip().splitlines() == [f"lms-changefeed: {expected}"]
