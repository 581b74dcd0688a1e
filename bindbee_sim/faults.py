"""Injected faults: what can go wrong with a data response, and how often.

A fault is armed with a ``count``; every data request (list or get, after
auth and rate limiting) that matches its optional ``connector``/``model``
scope consumes one. The first matching fault in the order they were added
wins. One fault may combine a ``delay_ms`` with one other effect, which then
happens after the delay.

A fault with ``connectors_list`` is for ``GET /api/lms/v1/connectors`` instead (the
organisation's list, not a data endpoint): only those requests consume it, and data
faults never touch the list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bindbee_sim.schema import MODELS

Malformed = Literal["json", "missing_items", "item_without_id", "cursor_loop"]
MALFORMED_KINDS: tuple[str, ...] = ("json", "missing_items", "item_without_id", "cursor_loop")
PAGE_ONLY_KINDS = frozenset({"missing_items", "cursor_loop"})
"""Kinds that only make sense for a page, so a get-by-id never consumes them."""

_KEYS = frozenset(
    {
        "status",
        "delay_ms",
        "malformed",
        "disconnect",
        "retry_after",
        "count",
        "connector",
        "model",
        "connectors_list",
    }
)


@dataclass(slots=True)
class Fault:
    """One armed fault."""

    count: int = 1
    status: int | None = None
    """Answer with this status and ``{"detail": ...}``."""
    retry_after: int | None = None
    """``Retry-After`` seconds to send with ``status`` (a 429 gets 1 unless set)."""
    delay_ms: int | None = None
    """Wait this long (without blocking other requests) before answering."""
    malformed: Malformed | None = None
    disconnect: bool = False
    """Drop the connection mid-body."""
    connector: str | None = None
    model: str | None = None
    connectors_list: bool = False
    """For ``GET /connectors`` only (no ``connector``/``model`` scope then)."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], connectors: frozenset[str]) -> Fault:
        """Validate a fault description (the ``POST /_sim/faults`` body).

        Raises ``ValueError`` with a message fit for a 422.
        """
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ValueError(f"unknown fault keys: {unknown}")
        fault = cls(**{k: data[k] for k in data if data[k] is not None})
        fault._check(connectors)
        return fault

    def _check(self, connectors: frozenset[str]) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(self.count) or self.count < 1:
            raise ValueError("count must be a positive integer")
        if self.status is not None and (not is_int(self.status) or not 400 <= self.status <= 599):
            raise ValueError("status must be an integer in 400..599")
        if self.retry_after is not None and (not is_int(self.retry_after) or self.retry_after < 0):
            raise ValueError("retry_after must be a non-negative integer")
        if self.delay_ms is not None and (not is_int(self.delay_ms) or self.delay_ms < 0):
            raise ValueError("delay_ms must be a non-negative integer")
        if self.malformed is not None and self.malformed not in MALFORMED_KINDS:
            raise ValueError(f"malformed must be one of {list(MALFORMED_KINDS)}")
        if not isinstance(self.disconnect, bool):
            raise ValueError("disconnect must be a boolean")
        if not isinstance(self.connectors_list, bool):
            raise ValueError("connectors_list must be a boolean")
        if self.connectors_list and (self.connector is not None or self.model is not None):
            raise ValueError("a connectors_list fault takes no connector or model")
        effects = sum([self.status is not None, self.malformed is not None, self.disconnect])
        if effects > 1:
            raise ValueError("choose one of status, malformed, disconnect per fault")
        if effects == 0 and self.delay_ms is None:
            raise ValueError("a fault needs status, delay_ms, malformed or disconnect")
        if self.connector is not None and self.connector not in connectors:
            raise ValueError(f"unknown connector {self.connector!r}")
        if self.model is not None and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}")

    def matches(self, connector: str, model: str, is_page: bool) -> bool:
        """Whether a data request for ``connector``/``model`` would trigger this fault."""
        if self.connectors_list:
            return False
        if self.connector is not None and self.connector != connector:
            return False
        if self.model is not None and self.model != model:
            return False
        return is_page or self.malformed not in PAGE_ONLY_KINDS

    def as_dict(self) -> dict[str, Any]:
        """The fault as JSON-able data, unset options left out."""
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False}


class FaultBook:
    """The armed faults, in the order they were added (callers hold the state lock)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Arm a fault."""
        self._faults.append(fault)

    def clear(self) -> None:
        """Disarm every fault."""
        self._faults.clear()

    def take(self, connector: str, model: str, is_page: bool) -> Fault | None:
        """Consume one use of the first fault matching this data request, if any."""
        return self._take(lambda fault: fault.matches(connector, model, is_page))

    def take_connectors_list(self) -> Fault | None:
        """Consume one use of the first fault for ``GET /connectors``, if any."""
        return self._take(lambda fault: fault.connectors_list)

    def _take(self, matches: Callable[[Fault], bool]) -> Fault | None:
        for k, fault in enumerate(self._faults):
            if matches(fault):
                fault.count -= 1
                if fault.count == 0:
                    del self._faults[k]
                return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        """The armed faults with their remaining counts."""
        return [f.as_dict() for f in self._faults]
