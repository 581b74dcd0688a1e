"""Strict compilation of the event schemas, for every test that validates events.

``jsonschema`` accepts any schema its meta-schema accepts: unknown keywords are ignored,
and ``format`` or ``pattern`` without a ``type`` pass. Stricter validators refuse such
schemas (Ajv's strict mode, the reference for "strict" in JSON Schema tooling), so a
consumer using one could not load our contract. Two checks stand in for them:

- ``jsonschema-rs`` (an independent, Rust implementation of 2020-12) compiles every
  schema with ``validate_formats=True`` and ``ignore_unknown_formats=False``: for it,
  "strict" means that an unknown ``format`` is an error when the schema is compiled, not a
  silently ignored annotation; it also checks each schema against the meta-schema and
  validates every event a second time (``rs_validator``).
- ``strict_problems`` applies Ajv's strict-mode rules that no PyPI package implements:
  no unknown keywords (the known ones are read from the 2020-12 vocabularies' own
  meta-schemas, not listed by hand), no union ``type`` arrays, and every type-specific
  keyword (``format``, ``pattern``, ``minimum``, ``properties``, ...) under a ``type``
  that it applies to, declared in the schema itself or inherited through ``anyOf`` /
  ``allOf`` / ``oneOf`` / ``not`` / ``if`` / ``then`` / ``else`` (Ajv's "strictTypes").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any
from urllib.parse import urljoin

import jsonschema_rs
from jsonschema_specifications import REGISTRY as META

_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Which JSON types each type-specific keyword applies to (Ajv's keyword definitions).
_APPLIES_TO: dict[str, frozenset[str]] = {
    **dict.fromkeys(("minLength", "maxLength", "pattern"), frozenset({"string"})),
    "format": frozenset({"string", "number"}),
    **dict.fromkeys(
        ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
        frozenset({"number"}),
    ),
    **dict.fromkeys(
        (
            "properties",
            "required",
            "additionalProperties",
            "patternProperties",
            "propertyNames",
            "minProperties",
            "maxProperties",
            "dependentRequired",
            "dependentSchemas",
            "unevaluatedProperties",
        ),
        frozenset({"object"}),
    ),
    **dict.fromkeys(
        (
            "items",
            "prefixItems",
            "contains",
            "minContains",
            "maxContains",
            "minItems",
            "maxItems",
            "uniqueItems",
            "unevaluatedItems",
        ),
        frozenset({"array"}),
    ),
}
# Applicators whose subschemas apply to the same instance: they inherit its types.
_IN_PLACE_LISTS = ("anyOf", "allOf", "oneOf")
_IN_PLACE = ("not", "if", "then", "else")
# Subschemas that apply to another instance: (keyword, is a map of subschemas, its types).
_CHILDREN: tuple[tuple[str, bool, frozenset[str]], ...] = (
    ("properties", True, frozenset()),
    ("patternProperties", True, frozenset()),
    ("dependentSchemas", True, frozenset()),
    ("$defs", True, frozenset()),
    ("additionalProperties", False, frozenset()),
    ("unevaluatedProperties", False, frozenset()),
    ("propertyNames", False, frozenset({"string"})),  # as Ajv: property names are strings
    ("items", False, frozenset()),
    ("contains", False, frozenset()),
    ("unevaluatedItems", False, frozenset()),
)


@cache
def known_keywords() -> frozenset[str]:
    """Every keyword of the 2020-12 dialect: the properties of its vocabularies' meta-schemas."""
    # The dialect's own ``properties`` are the deprecated keywords of older drafts: left out.
    keywords: set[str] = set()
    for part in META.contents(_DIALECT)["allOf"]:
        keywords |= set(META.contents(urljoin(_DIALECT, part["$ref"])).get("properties", {}))
    return frozenset(keywords)


def strict_problems(schema: Any) -> list[str]:
    """What Ajv's strict mode would refuse in ``schema`` (empty when it compiles)."""
    return list(_walk(schema, "#", frozenset()))


def _walk(schema: Any, where: str, inherited: frozenset[str]) -> Iterator[str]:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        yield f"{where}: a schema is an object or a boolean"
        return
    for keyword in schema:
        if keyword not in known_keywords():
            yield f"{where}: unknown keyword {keyword!r}"
    declared = schema.get("type")
    if isinstance(declared, list):
        if len(declared) > 1:
            yield f"{where}: union type {declared} (use anyOf)"
        declared = declared[0] if declared else None
    types = _widen(frozenset({declared})) if isinstance(declared, str) else inherited
    if isinstance(declared, str) and inherited and not (_widen(frozenset({declared})) & inherited):
        yield f"{where}: type {declared!r} contradicts the enclosing {sorted(inherited)}"
    for keyword, applies in _APPLIES_TO.items():
        if keyword in schema and not (types & applies):
            yield f"{where}: {keyword!r} without a type it applies to ({'/'.join(sorted(applies))})"
    for keyword in _IN_PLACE_LISTS:
        for n, sub in enumerate(schema.get(keyword, ())):
            yield from _walk(sub, f"{where}/{keyword}/{n}", types)
    for keyword in _IN_PLACE:
        if keyword in schema:
            yield from _walk(schema[keyword], f"{where}/{keyword}", types)
    for keyword, is_map, child_types in _CHILDREN:
        if keyword not in schema:
            continue
        if is_map:
            for name, sub in schema[keyword].items():
                yield from _walk(sub, f"{where}/{keyword}/{name}", child_types)
        else:
            yield from _walk(schema[keyword], f"{where}/{keyword}", child_types)
    for n, sub in enumerate(schema.get("prefixItems", ())):
        yield from _walk(sub, f"{where}/prefixItems/{n}", frozenset())


def _widen(types: frozenset[str]) -> frozenset[str]:
    # An integer is a number: number keywords apply to it.
    return types | {"number"} if "integer" in types else types


# ---- jsonschema-rs ---------------------------------------------------------------------


def rs_registry(schemas: Mapping[str, Any]) -> jsonschema_rs.Registry:
    """``$id`` -> schema, for jsonschema-rs (the schemas refer to one another by ``$id``)."""
    return jsonschema_rs.Registry([(value["$id"], value) for value in schemas.values()])


def rs_validator(schema: Mapping[str, Any], registry: jsonschema_rs.Registry) -> Any:
    """A jsonschema-rs 2020-12 validator asserting formats and refusing unknown ones."""
    return jsonschema_rs.Draft202012Validator(
        schema,
        registry=registry,
        validate_formats=True,
        ignore_unknown_formats=False,
    )


def strict_compile(schemas: Mapping[str, Any]) -> list[str]:
    """Problems of a set of schemas (file name -> schema) under both strict checks."""
    problems = []
    registry = rs_registry(schemas)
    for name, value in schemas.items():
        problems += [f"{name} {problem}" for problem in strict_problems(value)]
        try:
            jsonschema_rs.meta.validate(value)
            rs_validator(value, registry)
        except (jsonschema_rs.ValidationError, ValueError, jsonschema_rs.ReferencingError) as exc:
            problems.append(f"{name}: jsonschema-rs refuses it: {exc}")
    return problems
