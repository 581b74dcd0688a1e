"""The command line without processes: argument checks, one config reader, the error tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from daemon import errors
from daemon.cli import build_parser, main
from daemon.errors import ConfigError, Refused, StoreMissing, UsageError
from daemon.settings import StateSettings, load_kafka_settings

REPO = Path(__file__).resolve().parents[2]


def test_refusals_share_one_class_and_the_tree_names_them() -> None:
    for cls in (ConfigError, UsageError, StoreMissing):
        assert issubclass(cls, Refused)
        assert cls.__name__ in (errors.__doc__ or "")
    assert "invalid config" not in str(UsageError("--model: unknown model 'x'"))


def test_only_settings_reads_the_environment() -> None:
    readers = []
    for path in sorted((REPO / "daemon").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                readers.append(path.relative_to(REPO).as_posix())
    assert set(readers) <= {"daemon/settings.py"}, readers


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@db.example:5433/feed", "PostgreSQL db.example:5433/feed"),
        ("postgres://u:s3cret@db.example/feed?password=s3cret", "PostgreSQL db.example:5432/feed"),
    ],
)
def test_a_postgresql_store_is_named_by_host_and_database(url: str, shown: str) -> None:
    assert StateSettings(url=url).location() == shown
    assert "s3cret" not in shown


def test_tail_settings_read_only_the_kafka_section(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"partitions": 2}, "bindbee": {"no": 1}}))
    monkeypatch.setenv("CHANGEFEED_KAFKA__CLIENT_ID", "from-env")
    with pytest.raises(ConfigError, match="--bootstrap"):
        load_kafka_settings(config)
    kafka = load_kafka_settings(config, bootstrap="h:1")
    assert (kafka.bootstrap_servers, kafka.partitions, kafka.client_id) == ("h:1", 2, "from-env")
    monkeypatch.setenv("CHANGEFEED_KAFKA__PARTITIONS", "0")
    with pytest.raises(ConfigError, match=r"kafka\.partitions"):
        load_kafka_settings(config, bootstrap="h:1")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["tail", "--topic", "t", "--limit", "0"], "--limit"),
        (["broker", "--port", "70000"], "--port"),
    ],
)
def test_bad_values_are_refused_by_the_parser_naming_the_argument(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "invalid config" not in err


def test_schema_with_an_unknown_model_names_the_argument(capsys: pytest.CaptureFixture) -> None:
    assert main(["schema", "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lms-changefeed: --model:") and "'nope'" in err
    assert "invalid config" not in err


def test_broker_is_a_command() -> None:
    args = build_parser().parse_args(["broker", "--port", "0"])
    assert args.command == "broker" and args.port == 0


@pytest.mark.parametrize(
    ("seconds", "shown"), [(-3, "0s"), (42, "42s"), (119, "119s"), (120, "2m"), (7200, "2h")]
)
def test_ages_are_shown_to_the_unit_that_matters(seconds: float, shown: str) -> None:
    from daemon.cli.common import age

    assert age(seconds) == shown


def test_lease_and_due_cells() -> None:
    from daemon.cli.status_view import due_cell, lease_cell
    from daemon.models import LeaseInfo

    lease = LeaseInfo("stream:1", "r2", acquired_at=100.0, expires_at=130.0)
    assert lease_cell(None, 110.0) == "-"
    assert lease_cell(lease, 112.0) == "r2 12s"
    assert lease_cell(lease, 131.0) == "r2 31s (expired)"
    assert (due_cell(None, 5.0), due_cell(4.0, 5.0), due_cell(305.0, 5.0)) == (
        "now",
        "now",
        "in 5m",
    )


@pytest.mark.parametrize(
    ("spacing", "since", "missed", "total", "unread", "shown"),
    [
        (1, 0, None, 0, 0, "every sync (0 since)"),
        (4, 2, 0, 3, 0, "every 4 syncs (2 since), missed 0 (total 3)"),
        (1, 0, 2, 2, 5, "every sync (0 since), missed 2 (total 2), 5 hints unread"),
        (7, 1, None, 4, 0, "every 7 syncs (1 since), missed - (total 4)"),
    ],
)
def test_walks_cell_says_spacing_misses_and_unread_hints(
    spacing: int, since: int, missed: int | None, total: int, unread: int, shown: str
) -> None:
    from daemon.cli.status_view import walks_cell
    from daemon.models import HintStatus

    assert walks_cell(HintStatus(spacing, since, missed, total, unread)) == shown
    assert walks_cell(None) == "-"
