"""Configuration: YAML + env, and bad config refused with exit 2 naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daemon.__main__ import main
from daemon.errors import ConfigError
from daemon.settings import load_settings

GOOD = {
    "bindbee": {"base_url": "http://127.0.0.1:1", "api_key": "k-secret-123"},
    "connectors": [{"name": "acme", "token": "tok-secret-456"}],
    "models": {"enrollments": {"poll_interval_seconds": 10}},
    "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
}


def write_config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def with_(path: str, value: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    node = data
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return data


def test_env_wins_over_file_and_nests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, GOOD)
    monkeypatch.setenv("CHANGEFEED_BINDBEE__PAGE_SIZE", "25")
    monkeypatch.setenv("CHANGEFEED_KAFKA__BOOTSTRAP_SERVERS", "broker:1")
    monkeypatch.setenv("CHANGEFEED_CONFIG", str(path))
    settings = load_settings()
    assert settings.bindbee.page_size == 25
    assert settings.kafka.bootstrap_servers == "broker:1"
    assert settings.bindbee.api_key.get_secret_value() == "k-secret-123"
    assert "k-secret-123" not in repr(settings) and "tok-secret-456" not in repr(settings)


def test_token_from_named_env_and_per_connector_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = with_(
        "connectors",
        [
            {
                "name": "acme",
                "token_env": "ACME_TOKEN",
                "poll_interval_seconds": {"enrollments": 3},
            },
            {"name": "globex", "token": "t2"},
        ],
    )
    monkeypatch.setenv("ACME_TOKEN", "from-env")
    settings = load_settings(write_config(tmp_path, data))
    assert settings.connector("acme").token.get_secret_value() == "from-env"
    assert settings.poll_interval("acme", "enrollments") == 3
    assert settings.poll_interval("globex", "enrollments") == 10


BAD = [
    (
        "interval zero",
        with_("models.enrollments.poll_interval_seconds", 0),
        "models.enrollments.poll_interval_seconds",
    ),
    (
        "interval negative",
        with_("models.enrollments.poll_interval_seconds", -5),
        "models.enrollments.poll_interval_seconds",
    ),
    (
        "connector interval zero",
        with_(
            "connectors",
            [{"name": "a", "token": "x", "poll_interval_seconds": {"enrollments": 0}}],
        ),
        "connectors.0",
    ),
    ("page_size 0", with_("bindbee.page_size", 0), "bindbee.page_size"),
    ("page_size 101", with_("bindbee.page_size", 101), "bindbee.page_size"),
    ("unknown model", with_("models.grades", {}), "models"),
    (
        "bad topic placeholder",
        with_("kafka.topic_template", "lms.{tenant}"),
        "kafka.topic_template",
    ),
    ("empty bootstrap", with_("kafka.bootstrap_servers", " , "), "kafka.bootstrap_servers"),
    (
        "duplicate connectors",
        with_("connectors", [{"name": "a", "token": "x"}, {"name": "a", "token": "y"}]),
        "connectors",
    ),
    ("missing token", with_("connectors", [{"name": "a"}]), "connectors.0"),
    ("unknown top-level key", with_("surprise", 1), "surprise"),
    (
        "negative lookback",
        with_("models.enrollments.lookback_seconds", -1),
        "models.enrollments.lookback_seconds",
    ),
    (
        "missing bindbee section",
        {k: v for k, v in GOOD.items() if k != "bindbee"},
        "bindbee.api_key",
    ),
    (
        "bad delete fraction",
        with_("models.enrollments.max_delete_fraction", 1.5),
        "models.enrollments.max_delete_fraction",
    ),
    (
        "bad initial_sync",
        with_("models.enrollments.initial_sync", "later"),
        "models.enrollments.initial_sync",
    ),
    (
        "override for unconfigured model",
        with_("connectors", [{"name": "a", "token": "x", "poll_interval_seconds": {"users": 5}}]),
        "connectors",
    ),
    (
        "delivery timeout below request timeout",
        with_("kafka.delivery_timeout_ms", 1000),
        "kafka.delivery_timeout_ms",
    ),
    ("malformed YAML", "bindbee: [unclosed\n", "config"),
    ("not a mapping", "- 1\n- 2\n", "config"),
]


@pytest.mark.parametrize(("case", "data", "field"), BAD, ids=[c[0] for c in BAD])
def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, data: object, field: str
) -> None:
    path = write_config(tmp_path, data)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"invalid config: {field}:" in err, err
    assert "secret" not in err


def refusal(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI with ``args``: exit 2 and one line on stderr, returned without the prefix."""
    assert main(["check-config", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    prefix = "lms-changefeed: invalid config: "
    assert err.startswith(prefix), err
    return err[len(prefix) :]


def test_missing_secret_names_its_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = with_("bindbee", {"base_url": "http://127.0.0.1:1"})
    line = refusal(capsys, "--config", str(write_config(tmp_path, data)))
    assert line == "bindbee.api_key: Field required (set CHANGEFEED_BINDBEE__API_KEY)"


def test_unset_token_env_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACME_TOKEN_UNSET", raising=False)
    data = with_("connectors", [{"name": "acme", "token_env": "ACME_TOKEN_UNSET"}])
    line = refusal(capsys, "--config", str(write_config(tmp_path, data)))
    assert line.startswith("connectors.0: connector 'acme' has no token"), line
    assert "ACME_TOKEN_UNSET" in line


def test_a_sequence_given_as_a_mapping_asks_for_a_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = with_("connectors", {"acme": {"token": "t"}})
    line = refusal(capsys, "--config", str(write_config(tmp_path, data)))
    assert line == "connectors: Input should be a valid list"
    data = with_("models.enrollments.ignore_fields", {"a": 1})
    line = refusal(capsys, "--config", str(write_config(tmp_path, data)))
    assert line == "models.enrollments.ignore_fields: Input should be a valid list"
    assert "tuple" not in line


@pytest.mark.parametrize(
    ("text", "reason", "line"),
    [
        ("bindbee: [unclosed\n", "expected ',' or ']'", 2),
        ("bindbee:\n  api_key: k\n connectors: x\n", "expected <block end>", 3),
        ('bindbee: {api_key: k}\nbindbee: "unterminated\n', "found unexpected end of stream", 3),
    ],
)
def test_broken_yaml_gives_the_parsers_reason_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str, line: int
) -> None:
    path = write_config(tmp_path, text)
    refused = refusal(capsys, "--config", str(path))
    assert refused.startswith(f"config: {path} is not valid YAML: "), refused
    assert reason in refused and f"(line {line}, column " in refused, refused


def test_no_config_file_at_all_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("CHANGEFEED_")]:
        monkeypatch.delenv(name)
    line = refusal(capsys)
    assert line.startswith("bindbee.api_key: Field required ("), line
    assert "no config file was given" in line
    assert "--config" in line and "CHANGEFEED_CONFIG" in line
    # With the secret in the environment, the next missing field says the same.
    monkeypatch.setenv("CHANGEFEED_BINDBEE__API_KEY", "k-secret-123")
    line = refusal(capsys)
    assert line.startswith("connectors: Field required (at least one connector"), line
    assert "no config file was given" in line
    assert "k-secret-123" not in line


def test_a_named_file_shows_no_missing_file_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {k: v for k, v in GOOD.items() if k != "connectors"}
    line = refusal(capsys, "--config", str(write_config(tmp_path, data)))
    assert line.startswith("connectors: Field required (at least one connector"), line
    assert "no config file" not in line


def test_unreadable_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "invalid config: config: cannot read" in capsys.readouterr().err


def test_config_path_that_is_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "invalid config: config: cannot read" in err, err


def test_config_file_without_read_permission(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    path = write_config(tmp_path, GOOD)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: file permissions do not stop reads")
        line = refusal(capsys, "--config", str(path))
    finally:
        path.chmod(0o600)
    assert line == f"config: cannot read {path}: Permission denied"


def test_empty_config_file_is_no_settings_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refusal(capsys, "--config", str(write_config(tmp_path, "")))
    assert line == "bindbee.api_key: Field required (set CHANGEFEED_BINDBEE__API_KEY)"


def test_config_error_names_field() -> None:
    error = ConfigError("kafka.partitions", "must be ≥ 1")
    assert str(error) == "invalid config: kafka.partitions: must be ≥ 1"
