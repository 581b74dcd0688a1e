"""What a record holds (``data.record``), field by field, as the API reference documents it.

A record is passed on as the API returned it, so its schema admits every value the API
documents, nulls included. Datetimes are ISO 8601 as the API sends them (an offset may be
missing), not RFC 3339: no ``format`` on them. Only ``id`` and ``modified_at`` are checked
by the daemon; fields the reference names without a type are typed by the obvious
reading and nullable, and unknown fields are allowed.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _iso_datetime(description: str) -> Schema:
    return _string(description + " (ISO 8601, as the API sent it).")


def _relation(target: str) -> Schema:
    # Typed "any" by the API reference: the related record's id, the related object with
    # ``expand`` (``rel[f1,f2]`` picks its fields, so not even ``id`` is certain), or null.
    return {
        "anyOf": [
            {"type": "string", "format": "uuid", "description": f"The related {target} id."},
            {"type": "object", "description": f"The related {target} record, inlined by `expand`."},
            {"type": "null"},
        ]
    }


_COMMON_FIELDS: dict[str, Schema] = {
    "id": _string("Bindbee's id of the record (UUID): the event key.", format="uuid"),
    "remote_id": _nullable(_string("The LMS's own id.")),
    "modified_at": _iso_datetime("When Bindbee last rewrote the record"),
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
    "enrollments": {
        "user": _relation("user"),
        "course": _relation("course"),
        "start_date": _nullable(_iso_datetime("Start of the enrollment")),
        "end_date": _nullable(_iso_datetime("End of the enrollment")),
        "completion": _relation("completion"),
    },
    "users": {
        "first_name": _nullable(_string("First name.")),
        "last_name": _nullable(_string("Last name.")),
        "email_address": _nullable(_string("E-mail address (not checked: LMSs hold anything).")),
        "status": _nullable(_string("ACTIVE, PENDING, INACTIVE, ... (open list).")),
    },
    "courses": {
        "name": _nullable(_string("Course name.")),
        "description": _nullable(_string("Course description.")),
        "url": _nullable(_string("Course URL.")),
        "duration": _nullable(_string("ISO 8601 duration, e.g. PT1H30M.")),
        "languages": _nullable({"type": "array", "items": {"type": "string"}}),
        "status": _nullable(_string("Course status (open list).")),
    },
    # The API reference documents no fields of its own for contents.
    "contents": {},
    "completions": {
        "user": _relation("user"),
        "course": _relation("course"),
        "content": _relation("content"),
        "score": _nullable({"type": "number"}),
        "grade": _nullable(_string("Grade.")),
        "started_at": _nullable(_iso_datetime("When the learner started")),
        "completed_at": _nullable(_iso_datetime("When the learner completed")),
        "time_duration": _nullable(_string("Time spent, ISO 8601 duration.")),
    },
}


RECORD_FIELDS: dict[str, dict[str, Schema]] = {
    model: {**_COMMON_FIELDS, **fields} for model, fields in _MODEL_FIELDS.items()
}
"""Model -> field -> the JSON Schema of its values (every value the API documents)."""
