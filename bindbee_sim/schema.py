"""What each LMS model looks like: fields in output order, relations, filters."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

NULL_US = -(2**63)
"""Sentinel in date columns for a null datetime (sorts before every instant)."""

NO_REF = -1
"""Sentinel in relation columns for a null reference."""


@dataclass(frozen=True)
class ModelSpec:
    """The shape of one LMS model as the simulator serves it."""

    name: str
    remote_prefix: str
    own_fields: tuple[str, ...]
    relations: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Field -> target model, for ``expand`` and id filters."""
    equality_filters: tuple[str, ...] = ()
    """Relation fields filterable as ``?field=<uuid>``."""
    date_filters: tuple[str, ...] = ()
    """Datetime fields filterable as ``?field_from=`` / ``?field_to=`` (inclusive)."""
    datetimes: tuple[str, ...] = ()
    """Own fields holding ISO datetimes (validated and normalised on writes)."""

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field of a full record, in output order."""
        return ("id", "remote_id", "modified_at", *self.own_fields, "custom_fields", "raw_data")

    @property
    def default_expand_fields(self) -> tuple[str, ...]:
        """Fields of an expanded object when the client names none."""
        return ("id", "remote_id", "modified_at", *self.own_fields)

    def blank(self) -> dict[str, Any]:
        """A record with every field at its empty value, in output order."""
        record: dict[str, Any] = dict.fromkeys(self.fields)
        record["raw_data"] = {}
        return record


def _rel(**pairs: str) -> MappingProxyType[str, str]:
    return MappingProxyType(dict(pairs))


USERS = ModelSpec(
    name="users",
    remote_prefix="USR",
    own_fields=("first_name", "last_name", "email_address", "status"),
)
COURSES = ModelSpec(
    name="courses",
    remote_prefix="CRS",
    own_fields=("name", "description", "url", "duration", "languages", "status"),
)
CONTENTS = ModelSpec(
    name="contents",
    remote_prefix="CNT",
    own_fields=("course", "name", "description", "url", "duration", "type", "status"),
    relations=_rel(course="courses"),
    equality_filters=("course",),
)
COMPLETIONS = ModelSpec(
    name="completions",
    remote_prefix="CMP",
    own_fields=(
        "user",
        "course",
        "content",
        "score",
        "grade",
        "started_at",
        "completed_at",
        "time_duration",
    ),
    relations=_rel(user="users", course="courses", content="contents"),
    equality_filters=("user", "course", "content"),
    datetimes=("started_at", "completed_at"),
)
ENROLLMENTS = ModelSpec(
    name="enrollments",
    remote_prefix="ENR",
    own_fields=("user", "course", "start_date", "end_date", "completion"),
    relations=_rel(user="users", course="courses", completion="completions"),
    equality_filters=("user", "course"),
    date_filters=("start_date", "end_date"),
    datetimes=("start_date", "end_date"),
)

MODELS: MappingProxyType[str, ModelSpec] = MappingProxyType(
    {spec.name: spec for spec in (USERS, COURSES, CONTENTS, COMPLETIONS, ENROLLMENTS)}
)
