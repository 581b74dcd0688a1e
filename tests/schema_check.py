"""Validate events against the published schemas (daemon/sink/schemas.py), for any test.

``validate_event(record.value)`` raises ``jsonschema.ValidationError`` naming what is wrong;
a tombstone (``None``) passes. The event's ``type`` picks the envelope schema, and its
``dataschema`` must name the schema its ``data`` validates against, as consumers use it.

Strict, as a consumer's validator may be (tests/strict_schema.py): the schemas must compile
under Ajv's strict-mode rules and under jsonschema-rs with formats asserted, and every
event is validated by both jsonschema and jsonschema-rs.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator, FormatChecker, SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from daemon.sink import schemas
from tests.strict_schema import rs_registry, rs_validator, strict_compile

_TYPE_PREFIX = "bindbee.lms."


@cache
def registry(base_uri: str | None = None) -> Registry:
    """Every schema, addressable by its ``$id`` (they refer to one another by it); raises
    ``SchemaError`` unless they all compile in strict mode."""
    generated = schemas.all_schemas(base_uri)
    problems = strict_compile(generated)
    if problems:
        raise SchemaError("the schemas do not compile in strict mode:\n" + "\n".join(problems))
    resources = [(value["$id"], DRAFT202012.create_resource(value)) for value in generated.values()]
    return Registry().with_resources(resources)


@cache
def strict_validator(schema_id: str, base_uri: str | None = None) -> Any:
    """jsonschema-rs's validator for ``schema_id``: formats asserted, unknown ones refused."""
    known = registry(base_uri)  # compiled strictly first
    return rs_validator(known.contents(schema_id), _rs_registry(base_uri))


@cache
def _rs_registry(base_uri: str | None) -> Any:
    return rs_registry(schemas.all_schemas(base_uri))


@cache
def validator(schema_id: str, base_uri: str | None = None) -> Draft202012Validator:
    """A validator for the schema with ``schema_id``; formats (uuid, email, ...) are checked."""
    known = registry(base_uri)
    try:
        contents = known.contents(schema_id)
    except (LookupError, Unresolvable):
        raise ValidationError(f"no schema has $id {schema_id!r}") from None
    return Draft202012Validator(contents, registry=known, format_checker=FormatChecker())


def validate_event(value: bytes | dict[str, Any] | None, *, base_uri: str | None = None) -> None:
    """Raise ``ValidationError`` unless ``value`` (a Kafka value or its parsed dict) is a
    valid event of the contract. ``None`` (a tombstone) is valid."""
    if value is None:
        return
    event = orjson.loads(value) if isinstance(value, bytes | bytearray | memoryview) else value
    if not isinstance(event, dict):
        raise ValidationError(f"an event is a JSON object, not {type(event).__name__}")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind.startswith(_TYPE_PREFIX) or kind.count(".") != 3:
        raise ValidationError(f"type {kind!r} is not bindbee.lms.{{model}}.{{kind}}")
    model, kind = kind.removeprefix(_TYPE_PREFIX).split(".")
    envelope = schemas.schema_id(schemas.schema_name(model, kind), base_uri)
    validator(envelope, base_uri).validate(event)
    _validate_strictly(envelope, event, base_uri)
    # The envelope pins dataschema; validate data as a consumer would, by what it names
    # (events from before 0.2 carry none: their data is checked by the envelope's $ref).
    if "dataschema" in event:
        validator(event["dataschema"], base_uri).validate(event["data"])
        _validate_strictly(event["dataschema"], event["data"], base_uri)


def _validate_strictly(schema_id: str, value: Any, base_uri: str | None) -> None:
    try:
        strict_validator(schema_id, base_uri).validate(value)
    except jsonschema_rs.ValidationError as exc:
        raise ValidationError(f"jsonschema-rs ({schema_id}): {exc}") from None
