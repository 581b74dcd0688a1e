"""The bindbee-sim command line."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.harness import Daemon, cli, sim_argv, wait_until
from tests.sim_support import API_KEY, CONNECTORS, ENROLLMENTS, Receiver


def listening(sim_cli: Daemon) -> str:
    """The base URL from the first line ``bindbee-sim`` prints."""
    sim_cli.wait_output(lambda out: b"\n" in out, 30, "bindbee-sim's first line")
    line = sim_cli.stdout[0]
    assert line.startswith("bindbee-sim listening on http://127.0.0.1:"), line
    return line.split()[-1]


@contextmanager
def running_cli(*args: str) -> Iterator[str]:
    """``bindbee-sim --port 0 ARGS``; yields its base URL; SIGTERM at the end."""
    with Daemon.launch(sim_argv("--port", "0", *args), env={"PYTHONUNBUFFERED": "1"}) as proc:
        yield listening(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# ---- the command line ----------------------------------------------------------------------


def test_cli_serves_and_exits_on_sigterm(tmp_path: Path):
    argv = sim_argv(
        "--port",
        "0",
        "--connectors",
        "acme:tok_acme,globex:tok_g",
        "--enrollments",
        "120",
        "--seed",
        "3",
        "--rate-limit",
        "10",
    )
    with Daemon.launch(argv, env={"PYTHONUNBUFFERED": "1"}) as proc:
        base_url = listening(proc)
        response = httpx.get(
            base_url + ENROLLMENTS,
            params={"page_size": 100},
            headers={"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_g"},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.json()["page_size"] == 100
        assert response.headers["x-ratelimit-limit"] == "10"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert len(proc.stdout) == 1, proc.stdout  # exactly one line on stdout


def test_cli_scheduled_mode_with_signed_webhooks():
    secret = "whsec-cli"
    with (
        Receiver() as receiver,
        running_cli(
            "--enrollments",
            "50",
            "--sync-mode",
            "scheduled",
            "--sync-duration-seconds",
            "1",
            "--webhook-url",
            receiver.url,
            "--webhook-secret",
            secret,
        ) as url,  # fmt: skip
        httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {API_KEY}", "x-connector-token": "tok_acme"},
            timeout=10,
        ) as api,
    ):
        record = api.get(ENROLLMENTS, params={"page_size": 1}).json()["items"][0]
        path = f"{ENROLLMENTS}/{record['id']}"
        before = api.get(CONNECTORS).json()["items"][0]
        api.patch(f"/_sim/acme/enrollments/{record['id']}", json={"end_date": None})
        assert api.get(path).json() == record  # staged: the API still serves the old one
        assert api.get("/_sim/staged").json() == {"acme": 1}
        assert api.post("/_sim/syncs", json={"connector": "acme"}).status_code == 202
        during = api.get(CONNECTORS).json()["items"][0]
        assert during["sync_status"] == "Syncing"
        assert during["last_sync_start_time"] > before["last_sync_start_time"]
        wait_until(
            lambda: api.get(CONNECTORS).json()["items"][0]["sync_status"] == "Done", what="Done"
        )
        after = api.get(path).json()
        assert after["end_date"] is None and after["modified_at"] > record["modified_at"]
        assert after["modified_at"] > during["last_sync_start_time"]  # stamped at the end
        wait_until(lambda: len(receiver.bodies()) == 3, what="three webhooks")
        for headers, body in receiver.deliveries():
            digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
            assert headers["X-Bindbee-Webhook-Signature"] == (
                base64.urlsafe_b64encode(digest).decode()
            )
        kinds = [json.loads(body)["webhook"]["event"] for body in receiver.bodies()]
        assert kinds == ["connector_sync_started", "connector_synced", "connector_data_modified"]


def test_cli_help_has_no_rest_markup():
    done = cli(argv=sim_argv("--help"), timeout=30)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "--sync-mode" in out and "--webhook-url" in out
    assert "``" not in out


def test_cli_refuses_bad_sync_and_webhook_options():
    for args, words in [
        (["--webhook-url", "http://127.0.0.1:9/"], "secret"),
        (["--sync-duration-seconds", "-1"], "duration"),
        (["--sync-mode", "hourly"], "invalid choice"),
    ]:
        done = subprocess.run(
            sim_argv("--port", "0", "--enrollments", "5", *args),
            capture_output=True,
            text=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != "BINDBEE_SIM_WEBHOOK_SECRET"},
        )
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert done.stdout == ""
