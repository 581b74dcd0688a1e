"""``/_sim``: the control API tests and benchmarks drive the simulator with.

No authentication: the server binds to 127.0.0.1 unless told otherwise.
``{connector}`` is a connector's *name*, not its token. Routes of the
simulator itself have one segment (``/_sim/syncs``) or start with
``/_sim/connectors`` or ``/_sim/webhooks`` (registered first), so they never
collide with ``/_sim/{connector}/{model}``.
"""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures,
# which name closures (dependencies) that string annotations could not resolve.

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.responses import Response

from bindbee_sim.state import Conflict, NotFound, Refused, SimState

_T = TypeVar("_T")
JsonObject = Annotated[dict[str, Any], Body()]


class ConfigUpdate(BaseModel):
    """Run-time switches; omitted ones keep their value."""

    model_config = ConfigDict(extra="forbid")

    rate_limit: int | None = Field(default=None, ge=0)
    rate_window_seconds: float | None = Field(default=None, gt=0)
    honor_modified_after: bool | None = None
    sync_mode: str | None = None
    sync_interval_seconds: float | None = Field(default=None, ge=0)
    sync_duration_seconds: float | None = Field(default=None, ge=0)
    sync_touches_all: bool | None = None


class SyncRequest(BaseModel):
    """``POST /_sim/syncs``: which connector, and whether the sync fails."""

    model_config = ConfigDict(extra="forbid")

    connector: str
    fail: StrictBool = False


class ConnectorUpdate(BaseModel):
    """``PATCH /_sim/connectors/{name}``."""

    model_config = ConfigDict(extra="forbid")

    status: str | None = None
    is_active: StrictBool | None = None


class NewConnector(BaseModel):
    """``POST /_sim/connectors``: a connector linked at run time."""

    model_config = ConfigDict(extra="forbid")

    name: str
    token: str
    enrollments: int | None = Field(default=None, ge=0)


class WebhookDrop(BaseModel):
    """``POST /_sim/webhooks/drop``: lose the next ``count`` matching deliveries."""

    model_config = ConfigDict(extra="forbid")

    event: str | None = None
    connector: str | None = None
    count: int = Field(default=1, ge=1)


class WebhookReplay(BaseModel):
    """``POST /_sim/webhooks/replay``: send a logged delivery again, byte for byte."""

    model_config = ConfigDict(extra="forbid")

    index: int | None = None
    delivery_id: int | None = None
    times: int = Field(default=1, ge=1, le=1000)


class WebhookSend(BaseModel):
    """``POST /_sim/webhooks/send``: an event of the test's own making, signed."""

    model_config = ConfigDict(extra="forbid")

    connector: str
    event: str = "connector_data_modified"
    data: Any = None
    sync_id: str | None = None


def _answer(action: Callable[[], _T]) -> _T:
    """Run a state action, turning its errors into HTTP statuses."""
    try:
        return action()
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except Conflict as exc:
        raise HTTPException(409, f"a record with id {exc} already exists") from exc
    except Refused as exc:
        raise HTTPException(409, str(exc)) from exc
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
        """Seed data and connectors back; staged changes, faults, stats, rate windows,
        sync history and the webhook log cleared."""
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
        """Change the rate limit/window (windows restart), the ``modified_after`` switch
        or the sync settings (``sync_mode``, ``sync_interval_seconds``, ...)."""
        sync = {
            k: v for k, v in body.model_dump().items() if k.startswith("sync_") and v is not None
        }
        return _answer(
            lambda: state.configure(
                body.rate_limit, body.rate_window_seconds, body.honor_modified_after, sync
            )
        )

    @router.get("/syncs")
    async def list_syncs() -> list[dict[str, Any]]:
        """Syncs so far (the last 1000), oldest first."""
        return state.sync_history()

    @router.post("/syncs", status_code=202)
    async def start_sync(body: SyncRequest) -> dict[str, Any]:
        """Start a sync of a connector now; it shows ``Syncing`` for the sync duration.

        409 while one runs or when the connector is inactive.
        """
        return _answer(lambda: state.start_sync(body.connector, body.fail))

    @router.get("/staged")
    async def staged() -> dict[str, int]:
        """Staged changes per connector: records the next sync will write."""
        return state.staged()

    @router.get("/connectors")
    async def list_sim_connectors() -> list[dict[str, Any]]:
        """Every connector as ``GET /api/lms/v1/connectors`` lists it, with its name."""
        return [{"name": name, **state.connector(name)} for name in list(state.datasets)]

    @router.post("/connectors", status_code=201)
    async def add_connector(body: NewConnector) -> dict[str, Any]:
        """Link a connector at run time (seed data already synced); ``reset`` removes it."""
        return _answer(lambda: state.add_connector(body.name, body.token, body.enrollments))

    @router.patch("/connectors/{name}")
    async def set_connector(name: str, body: ConnectorUpdate) -> dict[str, Any]:
        """Set a connector's ``status`` (e.g. ``RELINK_NEEDED``) or ``is_active``."""
        return _answer(lambda: state.set_connector(name, body.status, body.is_active))

    @router.get("/webhooks")
    async def webhooks() -> list[dict[str, Any]]:
        """Webhook delivery attempts: delivery_id, event, connector, sync_id, replay_of,
        attempt, status, error, outcome (delivered, retrying, given_up, dropped), time."""
        return state.webhook_log()

    @router.get("/webhooks/drop")
    async def webhook_drops() -> list[dict[str, Any]]:
        """Drop rules still armed, with their remaining counts."""
        return state.webhook_drops()

    @router.post("/webhooks/drop", status_code=201)
    async def drop_webhooks(body: WebhookDrop) -> list[dict[str, Any]]:
        """Lose the next ``count`` deliveries of ``event`` for ``connector`` (omitted:
        any): never sent, logged once as ``dropped``. Returns the armed rules."""
        return _answer(lambda: state.drop_webhooks(body.count, body.event, body.connector))

    @router.delete("/webhooks/drop", status_code=204)
    async def clear_webhook_drops() -> Response:
        """Disarm every drop rule."""
        state.clear_webhook_drops()
        return Response(status_code=204)

    @router.post("/webhooks/replay", status_code=202)
    async def replay_webhook(body: WebhookReplay) -> dict[str, Any]:
        """Send the delivery at ``index`` of the log (or ``delivery_id``) ``times``
        times again: the same body, the same signature. Returns the new delivery ids."""
        ids = _answer(lambda: state.replay_webhook(body.times, body.index, body.delivery_id))
        return {"delivery_ids": ids}

    @router.post("/webhooks/send", status_code=202)
    async def send_webhook(body: WebhookSend) -> dict[str, Any]:
        """Sign and send an event of one's own making for a connector, e.g. a
        ``connector_data_modified`` naming chosen ids. Returns its delivery id."""
        delivery_id = _answer(
            lambda: state.send_webhook(body.connector, body.event, body.data, body.sync_id)
        )
        return {"delivery_id": delivery_id}

    @router.get("/reads")
    async def reads() -> dict[str, dict[str, Any]]:
        """Data requests past the rate gate per connector: ``pages``, ``by_id``, and
        reads per ``model/id``."""
        return state.reads()

    @router.post("/{connector}/{model}", status_code=201)
    async def create(
        connector: str, model: str, body: JsonObject, unchecked: bool = False
    ) -> dict[str, Any]:
        """Create a record; returns it in full (in scheduled mode: the staged copy).

        ``?unchecked=true`` stores the body as given, valid or not (an id is added
        unless it has one); syncs never rewrite such a record.
        """
        return _answer(lambda: state.create(connector, model, body, unchecked))

    @router.get("/{connector}/{model}/{record_id}")
    async def read(
        connector: str, model: str, record_id: str, staged: bool = False
    ) -> dict[str, Any]:
        """A record in full as the API serves it (``?staged=true``: after the next sync)."""
        record = _answer(lambda: state.get(connector, model, record_id, staged))
        if record is None:
            raise HTTPException(404, f"no {model} with id {record_id}")
        return record

    @router.patch("/{connector}/{model}/{record_id}")
    async def update(
        connector: str, model: str, record_id: str, body: JsonObject
    ) -> dict[str, Any]:
        """Merge fields into a record; ``modified_at`` becomes now (scheduled mode: the
        sync's completion time) unless the body sets it."""
        return _answer(lambda: state.update(connector, model, record_id, body))

    @router.delete("/{connector}/{model}/{record_id}", status_code=204)
    async def delete(connector: str, model: str, record_id: str) -> Response:
        """Delete a record."""
        _answer(lambda: state.delete(connector, model, record_id))
        return Response(status_code=204)

    return router
