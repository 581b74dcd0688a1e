"""How a refused configuration is told: one line naming the field.

pydantic's ValidationError and PyYAML's errors are translated here, at the edge of
``settings``, into ``ConfigError``: the dotted field (``kafka.partitions``), a plain
reason, and for a missing value the environment variable to set or how to give a file.
The YAML source lives here because its job is that translation: it reads only the file
``settings`` chose (it never looks at the environment).
"""

from __future__ import annotations

import re
import types
from contextvars import ContextVar
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings, YamlConfigSettingsSource

from daemon.errors import ConfigError

CONFIG_ENV = "CHANGEFEED_CONFIG"
_NAMED_MESSAGE = re.compile(r"^([a-z_][a-z0-9_.]*): (.*)$", re.DOTALL)


def yaml_reason(exc: yaml.YAMLError) -> str:
    """The parser's own words and the line (1-based) it stopped at, on one line."""
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    reason = "; ".join(str(part) for part in (context, problem) if part) or str(exc)
    reason = " ".join(reason.split())
    if mark is not None:
        reason += f" (line {mark.line + 1}, column {mark.column + 1})"
    return reason


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "constrained-"))]
    return ".".join(parts) or "config"


def _field_type(root: type[BaseModel], loc: tuple[int | str, ...]) -> Any:
    """The annotation of the field at ``loc`` (Optional unwrapped); None if not a plain path."""
    current: Any = root
    for part in loc:
        if not (isinstance(part, str) and isinstance(current, type)):
            return None
        if not issubclass(current, BaseModel) or part not in current.model_fields:
            return None
        current = _unwrap_optional(current.model_fields[part].annotation)
    return current


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _first_required(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A missing section names its first required field instead (``bindbee.api_key``)."""
    while True:
        section = _field_type(root, loc)
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return loc
        required = [name for name, info in section.model_fields.items() if info.is_required()]
        if not required:
            return loc
        loc = (*loc, required[0])


def _env_var(loc: tuple[int | str, ...]) -> str:
    return "CHANGEFEED_" + "__".join(str(part).upper() for part in loc)


def _missing_hints(
    root: type[BaseModel], loc: tuple[int | str, ...], path: Path | None
) -> list[str]:
    hints = []
    if _field_type(root, loc) is SecretStr:
        hints.append(f"set {_env_var(loc)}")
    if path is None:
        hints.append(f"no config file was given: pass --config FILE or set {CONFIG_ENV}")
    return hints


def describe(root: type[BaseModel], error: Any, path: Path | None) -> ConfigError:
    """One pydantic error of ``root`` as a ConfigError: the field's dotted name and a plain
    reason (``path``: the file that was read, None when none was given)."""
    loc = tuple(error["loc"])
    message = error["msg"]
    kind = error["type"]
    hints: list[str] = []
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "tuple_type":
        # Sequences are tuples only so that settings stay frozen; YAML and users say list.
        message = "Input should be a valid list"
    elif kind == "missing":
        loc = _first_required(root, loc)
        hints = _missing_hints(root, loc, path)
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    field = _field_name(loc)
    # Cross-field validators name the field themselves: "name: what is wrong".
    named = _NAMED_MESSAGE.match(message)
    if named:
        inner, message = named.groups()
        field = inner if field == "config" else f"{field}.{inner}"
        if path is None and message.startswith("Field required"):
            hints = _missing_hints(root, (field,), path)
    if hints:
        message += f" ({'; '.join(hints)})"
    return ConfigError(field, message)


yaml_path: ContextVar[Path | None] = ContextVar("yaml_path", default=None)


class YamlFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source on the file ``load_settings`` chose.

    It reads only an existing file (``load_settings`` refuses a path it cannot read first);
    what it reads must be YAML holding a mapping, or the daemon refuses with the parser's
    reason and line.
    """

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls, yaml_file=yaml_path.get(), yaml_file_encoding="utf-8")

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ConfigError(
                "config", f"{file_path} is not valid YAML: {yaml_reason(exc)}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError("config", f"{file_path} is not UTF-8 text") from None
        if not isinstance(data, dict):
            raise ConfigError("config", f"{file_path} must hold a mapping at the top level")
        return data
