"""Connectors as ``GET /api/lms/v1/connectors`` lists them: identity, link status, sync state.

Identity fields derive from (seed, name), so a connector keeps its ``id`` across
runs. The sync fields (``sync_status``, ``last_sync_start_time``,
``next_sync_start_time``) are moved by ``syncs.SyncCycle``; ``status`` and
``is_active`` by the control API.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from bindbee_sim.generate import SEED_SYNC_US
from bindbee_sim.ids import encode_cursor, stable_key, uuid7
from bindbee_sim.times import format_us

LinkStatus = Literal["COMPLETE", "INCOMPLETE", "RELINK_NEEDED"]
LINK_STATUSES: tuple[str, ...] = ("COMPLETE", "INCOMPLETE", "RELINK_NEEDED")
SyncStatus = Literal["Syncing", "Done", "Failed"]

_SLUGS = (
    "docebo",
    "cornerstone",
    "workday_learning",
    "sap_successfactors_learning",
    "talentlms",
    "absorb",
    "litmos",
    "moodle",
)
_CONNECTOR_EPOCH_MS = 1_700_000_000_000  # connectors were linked in late 2023
_US_PER_MS = 1000


@dataclass
class Connector:
    """One connector: fixed identity plus the fields syncs and the control API move."""

    name: str
    token: str
    id: str
    integration_slug: str
    created_us: int
    completed_us: int
    end_user: dict[str, Any]
    seed_sync_us: int
    status: str = "COMPLETE"
    is_active: bool = True
    sync_status: str | None = "Done"
    last_sync_start_us: int | None = None
    next_sync_start_us: int | None = None
    relink_needed_us: int | None = None
    added_at_run_time: bool = False

    @classmethod
    def derive(cls, seed: int, name: str, token: str) -> Connector:
        """The connector ``name`` as linked and first synced; deterministic in (seed, name)."""
        rng = random.Random(stable_key(seed, name, "connector"))
        created_ms = _CONNECTOR_EPOCH_MS + rng.randrange(30 * 86_400_000)
        connector_id = uuid7(created_ms, rng.getrandbits(12), rng.getrandbits(62))
        slug = rng.choice(_SLUGS)
        end_user = {
            "id": uuid7(created_ms, rng.getrandbits(12), rng.getrandbits(62)),
            "name": name.replace("_", " ").title(),
            "email": f"it-admin@{name}.example",
            "origin_id": name,
        }
        completed_ms = created_ms + rng.randrange(60_000, 900_000)
        seed_sync_us = SEED_SYNC_US + rng.randrange(3_600_000_000)
        connector = cls(
            name=name,
            token=token,
            id=connector_id,
            integration_slug=slug,
            created_us=created_ms * _US_PER_MS,
            completed_us=completed_ms * _US_PER_MS,
            end_user=end_user,
            seed_sync_us=seed_sync_us,
        )
        connector.restore()
        return connector

    def restore(self) -> None:
        """Back to the state right after the seed sync."""
        self.status = "COMPLETE"
        self.is_active = True
        self.sync_status = "Done"
        self.last_sync_start_us = self.seed_sync_us
        self.next_sync_start_us = None
        self.relink_needed_us = None

    def set_status(self, status: str, now_us: int) -> None:
        """Change the link status; RELINK_NEEDED stamps ``relink_needed_at``."""
        if status not in LINK_STATUSES:
            raise ValueError(f"status must be one of {list(LINK_STATUSES)}")
        if status == "RELINK_NEEDED" and self.status != "RELINK_NEEDED":
            self.relink_needed_us = now_us
        elif status != "RELINK_NEEDED":
            self.relink_needed_us = None
        self.status = status

    def listing(self) -> dict[str, Any]:
        """The item ``GET /connectors`` shows."""
        return {
            "id": self.id,
            "is_active": self.is_active,
            "status": self.status,
            "sync_status": self.sync_status,
            "last_sync_start_time": _iso(self.last_sync_start_us),
            "next_sync_start_time": _iso(self.next_sync_start_us),
            "relink_needed_at": _iso(self.relink_needed_us),
            "completed_at": _iso(self.completed_us),
            "created_at": _iso(self.created_us),
            "integration_slug": self.integration_slug,
            "end_user": dict(self.end_user),
            "category": "LMS",
            "is_test_connector": False,
            "connector_token": self.token,
        }

    def webhook_view(self, org_name: str) -> dict[str, Any]:
        """The ``connector`` object of a webhook envelope (no token: webhooks carry none)."""
        return {
            "id": self.id,
            "display_name": f"{self.end_user['name']} {self.integration_name}",
            "integration_slug": self.integration_slug,
            "categories": ["LMS"],
            "org_name": org_name,
            "origin_id": self.end_user["origin_id"],
            "connector_status": self.status,
            "end_user_name": self.end_user["name"],
            "end_user_email": self.end_user["email"],
        }

    @property
    def integration_name(self) -> str:
        """The integration's display name, e.g. ``Sap Successfactors Learning``."""
        return self.integration_slug.replace("_", " ").title()


def _iso(us: int | None) -> str | None:
    return None if us is None else format_us(us)


def connectors_page(
    connectors: Iterable[Connector],
    page_size: int,
    after: str | None,
    is_active: bool | None = None,
    token: str | None = None,
    origin_id: str | None = None,
) -> dict[str, Any]:
    """The ``GET /connectors`` body: connectors by id, filtered, one page after ``after``."""
    chosen = sorted(
        (
            c
            for c in connectors
            if (is_active is None or c.is_active == is_active)
            and (token is None or c.token == token)
            and (origin_id is None or c.end_user["origin_id"] == origin_id)
        ),
        key=lambda c: c.id,
    )
    start = 0 if after is None else bisect_right([c.id for c in chosen], after)
    chunk = chosen[start : start + page_size]
    more = start + page_size < len(chosen)
    return {
        "cursor": encode_cursor(chunk[-1].id) if more else None,
        "page_size": len(chunk),
        "items": [c.listing() for c in chunk],
    }
