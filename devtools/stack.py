"""``dev``: a whole local stack — tansu broker, Bindbee simulator, the daemon, a mutator, and
a live view of the events, one line each.

The daemon's log goes to a file in a temporary folder (its path is printed at start); the
folder goes on exit unless ``keep``. The configuration is validated before anything is
started, so a bad config costs no broker start.
"""

from __future__ import annotations

import contextlib
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
import yaml
from rich.console import Console

from daemon import log as logsetup
from daemon.cli.tail import EventView
from daemon.errors import ConfigError
from daemon.settings import CONFIG_ENV, Settings, config_path, load_settings

DEV_CONNECTORS = {"acme": "tok_acme", "globex": "tok_globex"}
DEV_ENROLLMENTS = 200
MUTATE_EVERY_SECONDS = 3.0
# The repository's config/dev.yaml, found from the package (editable install), not from cwd.
REPO_DEV_CONFIG = Path(__file__).resolve().parents[2] / "config" / "dev.yaml"
# Stand-ins that only let the configuration validate before the real ports exist.
_PLACEHOLDERS: dict[str, Any] = {
    "bindbee": {"base_url": "http://127.0.0.1:9", "api_key": "placeholder"},
    "kafka": {"bootstrap_servers": "127.0.0.1:9"},
    # url: None, so a CHANGEFEED_STATE__URL in the shell never points dev at a real store.
    "state": {"path": "changefeed.db", "url": None},
}


@dataclass(frozen=True)
class DevOptions:
    """What ``lms-changefeed dev`` was asked for."""

    config: Path | None = None
    seed: int | None = None
    verbose: bool = False
    keep: bool = False


def resolve_config(path: Path | str | None) -> Path:
    """``--config``, else ``$CHANGEFEED_CONFIG``, else the repository's config/dev.yaml; as an
    absolute path, so what is printed works from any directory."""
    path = config_path(path)
    if path is None:
        if not REPO_DEV_CONFIG.is_file():
            raise ConfigError(
                "config",
                f"dev needs a configuration: pass --config FILE or set {CONFIG_ENV} "
                "(the repository's config/dev.yaml is a starting point)",
            )
        path = REPO_DEV_CONFIG
    return Path(path).expanduser().resolve()


def cli_command() -> str:
    """``lms-changefeed`` as it can be typed here: the bare name when PATH finds this
    install's script, else that script's path (``.venv/bin/lms-changefeed`` from the
    repository), else this interpreter with ``-m daemon``."""
    script = Path(sys.executable).parent / "lms-changefeed"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m daemon"
    found = shutil.which("lms-changefeed")
    if found is not None and Path(found).resolve() == script.resolve():
        return "lms-changefeed"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


def _status_command(config: Path) -> str:
    return f"{cli_command()} status --config {shlex.quote(str(config))}"


def _sim_connectors(settings: Settings) -> dict[str, str]:
    tokens = {
        c.name: c.token.get_secret_value() for c in settings.connectors if c.token is not None
    }
    return tokens or dict(DEV_CONNECTORS)


def delete_hints(settings: Settings) -> tuple[str, str]:
    """When deletes of enrollments show up: for the start banner, and after a mutation.

    A listing cannot show an absence: only a full scan notices a record is gone.
    """
    model = settings.models["enrollments"]
    if getattr(model, "trigger", "interval") == "sync":
        check = getattr(settings.bindbee, "sync_check_interval_seconds", None)
        within = f", within about {check:g}s here" if check else ""
        return (
            "are published by the full scan that follows each Bindbee sync "
            f"(the simulator syncs at every change{within}), not by a poll",
            "its deleted event comes with the full scan after the next sync",
        )
    every = model.full_scan_interval_seconds
    return (
        f"are published at the next full scan (every {every:g}s here), not at the next poll",
        f"its deleted event comes with the next full scan, within {every:g}s",
    )


def _mutate(
    sim: Any, stop: threading.Event, view: EventView, every: float, seed: int, delete_hint: str
) -> None:
    """Create, update and delete an enrollment every ``every`` seconds, saying so."""
    rng = random.Random(seed)
    log = structlog.get_logger("daemon.dev")
    connectors = sorted(sim.tokens)
    while not stop.wait(every):
        connector = rng.choice(connectors)
        ids = sim.ids(connector, "enrollments")
        action = rng.choice(("create", "update", "update", "delete"))
        if not ids:
            continue
        if action == "create":
            template = sim.get(connector, "enrollments", rng.choice(ids))
            fields = {k: v for k, v in template.items() if k not in ("id", "modified_at")}
            fields["remote_id"] = f"dev-{rng.randrange(10**9)}"
            record_id = sim.create(connector, "enrollments", fields)["id"]
            note = f"mutator: created {connector}/enrollments {record_id}"
        elif action == "update":
            record_id = rng.choice(ids)
            day = rng.randrange(1, 28)
            sim.update(
                connector,
                "enrollments",
                record_id,
                {"start_date": f"2026-01-{day:02d}T09:00:00Z"},
            )
            note = f"mutator: updated {connector}/enrollments {record_id} start_date"
        else:
            record_id = rng.choice(ids)
            sim.delete(connector, "enrollments", record_id)
            note = f"mutator: deleted {connector}/enrollments {record_id} ({delete_hint})"
        log.info("dev_mutation", connector=connector, action=action, id=record_id)
        view.note(note)


def _effective_config(source: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The YAML of ``source`` with the stack's ports and paths filled in."""
    data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    for section, values in overrides.items():
        data[section] = {**(data.get(section) or {}), **values}
    return data


def run_dev(options: DevOptions, console: Console | None = None) -> int:
    """Run the dev stack until Ctrl-C (exit code 130) or SIGTERM (0)."""
    config = resolve_config(options.config)
    # Everything that can be refused is refused here, before a broker or simulator starts.
    settings = load_settings(config, **_PLACEHOLDERS)
    from daemon.sink.kafka import KafkaSink

    KafkaSink(settings.kafka)  # checks the compression codec; no I/O
    if "enrollments" not in settings.models:
        raise ConfigError("models", "dev mutates enrollments: configure models.enrollments")
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(10**6)
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="lms-changefeed-dev-"))
    log_file: IO[str] | None = None
    failed = True
    try:
        log_file = (workdir / "changefeed.log").open("a", encoding="utf-8", buffering=1)
        logsetup.configure(settings.log.level, "json", stream=log_file)
        banner_hint, delete_hint = delete_hints(settings)
        console.print(
            "[bold]lms-changefeed dev[/bold]: broker, simulator, daemon and a mutator on this "
            "machine; Ctrl-C stops",
            highlight=False,
        )
        for label, value in (
            ("config", str(config)),
            ("logs", f"{workdir / 'changefeed.log'} (the daemon's log; tail -f it)"),
            ("mutator", f"seed {seed} (--seed {seed} repeats these changes)"),
            ("deletes", banner_hint),
            (
                "workdir",
                f"{workdir} (kept: --keep)" if options.keep else f"{workdir} (removed on exit)",
            ),
        ):
            console.print(f"  {label:8} {value}", highlight=False, soft_wrap=True)
        try:
            code = _run(options, settings, config, workdir, seed, delete_hint, console)
        except KeyboardInterrupt:  # Ctrl-C during start-up: nothing worth keeping
            failed = False
            raise
        failed = False
        return code
    finally:
        # The log file goes with the folder: later library lines must not write to it.
        logsetup.configure(settings.log.level, "console", stream=sys.stderr)
        if log_file is not None:
            log_file.close()
        if options.keep or failed:
            console.print(
                f"kept {workdir} (logs: {workdir / 'changefeed.log'})\n"
                f"  {_status_command(workdir / 'changefeed.yaml')}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            shutil.rmtree(workdir, ignore_errors=True)


class _StopSignals:
    """While entered, SIGINT and SIGTERM set ``stop`` (a clean stop); ``received`` names
    the first. Before that, Ctrl-C interrupts the start-up (KeyboardInterrupt)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = self.received or signal.Signals(signum).name
        self.stop.set()

    def __enter__(self) -> _StopSignals:
        self._previous = {
            signum: signal.signal(signum, self._handle)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            with contextlib.suppress(Exception):
                signal.signal(signum, handler)


def _stack_settings(config: Path, workdir: Path, sim: Any, bootstrap: str) -> Settings:
    """The configuration on the stack's simulator and broker, also written (0600) to
    ``workdir/changefeed.yaml`` for the ``status`` command the banner shows."""
    overrides = {
        "bindbee": {"base_url": sim.base_url, "api_key": sim.api_key},
        "kafka": {"bootstrap_servers": bootstrap},
        "state": {"path": str(workdir / "changefeed.db"), "url": None},
    }
    effective = workdir / "changefeed.yaml"
    effective.write_text(yaml.safe_dump(_effective_config(config, overrides)))
    effective.chmod(0o600)
    return load_settings(config, **overrides)


def _run(
    options: DevOptions,
    checked: Settings,
    config: Path,
    workdir: Path,
    seed: int,
    delete_hint: str,
    console: Console,
) -> int:
    from bindbee_sim import SimServer
    from daemon.cli.tail import tail
    from daemon.runtime import Runtime
    from daemon.schedule.scheduler import Scheduler
    from daemon.sink.kafka_clients import client_configs
    from devtools.tansu import TansuBroker

    stop = threading.Event()
    with (
        TansuBroker(log_path=workdir / "tansu.log") as broker,
        SimServer(
            connectors=_sim_connectors(checked),
            enrollments=DEV_ENROLLMENTS,
            seed=1,
            honor_modified_after=True,
            rate_limit=200,
        ) as sim,
    ):
        settings = _stack_settings(config, workdir, sim, broker.bootstrap)
        runtime = Runtime.open(settings, stop=stop)
        with _StopSignals(stop) as signals:
            console.print(
                f"  {'stack':8} simulator {sim.base_url}, kafka {broker.bootstrap}; "
                f"meanwhile: {_status_command(workdir / 'changefeed.yaml')}",
                highlight=False,
                soft_wrap=True,
            )
            scheduler = Scheduler(runtime)
            view = EventView(console, summarise_initial=not options.verbose, show_time=False)
            started = False
            try:
                topics = sorted(
                    {settings.kafka.topic_for(c, m) for c in _sim_connectors(settings)
                     for m in settings.models}
                )  # fmt: skip
                runtime.sink.ensure_topics(topics)
                scheduler.start()
                started = True
                threading.Thread(
                    target=_mutate,
                    args=(sim, stop, view, MUTATE_EVERY_SECONDS, seed, delete_hint),
                    name="dev-mutator",
                    daemon=True,
                ).start()
                configs = client_configs(settings.kafka)
                tail(configs, topics, from_beginning=True, stop=stop, view=view)
            finally:
                stop.set()
                console.print("stopping…", style="dim", highlight=False)
                if started:
                    scheduler.shutdown(settings.scheduler.shutdown_timeout_seconds)
                runtime.close()
    # Ctrl-C is an interruption (130); SIGTERM the ordinary way to stop (0).
    return 130 if signals.received == "SIGINT" else 0
