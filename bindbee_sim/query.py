"""A parsed list request: filters, projection flags and ``expand``, model-checked."""

from __future__ import annotations

from dataclasses import dataclass, field

from bindbee_sim.schema import MODELS, ModelSpec


@dataclass(frozen=True)
class Projection:
    """How records are rendered: optional fields and inlined relations."""

    include_custom_fields: bool = False
    include_raw_data: bool = False
    expand: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    """Relation field -> picked fields of the related object (None: its default fields)."""


@dataclass(frozen=True)
class ListQuery:
    """One page request against one model."""

    page_size: int = 50
    after: str | None = None
    """The id the cursor points after (None: from the start)."""
    remote_id: str | None = None
    equals: dict[str, str] = field(default_factory=dict)
    """Relation field -> required id."""
    ranges: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    """Datetime field -> inclusive (from, to) bounds in microseconds."""
    modified_after: int | None = None
    """Only records modified strictly after this instant (microseconds)."""
    projection: Projection = field(default_factory=Projection)


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``[...]``."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ValueError("unbalanced '['")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_expand(text: str | None, spec: ModelSpec) -> dict[str, tuple[str, ...] | None]:
    """Parse ``user,course[name,url]`` against ``spec``; raises ``ValueError`` when invalid."""
    if not text:
        return {}
    result: dict[str, tuple[str, ...] | None] = {}
    for part in split_top_level(text):
        name, bracket, rest = part.partition("[")
        name = name.strip()
        if name not in spec.relations:
            known = ", ".join(spec.relations) or "none"
            raise ValueError(f"unknown relation {name!r} for {spec.name} (known: {known})")
        if not bracket:
            result[name] = None
            continue
        if not rest.endswith("]"):
            raise ValueError(f"malformed field list in {part!r}")
        target = MODELS[spec.relations[name]]
        picks = tuple(f.strip() for f in rest[:-1].split(",") if f.strip())
        unknown = [f for f in picks if f not in target.fields]
        if unknown or not picks:
            raise ValueError(f"unknown or missing fields {unknown} for {target.name} in {part!r}")
        result[name] = picks
    return result
