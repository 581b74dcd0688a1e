"""JSON Schemas (draft 2020-12) of the events: the consumer contract, machine-readable.

Three kinds of schema per model, each its own resource (file) so a consumer can fetch
what an event's ``dataschema`` names:

- ``{model}.record``: the record as the Bindbee API returns it (``data.record``);
- ``{model}.{kind}.data``: the CloudEvent's ``data``; this is what ``dataschema`` names,
  as CloudEvents defines it ("the schema that data adheres to");
- ``{model}.{kind}``: the whole CloudEvent (envelope), whose ``data`` refers to the above.

``kind`` is ``created``, ``updated`` or ``deleted`` (on the data topic), ``rejected`` (a
poison record, on the dead-letter topic ``kafka.dead_letter_topic``) or ``scan_completed``
(a scan's marker, on the control topic ``kafka.control_topic``). ``$id``s are URNs
(``urn:lms-changefeed:schema:enrollments.updated:1``) or, with a base URI, ``{base}/{file}``
so the generated files can be served from there. Regenerate docs/schemas with
``python -m daemon.sink.schemas --write docs/schemas``.

The events' schemas are generated from their definitions in ``shape.py`` (the same
TypedDicts ``events.py`` builds); the records' fields come from ``records.py`` (the API
reference).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from daemon.settings import LMS_MODELS
from daemon.sink import shape
from daemon.sink.records import RECORD_FIELDS

Schema = dict[str, Any]

SCHEMA_VERSION = 1
"""Bumped on an incompatible change: it is part of every URN, so old and new never mix."""

DIALECT = "https://json-schema.org/draft/2020-12/schema"
CHANGE_KINDS = ("created", "updated", "deleted")
DEAD_LETTER_KINDS = ("rejected",)
CONTROL_KINDS = ("scan_completed", "hints_read")
# Kinds whose schema is published before the daemon emits them (none at the moment).
RESERVED_KINDS: tuple[str, ...] = ()
EVENT_KINDS = CHANGE_KINDS + DEAD_LETTER_KINDS + CONTROL_KINDS + RESERVED_KINDS

_URN_PREFIX = "urn:lms-changefeed:schema:"
_RESERVED_NOTE = "Reserved, not yet emitted: the shape a later version will publish."

# ---- names and ids ---------------------------------------------------------------------


def schema_name(model: str, kind: str) -> str:
    """``enrollments.updated``, ``enrollments.updated.data`` or ``enrollments.record``."""
    return f"{model}.{kind}"


def schema_id(name: str, base_uri: str | None = None) -> str:
    """The ``$id`` of the schema called ``name``: a URN, or ``{base_uri}/{name}.json``."""
    if base_uri is None:
        return f"{_URN_PREFIX}{name}:{SCHEMA_VERSION}"
    return f"{base_uri.rstrip('/')}/{name}.json"


@lru_cache(maxsize=256)  # a handful of (model, kind, base) values, asked once per event
def data_schema_id(model: str, kind: str, base_uri: str | None = None) -> str:
    """What a CloudEvent's ``dataschema`` carries: the id of its ``data`` schema."""
    return schema_id(schema_name(model, f"{kind}.data"), base_uri)


def _check(model: str, kind: str | None = None) -> None:
    if model not in LMS_MODELS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(LMS_MODELS)}")
    if kind is not None and kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")


def _resource(name: str, base_uri: str | None, title: str, description: str) -> Schema:
    return {
        "$schema": DIALECT,
        "$id": schema_id(name, base_uri),
        "title": title,
        "description": description,
    }


# ---- events: generated from their TypedDicts (daemon/sink/shape.py) --------------------

_SHAPES: dict[str, tuple[type, type]] = {
    **{kind: (shape.ChangeCloudEvent, shape.ChangeData) for kind in CHANGE_KINDS + RESERVED_KINDS},
    "rejected": (shape.RejectedCloudEvent, shape.RejectedData),
    "scan_completed": (shape.ScanCompletedCloudEvent, shape.ScanCompletedData),
    "hints_read": (shape.HintsReadCloudEvent, shape.HintsReadData),
}
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class _Context:
    """The event a schema is generated for: fills ``Doc.slot`` values and ``only_on``."""

    model: str
    kind: str
    base_uri: str | None

    def slot(self, name: str) -> Schema:
        data_id = data_schema_id(self.model, self.kind, self.base_uri)
        if name == "type":
            return {"const": f"bindbee.lms.{self.model}.{self.kind}"}
        if name == "model":
            return {"const": self.model}
        if name == "dataschema":
            return {"type": "string", "format": "uri", "const": data_id}
        if name == "data":
            return {"$ref": data_id}
        if name == "record":
            return {"$ref": schema_id(schema_name(self.model, "record"), self.base_uri)}
        raise ValueError(f"unknown slot {name!r}")


def _doc_of(tp: Any) -> shape.Doc | None:
    if get_origin(tp) is NotRequired:
        tp = get_args(tp)[0]
    if get_origin(tp) is Annotated:
        return next((m for m in tp.__metadata__ if isinstance(m, shape.Doc)), None)
    return None


def _translate(tp: Any, ctx: _Context) -> Schema:
    """The JSON Schema of a Python type of shape.py."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is NotRequired:
        return _translate(args[0], ctx)
    if origin is Annotated:
        note = _doc_of(tp)
        out = _translate(args[0], ctx) if note is None or note.slot is None else ctx.slot(note.slot)
        if note is not None:
            out = {**out, **note.keywords}
            if note.description:
                out["description"] = note.description
        return out
    if tp is Any:
        return {}
    if origin is Literal:
        return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
    if origin in (Union, UnionType):
        options = [_translate(arg, ctx) for arg in args if arg is not type(None)]
        if type(None) in args:
            options.append({"type": "null"})
        return {"anyOf": options}
    if is_typeddict(tp):
        return _object(tp, ctx)
    if origin is dict:
        out: Schema = {"type": "object", "additionalProperties": _translate(args[1], ctx)}
        if args[0] is not str:
            out["propertyNames"] = _translate(args[0], ctx)
        return out
    if origin is list:
        return {"type": "array", "items": _translate(args[0], ctx)}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _object(typed: type, ctx: _Context) -> Schema:
    """A TypedDict as an object schema: its keys, which are required, unknown keys allowed."""
    properties: dict[str, Schema | bool] = {}
    required = []
    for name, tp in get_type_hints(typed, include_extras=True).items():
        note = _doc_of(tp)
        if note is not None and note.only_on and ctx.kind not in note.only_on:
            properties[name] = False
            continue
        properties[name] = _translate(tp, ctx)
        if get_origin(tp) is not NotRequired or (note is not None and note.only_on):
            required.append(name)
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
    }


# ---- the schemas -----------------------------------------------------------------------


def record_schema(model: str, base_uri: str | None = None) -> Schema:
    """A ``{model}`` record as the API returns it; unknown fields are allowed."""
    _check(model)
    return {
        **_resource(
            schema_name(model, "record"),
            base_uri,
            f"Bindbee LMS {model} record",
            f"One {model} record as GET /api/lms/v1/{model} returns it (`data.record` of "
            "an event). Only `id` and `modified_at` are guaranteed; fields the API adds "
            "later are allowed.",
        ),
        "type": "object",
        "required": ["id", "modified_at"],
        "properties": RECORD_FIELDS[model],
        "additionalProperties": True,
    }


def _data_description(model: str, kind: str) -> str:
    if kind == "rejected":
        return (
            "A dead letter: an item of a well-formed page that could not be diffed, as the "
            "API returned it, after the page was fetched `bindbee.max_attempts` times. "
            "Published once per distinct content (`fingerprint`); the rest of the page went on."
        )
    if kind == "scan_completed":
        return (
            "A scan of one stream (connector x model) completed: what it covered, what it "
            "found, and up to which offsets of the data topic its events went. On the "
            "control topic (`kafka.control_topic`), keyed by `connector/model`; see "
            "docs/consumers.md."
        )
    if kind == "hints_read":
        return (
            "A targeted read of one stream completed: the records that webhook hints "
            "(`connector_data_modified`) named were read by id, and their changes are on "
            "the data topic up to `partitions`. Not a scan: it vouches for no other record. "
            "On the control topic, keyed by `connector/model`; see docs/consumers.md."
        )
    note = " (the last known record)" if kind == "deleted" else ""
    return f"A record of {model} was {kind}{note}. `changes` only on updated."


def data_schema(model: str, kind: str, base_uri: str | None = None) -> Schema:
    """The ``data`` of a ``{model}.{kind}`` CloudEvent (what ``dataschema`` names)."""
    _check(model, kind)
    name, title = schema_name(model, f"{kind}.data"), f"data of bindbee.lms.{model}.{kind}"
    body = _object(_SHAPES[kind][1], _Context(model, kind, base_uri))
    return {**_resource(name, base_uri, title, _data_description(model, kind)), **body}


def event_schema(model: str, kind: str, base_uri: str | None = None) -> Schema:
    """The whole ``bindbee.lms.{model}.{kind}`` CloudEvent 1.0 (structured mode)."""
    _check(model, kind)
    if kind in CHANGE_KINDS:
        description = f"A record of {model} was {kind}."
    elif kind in DEAD_LETTER_KINDS:
        description = (
            f"An item of {model} the daemon could not use (a poison record), on the "
            "dead-letter topic."
        )
    elif kind == "hints_read":
        description = f"A targeted read of a {model} stream (hinted ids) completed."
    elif kind in CONTROL_KINDS:
        description = f"A scan of a {model} stream completed (a marker), on the control topic."
    else:
        description = f"{_RESERVED_NOTE} bindbee.lms.{model}.{kind}."
    title = f"bindbee.lms.{model}.{kind}"
    body = _object(_SHAPES[kind][0], _Context(model, kind, base_uri))
    return {**_resource(schema_name(model, kind), base_uri, title, description), **body}


def schema(model: str, kind: str, base_uri: str | None = None) -> Schema:
    """The schema of (model, kind): an event kind, ``{kind}.data`` or ``record``."""
    if kind == "record":
        return record_schema(model, base_uri)
    if kind.endswith(".data"):
        return data_schema(model, kind.removesuffix(".data"), base_uri)
    return event_schema(model, kind, base_uri)


def all_schemas(base_uri: str | None = None, model: str | None = None) -> dict[str, Schema]:
    """File name -> schema, for every model (or one), in a stable order."""
    models = LMS_MODELS if model is None else (model,)
    for name in models:
        _check(name)
    out: dict[str, Schema] = {}
    for name in models:
        out[f"{schema_name(name, 'record')}.json"] = record_schema(name, base_uri)
        for kind in EVENT_KINDS:
            out[f"{schema_name(name, kind)}.json"] = event_schema(name, kind, base_uri)
            out[f"{schema_name(name, kind)}.data.json"] = data_schema(name, kind, base_uri)
    return out


# ---- output ----------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """Deterministic JSON: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render(model: str | None = None, base_uri: str | None = None) -> str:
    """Every schema (or one model's) as one JSON object, file name -> schema."""
    return dumps(all_schemas(base_uri, model))


def index(base_uri: str | None = None) -> str:
    """docs/schemas/README.md: what each file is."""
    lines = [
        "# Event schemas (JSON Schema draft 2020-12)",
        "",
        "Generated by `python -m daemon.sink.schemas --write docs/schemas`: do not edit by",
        "hand (a test fails when these files differ from what the code generates).",
        "",
        "Per model: `{model}.{kind}.json` is the whole CloudEvent, `{model}.{kind}.data.json`",
        "its `data` (what the event's `dataschema` names) and `{model}.record.json` the",
        "record in `data.record`. The schemas refer to one another by `$id`: load them all",
        "into one registry. `rejected` events go to the dead-letter topic",
        "(`kafka.dead_letter_topic`), `scan_completed` and `hints_read` markers to the",
        "control topic (`kafka.control_topic`; how to use them:",
        "[docs/consumers.md](../consumers.md)).",
        "",
        f"**Versions.** The number ending each URN (now {SCHEMA_VERSION}) changes only when a",
        "schema stops admitting events it admitted before. Version 1 was corrected in place",
        "when it was found to refuse what the daemon publishes: an enrollment's `user` and",
        "`course` may be null (the API types them as any), a record's datetimes are ISO 8601",
        "as the API sent them (no `format: date-time`, which demands an RFC 3339 offset), a",
        "user's `email_address` carries no `format`, and `dataschema` and the partition keys",
        "of markers declare `type: string` (strict validators refuse `format` or `pattern`",
        "without a type). The URN was not bumped: the schemas only admit more, and the events",
        "on the wire did not change (the daemon already published those values), so every",
        "event published under `:1` validates against the corrected `:1`, while a new number",
        "would have made consumers that pin `dataschema` drop events whose bytes are the",
        "same. If you generated types from these schemas, regenerate them: those fields can",
        "be null.",
        "",
        "| file | `$id` | what |",
        "| --- | --- | --- |",
    ]
    for file, value in all_schemas(base_uri).items():
        what = value["title"]
        if any(f".{kind}." in file for kind in RESERVED_KINDS):
            what += " (reserved, not yet emitted)"
        lines.append(f"| [`{file}`]({file}) | `{value['$id']}` | {what} |")
    return "\n".join(lines) + "\n"


def write(directory: Path, base_uri: str | None = None) -> list[Path]:
    """Write every schema and the index into ``directory``; drop stale ``*.json`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: dumps(value) for name, value in all_schemas(base_uri).items()}
    files["README.md"] = index(base_uri)
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.sink.schemas", description="Print or write the event schemas."
    )
    parser.add_argument("--write", metavar="DIR", type=Path, help="write the files into DIR")
    parser.add_argument("--model", choices=LMS_MODELS, help="print one model's schemas")
    parser.add_argument("--base-uri", help="base of the $ids instead of URNs")
    args = parser.parse_args(argv)
    if args.write is not None:
        written = write(args.write, args.base_uri)
        print(f"wrote {len(written)} files to {args.write}")
    else:
        sys.stdout.write(render(args.model, args.base_uri))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
