"""The generated seed state: records derived from (seed, connector, model, index).

Nothing per record is stored except a few compact columns that filters and
indexes need (``array`` of machine ints): a million enrollments cost tens of
megabytes, and a record's dict is built only when a page needs it.

Ids are UUIDv7 whose timestamps grow with the index, so index order *is* id
order: bisecting a cursor needs no stored id list (``BaseTable.ids`` computes
ids on demand), and an id maps back to its index in O(1).
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bindbee_sim.ids import mix64, stable_key, uuid7, uuid7_ms
from bindbee_sim.schema import MODELS, NO_REF, NULL_US, ModelSpec
from bindbee_sim.times import US_PER_DAY, US_PER_SECOND, format_us

_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: first generated creation time
_SPAN_MS = 546 * 86_400_000  # creation times spread until 2025-06-30
_MAX_EDIT_US = 120 * US_PER_DAY  # modified_at lands at most this long after creation
_DETAIL_SALT = 0x5851F42D4C957F2D

SEED_SYNC_US = (_START_MS + _SPAN_MS) * 1000 + _MAX_EDIT_US
"""When the seed sync ran: after every generated ``modified_at`` (2025-10-28)."""


class _LazyIds:
    """A read-only sequence of a table's ids, computed on access (for ``bisect``)."""

    __slots__ = ("_table",)

    def __init__(self, table: BaseTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return self._table.n

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < self._table.n:
            raise IndexError(index)
        return self._table.id_of(index)


class BaseTable:
    """The generated records of one model for one connector."""

    def __init__(self, spec: ModelSpec, key: int, n: int) -> None:
        self.spec = spec
        self.key = key
        self.n = n
        self.step_ms = max(1, _SPAN_MS // max(n, 1))
        self.ids = _LazyIds(self)
        self.mod_us = array("q")
        self.rel: dict[str, array[int]] = {}
        self.dates: dict[str, array[int]] = {}
        self._mod_sorted: array[int] | None = None
        self._mod_order: array[int] | None = None
        self._inverted: dict[str, dict[int, array[int]]] = {}
        self.detail: Callable[[BaseTable, int, random.Random, bool, bool], dict[str, Any]]

    def _hash(self, index: int) -> int:
        return mix64(self.key + index)

    def id_of(self, index: int) -> str:
        """The id of generated record ``index``."""
        h = self._hash(index)
        ts_ms = _START_MS + index * self.step_ms + h % self.step_ms
        return uuid7(ts_ms, h >> 52, mix64(h))

    def created_us(self, index: int) -> int:
        """The creation instant of record ``index`` (inside its id's millisecond)."""
        h = self._hash(index)
        ts_ms = _START_MS + index * self.step_ms + h % self.step_ms
        return ts_ms * 1000 + (h >> 40) % 1000

    def index_of(self, record_id: str) -> int | None:
        """The index of a generated id, or None when the id was not generated here."""
        ms = uuid7_ms(record_id)
        if ms is None or ms < _START_MS:
            return None
        index = (ms - _START_MS) // self.step_ms
        if index >= self.n or self.id_of(index) != record_id:
            return None
        return index

    def remote_id_of(self, index: int) -> str:
        """The LMS's own id of record ``index``."""
        return f"{self.spec.remote_prefix}-{index + 1:07d}"

    def index_of_remote(self, remote_id: str) -> int | None:
        """The index whose generated remote id is ``remote_id``, if any."""
        prefix = self.spec.remote_prefix + "-"
        digits = remote_id[len(prefix) :]
        if not remote_id.startswith(prefix) or not digits.isdigit():
            return None
        index = int(digits) - 1
        if not 0 <= index < self.n or self.remote_id_of(index) != remote_id:
            return None
        return index

    def build(self, index: int, with_custom: bool = True, with_raw: bool = True) -> dict[str, Any]:
        """The generated record ``index``, optionally without custom_fields/raw_data.

        Own fields are drawn before custom fields and raw data, so leaving the
        tail out never changes what the head looks like.
        """
        rng = random.Random(mix64(self._hash(index) ^ _DETAIL_SALT))
        record: dict[str, Any] = {
            "id": self.id_of(index),
            "remote_id": self.remote_id_of(index),
            "modified_at": format_us(self.mod_us[index]),
        }
        record.update(self.detail(self, index, rng, with_custom, with_raw))
        return record

    def mod_index(self) -> tuple[array[int], array[int]]:
        """``(modified_at values sorted, record indexes in that order)``, built on first use."""
        if self._mod_sorted is None or self._mod_order is None:
            order = sorted(range(self.n), key=self.mod_us.__getitem__)
            self._mod_order = array("i", order)
            self._mod_sorted = array("q", [self.mod_us[i] for i in order])
        return self._mod_sorted, self._mod_order

    def count_modified_after(self, after_us: int) -> int:
        """How many generated records have ``modified_at`` strictly after ``after_us``."""
        mod_sorted, _ = self.mod_index()
        return self.n - bisect_right(mod_sorted, after_us)

    def modified_after(self, after_us: int) -> list[int]:
        """Indexes (ascending, i.e. id order) with ``modified_at`` strictly after ``after_us``."""
        mod_sorted, mod_order = self.mod_index()
        return sorted(mod_order[bisect_right(mod_sorted, after_us) :])

    def referencing(self, field: str, target_index: int) -> array[int]:
        """Indexes (ascending) whose relation ``field`` points at ``target_index``."""
        inverted = self._inverted.get(field)
        if inverted is None:
            inverted = {}
            for index, target in enumerate(self.rel[field]):
                bucket = inverted.get(target)
                if bucket is None:
                    bucket = inverted[target] = array("i")
                bucket.append(index)
            self._inverted[field] = inverted
        return inverted.get(target_index, array("i"))


@dataclass(frozen=True)
class Sizes:
    """How many records of each model one connector gets."""

    users: int
    courses: int
    contents: int
    enrollments: int
    completions: int

    @classmethod
    def for_enrollments(cls, n: int) -> Sizes:
        """Users and courses enough for ``n`` enrollments to reference, and a few others."""
        return cls(
            users=max(10, n // 10),
            courses=max(5, n // 50),
            contents=max(5, n // 100),
            enrollments=n,
            completions=(n + 19) // 20,  # every 20th enrollment has a completion
        )


# Word lists for plausible-looking generated text.
_FIRST = (
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemi",
    "Luis",
    "Maya",
    "Nils",
    "Olga",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
)
_LAST = (
    "Ahmed",
    "Berg",
    "Costa",
    "Dubois",
    "Eze",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Novak",
    "Okafor",
    "Park",
    "Rossi",
    "Silva",
)
_TOPICS = (
    "Workplace Safety",
    "Data Privacy",
    "Leadership",
    "Python",
    "Negotiation",
    "First Aid",
    "Excel",
    "Customer Service",
    "Cloud Security",
    "Project Management",
    "Diversity and Inclusion",
    "Anti-Bribery",
    "Time Management",
    "SQL",
    "Onboarding",
)
_LEVELS = ("Foundations", "Essentials", "Advanced", "Refresher", "Masterclass", "101")
_LANGS = ("en", "fr", "de", "es", "pt", "ja", "nl")
_USER_STATUS = ("ACTIVE",) * 8 + ("PENDING", "INACTIVE")
_COURSE_STATUS = ("ACTIVE",) * 6 + ("INACTIVE", "ARCHIVED")
_CONTENT_TYPES = ("VIDEO", "DOCUMENT", "ASSESSMENT", "SCORM", "LINK")
_GRADES = ("A", "B", "C", "D", "F", "PASS", "FAIL")
_ENROLLMENT_STATES = ("ENROLLED", "IN_PROGRESS", "COMPLETED", "EXPIRED", "WITHDRAWN")
_COST_CENTERS = ("CC-100", "CC-200", "CC-310", "CC-420", "CC-555")
_REGIONS = ("EMEA", "AMER", "APAC")


def _duration(rng: random.Random) -> str:
    minutes = rng.randrange(15, 600)
    hours, minutes = divmod(minutes, 60)
    return f"PT{hours}H{minutes}M" if hours else f"PT{minutes}M"


def _custom(rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.3:
        return None
    return {
        "cost_center": rng.choice(_COST_CENTERS),
        "mandatory": rng.random() < 0.5,
        "region": rng.choice(_REGIONS),
    }


def _tail(
    out: dict[str, Any],
    rng: random.Random,
    with_custom: bool,
    with_raw: bool,
    raw: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    # custom_fields is drawn first so that raw data can be left out safely.
    if with_custom or with_raw:
        custom = _custom(rng)
        if with_custom:
            out["custom_fields"] = custom
        if with_raw:
            out["raw_data"] = raw()
    return out


def _ref(tables: dict[str, BaseTable], model: str, index: int) -> str | None:
    return None if index == NO_REF else tables[model].id_of(index)


def _make_details(
    tables: dict[str, BaseTable],
    label: str,
) -> dict[str, Callable[[BaseTable, int, random.Random, bool, bool], dict[str, Any]]]:
    """Per-model builders of everything beyond id/remote_id/modified_at."""
    host = f"https://{label}.lms.example"

    def users(t: BaseTable, i: int, rng: random.Random, wc: bool, wr: bool) -> dict[str, Any]:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first}.{last}.{i + 1}@{label}.example".lower()
        out = {
            "first_name": first,
            "last_name": last,
            "email_address": email,
            "status": rng.choice(_USER_STATUS),
        }
        return _tail(
            out,
            rng,
            wc,
            wr,
            lambda: {
                "userId": i + 1,
                "login": email,
                "displayName": f"{first} {last}",
                "department": rng.choice(_TOPICS),
                "locale": rng.choice(_LANGS),
            },
        )

    def courses(t: BaseTable, i: int, rng: random.Random, wc: bool, wr: bool) -> dict[str, Any]:
        name = f"{rng.choice(_TOPICS)} {rng.choice(_LEVELS)}"
        out = {
            "name": name,
            "description": f"{name}: a self-paced course.",
            "url": f"{host}/courses/{i + 1}",
            "duration": _duration(rng),
            "languages": sorted(rng.sample(_LANGS, rng.randrange(1, 3))),
            "status": rng.choice(_COURSE_STATUS),
        }
        return _tail(
            out,
            rng,
            wc,
            wr,
            lambda: {
                "courseId": i + 1,
                "code": t.remote_id_of(i),
                "title": name,
                "credits": rng.randrange(1, 10),
            },
        )

    def contents(t: BaseTable, i: int, rng: random.Random, wc: bool, wr: bool) -> dict[str, Any]:
        kind = rng.choice(_CONTENT_TYPES)
        name = f"{rng.choice(_TOPICS)} {kind.lower()} {i + 1}"
        out = {
            "course": _ref(tables, "courses", t.rel["course"][i]),
            "name": name,
            "description": f"{kind.title()} material.",
            "url": f"{host}/content/{i + 1}",
            "duration": _duration(rng),
            "type": kind,
            "status": rng.choice(_COURSE_STATUS),
        }
        return _tail(
            out,
            rng,
            wc,
            wr,
            lambda: {"contentId": i + 1, "format": kind, "sizeKb": rng.randrange(10, 90_000)},
        )

    def completions(t: BaseTable, i: int, rng: random.Random, wc: bool, wr: bool) -> dict[str, Any]:
        # A completion starts when its enrollment (number 20*i) does, if it has a start.
        enrollment_start = tables["enrollments"].dates["start_date"][20 * i]
        started = (
            enrollment_start
            if enrollment_start != NULL_US
            else t.created_us(i) - rng.randrange(1, 30) * US_PER_DAY
        )
        spent_s = rng.randrange(300, 40_000)
        finished = started + spent_s * US_PER_SECOND
        scored = rng.random() < 0.8
        out = {
            "user": _ref(tables, "users", t.rel["user"][i]),
            "course": _ref(tables, "courses", t.rel["course"][i]),
            "content": _ref(tables, "contents", t.rel["content"][i]),
            "score": round(rng.uniform(40, 100), 1) if scored else None,
            "grade": rng.choice(_GRADES) if scored else None,
            "started_at": format_us(started),
            "completed_at": format_us(finished),
            "time_duration": f"PT{spent_s}S",
        }
        return _tail(
            out,
            rng,
            wc,
            wr,
            lambda: {
                "completionId": i + 1,
                "passed": rng.random() < 0.9,
                "attempts": rng.randrange(1, 4),
            },
        )

    def enrollments(t: BaseTable, i: int, rng: random.Random, wc: bool, wr: bool) -> dict[str, Any]:
        start, end = t.dates["start_date"][i], t.dates["end_date"][i]
        user_i, course_i = t.rel["user"][i], t.rel["course"][i]
        out = {
            "user": _ref(tables, "users", user_i),
            "course": _ref(tables, "courses", course_i),
            "start_date": None if start == NULL_US else format_us(start),
            "end_date": None if end == NULL_US else format_us(end),
            "completion": _ref(tables, "completions", t.rel["completion"][i]),
        }
        return _tail(
            out,
            rng,
            wc,
            wr,
            lambda: {
                "enrollmentId": i + 1,
                "learnerId": tables["users"].remote_id_of(user_i),
                "courseCode": tables["courses"].remote_id_of(course_i),
                "state": rng.choice(_ENROLLMENT_STATES),
                "progressPct": rng.randrange(0, 101),
            },
        )

    return {
        "users": users,
        "courses": courses,
        "contents": contents,
        "completions": completions,
        "enrollments": enrollments,
    }


def _fill_columns(
    t: BaseTable, rng: random.Random, tables: dict[str, BaseTable], sizes: Sizes
) -> None:
    """Draw, in index order, the columns that filters and indexes read."""
    mod = t.mod_us
    name = t.spec.name
    if name == "enrollments":
        users, courses = sizes.users, sizes.courses
        user_c, course_c, comp_c = array("i"), array("i"), array("i")
        start_c, end_c = array("q"), array("q")
        for i in range(t.n):
            created = t.created_us(i)
            mod.append(created + rng.randrange(_MAX_EDIT_US))
            user_c.append(rng.randrange(users))
            course_c.append(rng.randrange(courses))
            comp_c.append(i // 20 if i % 20 == 0 else NO_REF)
            if rng.random() < 0.05:
                start_c.append(NULL_US)
                end_c.append(NULL_US)
                continue
            start = (created + rng.randrange(30 * US_PER_DAY)) // US_PER_SECOND * US_PER_SECOND
            start_c.append(start)
            if rng.random() < 0.4:
                end_c.append(NULL_US)
            else:
                end_c.append(start + rng.randrange(7, 180) * US_PER_DAY)
        t.rel.update(user=user_c, course=course_c, completion=comp_c)
        t.dates.update(start_date=start_c, end_date=end_c)
        return
    for i in range(t.n):
        mod.append(t.created_us(i) + rng.randrange(_MAX_EDIT_US))
    if name == "contents":
        t.rel["course"] = array("i", [rng.randrange(sizes.courses) for _ in range(t.n)])
    elif name == "completions":
        enr = tables["enrollments"]
        # Completion j belongs to enrollment 20*j: same learner, same course.
        t.rel["user"] = array("i", [enr.rel["user"][20 * j] for j in range(t.n)])
        t.rel["course"] = array("i", [enr.rel["course"][20 * j] for j in range(t.n)])
        t.rel["content"] = array(
            "i",
            [rng.randrange(sizes.contents) if rng.random() < 0.7 else NO_REF for _ in range(t.n)],
        )


def generate_tables(seed: int, label: str, enrollments: int) -> dict[str, BaseTable]:
    """The seed state of one connector (``label`` is its name), deterministic in both."""
    sizes = Sizes.for_enrollments(enrollments)
    tables: dict[str, BaseTable] = {}
    details = _make_details(tables, label)
    # Completions read enrollment columns, so enrollments come first.
    for model in ("users", "courses", "contents", "enrollments", "completions"):
        key = stable_key(seed, label, model)
        table = BaseTable(MODELS[model], key, getattr(sizes, model))
        table.detail = details[model]
        _fill_columns(table, random.Random(key), tables, sizes)
        tables[model] = table
    return tables
