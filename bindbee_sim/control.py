"""``/_sim``: the control API tests and benchmarks drive the simulator with.

No authentication: the server binds to 127.0.0.1 unless told otherwise.
``{connector}`` is a connector's *name*, not its token.
"""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures,
# which name closures (dependencies) that string annotations could not resolve.

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from bindbee_sim.state import Conflict, NotFound, SimState

_T = TypeVar("_T")
JsonObject = Annotated[dict[str, Any], Body()]


class ConfigUpdate(BaseModel):
    """Run-time switches; omitted ones keep their value."""

    model_config = ConfigDict(extra="forbid")

    rate_limit: int | None = Field(default=None, ge=0)
    rate_window_seconds: float | None = Field(default=None, gt=0)
    honor_modified_after: bool | None = None


def _answer(action: Callable[[], _T]) -> _T:
    """Run a state action, turning its errors into HTTP statuses."""
    try:
        return action()
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except Conflict as exc:
        raise HTTPException(409, f"a record with id {exc} already exists") from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


def control_router(state: SimState) -> APIRouter:
    """Routes under ``/_sim`` acting on ``state``."""
    router = APIRouter(prefix="/_sim", tags=["simulator control"])

    @router.get("/stats")
    async def stats() -> dict[str, dict[str, int]]:
        """Data responses per connector name and status code."""
        return state.stats()

    @router.post("/reset")
    async def reset() -> dict[str, str]:
        """Seed data back; faults, stats and rate windows cleared."""
        state.reset()
        return {"status": "reset"}

    @router.get("/faults")
    async def list_faults() -> list[dict[str, Any]]:
        """Faults still armed, with their remaining counts."""
        return state.pending_faults()

    @router.post("/faults", status_code=201)
    async def add_fault(body: JsonObject) -> dict[str, Any]:
        """Arm a fault, e.g. ``{"status": 503, "count": 3, "connector": "acme"}``."""
        return _answer(lambda: state.add_fault(body))

    @router.delete("/faults", status_code=204)
    async def clear_faults() -> Response:
        """Disarm every fault."""
        state.clear_faults()
        return Response(status_code=204)

    @router.get("/config")
    async def get_config() -> dict[str, Any]:
        """Current rate limit, window and ``modified_after`` switch."""
        return state.configure()

    @router.post("/config")
    async def set_config(body: ConfigUpdate) -> dict[str, Any]:
        """Change the rate limit/window (windows restart) or the ``modified_after`` switch."""
        return state.configure(body.rate_limit, body.rate_window_seconds,
                               body.honor_modified_after)

    @router.post("/{connector}/{model}", status_code=201)
    async def create(connector: str, model: str, body: JsonObject) -> dict[str, Any]:
        """Create a record; returns it in full."""
        return _answer(lambda: state.create(connector, model, body))

    @router.get("/{connector}/{model}/{record_id}")
    async def read(connector: str, model: str, record_id: str) -> dict[str, Any]:
        """A record in full (custom_fields and raw_data included)."""
        record = _answer(lambda: state.get(connector, model, record_id))
        if record is None:
            raise HTTPException(404, f"no {model} with id {record_id}")
        return record

    @router.patch("/{connector}/{model}/{record_id}")
    async def update(connector: str, model: str, record_id: str,
                     body: JsonObject) -> dict[str, Any]:
        """Merge fields into a record; ``modified_at`` becomes now unless the body sets it."""
        return _answer(lambda: state.update(connector, model, record_id, body))

    @router.delete("/{connector}/{model}/{record_id}", status_code=204)
    async def delete(connector: str, model: str, record_id: str) -> Response:
        """Delete a record."""
        _answer(lambda: state.delete(connector, model, record_id))
        return Response(status_code=204)

    return router
