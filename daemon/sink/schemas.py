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
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from daemon.settings import LMS_MODELS

Schema = dict[str, Any]

SCHEMA_VERSION = 1
"""Bumped on an incompatible change: it is part of every URN, so old and new never mix."""

DIALECT = "https://json-schema.org/draft/2020-12/schema"
CHANGE_KINDS = ("created", "updated", "deleted")
DEAD_LETTER_KINDS = ("rejected",)
CONTROL_KINDS = ("scan_completed",)
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


# ---- building blocks -------------------------------------------------------------------


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _datetime(description: str) -> Schema:
    return _string(description + " (ISO 8601).", format="date-time")


def _relation(target: str, *, nullable: bool) -> Schema:
    # Without ``expand`` a relation is the related record's id; with it, the related
    # object (``rel[f1,f2]`` picks its fields, so not even ``id`` is certain).
    options: list[Schema] = [
        {"type": "string", "format": "uuid", "description": f"The related {target} id."},
        {
            "type": "object",
            "description": f"The related {target} record, inlined by `expand`.",
        },
    ]
    if nullable:
        options.append({"type": "null"})
    return {"anyOf": options}


def _inferred(schema: Schema) -> Schema:
    # The API reference names these fields without types: typed by the obvious reading,
    # and nullable, since nothing promises a value.
    return _nullable(schema)


_COMMON_FIELDS: dict[str, Schema] = {
    "id": _string("Bindbee's id of the record (UUID): the event key.", format="uuid"),
    "remote_id": _nullable(_string("The LMS's own id.")),
    "modified_at": _datetime("When Bindbee last rewrote the record"),
    "custom_fields": _nullable(
        {"type": "object", "description": "Only with `include_custom_fields=true`."}
    ),
    "raw_data": _nullable(
        {
            "type": "object",
            "description": "The LMS's original payload; only with `include_raw_data=true`.",
        }
    ),
}

_MODEL_FIELDS: dict[str, dict[str, Schema]] = {
    # Enrollments: typed exactly as the API reference documents them.
    "enrollments": {
        "user": _relation("user", nullable=False),
        "course": _relation("course", nullable=False),
        "start_date": _nullable(_datetime("Start of the enrollment")),
        "end_date": _nullable(_datetime("End of the enrollment")),
        "completion": _relation("completion", nullable=True),
    },
    "users": {
        "first_name": _inferred(_string("First name.")),
        "last_name": _inferred(_string("Last name.")),
        "email_address": _inferred(_string("E-mail address.", format="email")),
        "status": _inferred(_string("ACTIVE, PENDING, INACTIVE, ... (open list).")),
    },
    "courses": {
        "name": _inferred(_string("Course name.")),
        "description": _inferred(_string("Course description.")),
        "url": _inferred(_string("Course URL.")),
        "duration": _inferred(_string("ISO 8601 duration, e.g. PT1H30M.")),
        "languages": _inferred({"type": "array", "items": {"type": "string"}}),
        "status": _inferred(_string("Course status (open list).")),
    },
    # The API reference documents no fields of its own for contents.
    "contents": {},
    "completions": {
        "user": _relation("user", nullable=True),
        "course": _relation("course", nullable=True),
        "content": _relation("content", nullable=True),
        "score": _inferred({"type": "number"}),
        "grade": _inferred(_string("Grade.")),
        "started_at": _inferred(_datetime("When the learner started")),
        "completed_at": _inferred(_datetime("When the learner completed")),
        "time_duration": _inferred(_string("Time spent, ISO 8601 duration.")),
    },
}


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
        "properties": {**_COMMON_FIELDS, **_MODEL_FIELDS[model]},
        "additionalProperties": True,
    }


def data_schema(model: str, kind: str, base_uri: str | None = None) -> Schema:
    """The ``data`` of a ``{model}.{kind}`` CloudEvent (what ``dataschema`` names)."""
    _check(model, kind)
    name = schema_name(model, f"{kind}.data")
    title = f"data of bindbee.lms.{model}.{kind}"
    common: Schema = {
        "connector": {"type": "string", "minLength": 1, "description": "The connector."},
        "model": {"const": model},
    }
    if kind == "rejected":
        reasons = ("not_an_object", "no_id", "bad_id", "no_modified_at", "bad_modified_at",
                   "unhashable")  # fmt: skip
        return {
            **_resource(
                name,
                base_uri,
                title,
                "A dead letter: an item of a well-formed page that could not be diffed, as "
                "the API returned it, after the page was fetched `bindbee.max_attempts` "
                "times. Published once per distinct content (`fingerprint`); the rest of "
                "the page went on.",
            ),
            "type": "object",
            "required": ["connector", "model", "reason", "page", "scan", "item"],
            "properties": {
                **common,
                "reason": {
                    "description": "Why the item was rejected (a code; open list).",
                    "type": "string",
                    "examples": list(reasons),
                },
                "detail": _string("The reason in words (which item, which field)."),
                "page": {"type": "integer", "minimum": 0, "description": "Page number."},
                "scan": {"type": "integer", "minimum": 0, "description": "Scan number."},
                "position": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "The item's index in its page's `items`.",
                },
                "record_id": _nullable(
                    _string(
                        "The record the item stands for, when known: its id, or the stored "
                        "record with its remote_id (also the event's subject)."
                    )
                ),
                "remote_id": _nullable(_string("The item's remote_id, when it has one.")),
                "fingerprint": _string(
                    "Hash of the item's canonical JSON: the same content is dead-lettered once.",
                    pattern="^[0-9a-f]{32}$",
                ),
                "item": {"description": "The item as the API returned it (any JSON)."},
            },
            "additionalProperties": True,
        }
    if kind == "scan_completed":
        return _scan_completed_data(name, base_uri, title, common)
    record_note = " (the last known record)" if kind == "deleted" else ""
    changes: Schema | bool = False
    if kind == "updated":
        changes = {
            "type": "object",
            "description": "The changed top-level fields (ignored fields left out).",
            "additionalProperties": {
                "type": "object",
                "required": ["old", "new"],
                "properties": {"old": {}, "new": {}},
            },
        }
    required = ["connector", "model", "record", "initial_sync"]
    if kind == "updated":
        required.insert(3, "changes")
    return {
        **_resource(
            name,
            base_uri,
            title,
            f"A record of {model} was {kind}{record_note}. `changes` only on updated.",
        ),
        "type": "object",
        "required": required,
        "properties": {
            **common,
            "record": {"$ref": schema_id(schema_name(model, "record"), base_uri)},
            "changes": changes,
            "initial_sync": {
                "type": "boolean",
                "description": "True for the events of a stream's first full scan.",
            },
        },
        "additionalProperties": True,
    }


_COUNTS = ("created", "updated", "deleted", "unchanged", "stale", "rejected")


def _scan_completed_data(name: str, base_uri: str | None, title: str, common: Schema) -> Schema:
    count = {"type": "integer", "minimum": 0}
    return {
        **_resource(
            name,
            base_uri,
            title,
            "A scan of one stream (connector x model) completed: what it covered, what it "
            "found, and up to which offsets of the data topic its events went. On the "
            "control topic (`kafka.control_topic`), keyed by `connector/model`; see "
            "docs/consumers.md.",
        ),
        "type": "object",
        "required": [
            "connector",
            "model",
            "topic",
            "scan",
            "kind",
            "started_at",
            "finished_at",
            "covers",
            "modified_since",
            "counts",
            "delete_guard",
            "deletes_withheld",
            "partitions",
            "partial",
        ],
        "properties": {
            **common,
            "topic": _string("The data topic the scan's events went to.", minLength=1),
            "scan": {
                "type": "integer",
                "minimum": 1,
                "description": "The stream's scan number (counts from 1 again after `reset`).",
            },
            "kind": {
                "enum": ["full", "incremental"],
                "description": "full: every record was listed (deletes are found only so); "
                "incremental: only records changed since `modified_since`.",
            },
            "started_at": _datetime("When the scan started"),
            "finished_at": _datetime("When the scan completed (also the event's time)"),
            "covers": {
                "enum": ["all_records", "modified_since"],
                "description": "all_records (a full scan) or the records modified since "
                "`modified_since` (an incremental scan).",
            },
            "modified_since": _nullable(
                _datetime("An incremental scan asked for changes since this time")
            ),
            "initial_sync": {
                "type": "boolean",
                "description": "True for the stream's first full scan.",
            },
            "counts": {
                "type": "object",
                "description": "What the scan found (only this process's part when `partial`).",
                "required": list(_COUNTS),
                "properties": {
                    **{c: count for c in _COUNTS},
                    "dead_lettered": count,
                },
                "additionalProperties": True,
            },
            "delete_guard": _nullable(
                _string("Why the scan withheld its deletes (full scans only).")
            ),
            "deletes_withheld": {
                "type": "boolean",
                "description": "True when the delete guard held the scan's deletes back.",
            },
            "partitions": {
                "type": "object",
                "description": "Partition of `topic` -> offset of the scan's last message "
                "there, as Kafka acknowledged it; only partitions the scan wrote to.",
                "propertyNames": {"pattern": "^[0-9]+$"},
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "partial": {
                "type": "boolean",
                "description": "True when an earlier process (before a restart, or another "
                "replica) published part of the scan: `counts` and `partitions` cover only "
                "this process's part, so a partition not listed may still hold earlier "
                "events of the scan.",
            },
            "consistent_as_of": _datetime(
                "Only on a full scan that withheld no deletes (and was not a silent "
                "baseline): every change of the stream's records made before this time "
                "(the scan's start) is on `topic`, at or before `partitions`' offsets or "
                "in earlier scans"
            ),
        },
        "additionalProperties": True,
    }


def event_schema(model: str, kind: str, base_uri: str | None = None) -> Schema:
    """The whole ``bindbee.lms.{model}.{kind}`` CloudEvent 1.0 (structured mode)."""
    _check(model, kind)
    change = kind in CHANGE_KINDS
    subject = _string("The record id (the Kafka key).", minLength=1)
    time = _datetime("The record's modified_at, normalised to UTC")
    if change:
        time["pattern"] = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"
    elif kind in CONTROL_KINDS:
        subject = _string("The stream, connector/model (the Kafka key).", minLength=3)
        time = _datetime("When the scan completed")
    else:
        subject = _string("The record id, when known.")
        time = _datetime("When the event was made")
    if change:
        description = f"A record of {model} was {kind}."
    elif kind in DEAD_LETTER_KINDS:
        description = (
            f"An item of {model} the daemon could not use (a poison record), on the "
            "dead-letter topic."
        )
    elif kind in CONTROL_KINDS:
        description = f"A scan of a {model} stream completed (a marker), on the control topic."
    else:
        description = f"{_RESERVED_NOTE} bindbee.lms.{model}.{kind}."
    # dataschema is not required: events written before 0.2 (e.g. sent from an upgraded
    # store's outbox) lack it, and CloudEvents makes it optional. Every new event has it.
    required = ["specversion", "id", "source", "type", "datacontenttype", "data"]
    if change or kind in CONTROL_KINDS:
        required[4:4] = ["subject", "time"]
    return {
        **_resource(schema_name(model, kind), base_uri, f"bindbee.lms.{model}.{kind}", description),
        "type": "object",
        "required": required,
        "properties": {
            "specversion": {"const": "1.0"},
            "id": _string(
                "Deterministic: a redelivery has the same id; consumers drop duplicates by it.",
                pattern="^[0-9a-f]{32}$",
            ),
            "source": _string("bindbee/lms/{connector}.", pattern="^bindbee/lms/.+$"),
            "type": {"const": f"bindbee.lms.{model}.{kind}"},
            "subject": subject,
            "time": time,
            "datacontenttype": {"const": "application/json"},
            "dataschema": {
                "const": data_schema_id(model, kind, base_uri),
                "format": "uri",
                "description": "The schema of data; present on every event since 0.2.",
            },
            "data": {"$ref": data_schema_id(model, kind, base_uri)},
        },
        "additionalProperties": True,
    }


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
        "(`kafka.dead_letter_topic`), `scan_completed` markers to the control topic",
        "(`kafka.control_topic`; how to use them: [docs/consumers.md](../consumers.md)).",
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
