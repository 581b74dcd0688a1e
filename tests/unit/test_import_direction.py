"""The README's import direction, checked: a stage never imports a stage above it.

The picture in README.md ("Development") is the source of these layers. Imports inside a
function count too (a lazy import is still a dependency); only the Alembic revisions and
``TYPE_CHECKING`` blocks are left out, since they never run in the daemon.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parents[2] / "daemon"

# Lowest first. A module may import its own unit and any unit of a lower layer.
LAYERS: list[set[str]] = [
    {"models", "errors", "settings", "settings_errors", "settings_sections", "log", "timestamps"},
    {"backoff", "ops"},
    {"diff", "source", "state", "sink"},
    {"stream"},
    {"runtime"},
    {"schedule"},
    {"service"},
    {"cli", "__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# Development tooling (the `sim` extra) is reached only from the CLI, lazily.
DEV_ONLY = {"devtools", "bindbee_sim"}


def _unit(path: Path) -> str:
    return path.relative_to(DAEMON).parts[0].removesuffix(".py")


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def _modules() -> list[Path]:
    return sorted(p for p in DAEMON.rglob("*.py") if "migrations" not in p.parts)


def test_every_unit_has_a_layer() -> None:
    units = {_unit(p) for p in _modules()} - {"__init__"}
    missing = units - RANK.keys()
    assert not missing, f"add these to the README's picture and to LAYERS: {missing}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(DAEMON)))
def test_imports_point_down(path: Path) -> None:
    unit = _unit(path)
    if unit == "__init__":
        return
    wrong = []
    for line, module in _imports(path):
        top, _, rest = module.partition(".")
        if top in DEV_ONLY and unit != "cli":
            wrong.append(f"line {line}: {module} (development tooling, not in the image)")
        if top != "daemon" or not rest:
            continue
        target = rest.split(".")[0]
        if target != unit and RANK.get(target, -1) > RANK[unit]:
            wrong.append(f"line {line}: {module} ({target} is above {unit})")
    assert not wrong, "\n".join(wrong)
