"""The FastAPI app: the LMS data endpoints, the connectors list, and ``/_sim``.

Request path of a data endpoint, in order:

1. bearer API key (401),
2. ``x-connector-token``: missing -> FastAPI's 422, unknown -> 401,
3. rate limit for that token (429; headers added to every later response),
4. query validation (FastAPI's 422),
5. at most one injected fault (the connectors list: only its own, ``connectors_list``),
6. the page or record, serialised with orjson under the state lock.

``DataResponses`` (plain ASGI, around everything) counts statuses per
connector (``GET /connectors`` under ``_org``) and stamps the rate-limit
headers on whatever response results.
"""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures,
# which name closures (dependencies) that string annotations could not resolve.

import asyncio
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bindbee_sim.control import control_router
from bindbee_sim.data import Dataset
from bindbee_sim.faults import Fault
from bindbee_sim.ids import ZERO_UUID, decode_cursor, encode_cursor
from bindbee_sim.query import ListQuery, Projection, parse_expand
from bindbee_sim.ratelimit import RateDecision
from bindbee_sim.responses import DisconnectResponse, json_response
from bindbee_sim.schema import MODELS, ModelSpec
from bindbee_sim.state import ORG_STATS_KEY, SimState
from bindbee_sim.times import datetime_to_us, parse_us

API_PREFIX = "/api/lms/v1"
CONNECTORS_PATH = f"{API_PREFIX}/connectors"
_RATE_KEY = "bindbee_sim.rate"  # scope key where the gate leaves its RateDecision

PageSize = Annotated[int, Query(ge=1, le=100, description="items per page")]


class DataResponses:
    """ASGI middleware for data endpoints: status stats and rate-limit headers."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through, watching the response head."""
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(API_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        if path == CONNECTORS_PATH:
            who = ORG_STATS_KEY
        else:
            token = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-connector-token"),
                None,
            )
            who = self.state.attribution(token)
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                decision: RateDecision | None = scope.get(_RATE_KEY)
                if decision is not None:
                    message = {
                        **message,
                        "headers": [*message.get("headers", ()), *decision.headers()],
                    }
                self.state.record_status(who, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if not started:
                self.state.record_status(who, 500)
            raise


def _invalid(location: str, name: str, message: str, value: Any) -> RequestValidationError:
    """A 422 in exactly FastAPI's shape, for checks FastAPI cannot express."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (location, name), "msg": message, "input": value}]
    )


def _spec(model: str) -> ModelSpec:
    spec = MODELS.get(model)
    if spec is None:
        raise HTTPException(404, "Not Found")
    return spec


def _projection(spec: ModelSpec, raw: bool, custom: bool, expand: str | None) -> Projection:
    try:
        relations = parse_expand(expand, spec)
    except ValueError as exc:
        raise _invalid("query", "expand", str(exc), expand) from exc
    return Projection(include_custom_fields=custom, include_raw_data=raw, expand=relations)


async def _fault_response(fault: Fault | None) -> Response | None:
    """Wait a fault's delay, then its response if it is a status or disconnect fault
    (None for no fault and for the kinds that shape a normal answer)."""
    if fault is None:
        return None
    if fault.delay_ms:
        await asyncio.sleep(fault.delay_ms / 1000)
    if fault.disconnect:
        return DisconnectResponse(b'{"cursor": null, "page_size": 100, "items": [{"id": "01')
    if fault.status is not None:
        retry_after = fault.retry_after
        if retry_after is None and fault.status == 429:
            retry_after = 1  # a 429 without Retry-After would not look like Bindbee's
        headers = None if retry_after is None else {"Retry-After": str(retry_after)}
        return json_response(
            {"detail": f"simulated fault: HTTP {fault.status}"}, fault.status, headers
        )
    return None


def _malformed_page(kind: str, body: dict[str, Any], cursor: str | None) -> bytes:
    if kind == "missing_items":
        del body["items"]
    elif kind == "item_without_id" and body["items"]:
        del body["items"][0]["id"]
    elif kind == "cursor_loop":
        # Echo the request's cursor; on a first page point back before the start.
        body["cursor"] = cursor if cursor is not None else encode_cursor(ZERO_UUID)
    content = orjson.dumps(body)
    return content[: len(content) // 2] if kind == "json" else content


def build_app(state: SimState) -> FastAPI:
    """The simulator's ASGI app over ``state``."""
    app = FastAPI(title="Bindbee LMS API simulator", version="1")
    app.add_middleware(DataResponses, state=state)

    async def require_api_key(authorization: Annotated[str | None, Header()] = None) -> None:
        if not state.authorized(authorization):
            raise HTTPException(
                401, "Invalid or missing API key", headers={"WWW-Authenticate": "Bearer"}
            )

    async def connector(request: Request, x_connector_token: Annotated[str, Header()]) -> Dataset:
        ds = state.dataset_for_token(x_connector_token)
        if ds is None:
            raise HTTPException(401, "Unknown connector token")
        decision = state.admit(ds.token)
        if decision is not None:
            request.scope[_RATE_KEY] = decision
            if not decision.allowed:
                raise HTTPException(429, "Rate limit exceeded")
        return ds

    authenticated = [Depends(require_api_key)]

    @app.get(CONNECTORS_PATH, dependencies=authenticated)
    async def list_connectors(
        page_size: PageSize = 50,
        cursor: str | None = None,
        is_active: bool | None = None,
        connector_token: str | None = None,
        origin_id: str | None = None,
    ) -> Response:
        """The organisation's connectors (API key only; not rate limited)."""
        after = _decode(cursor)
        fault = state.take_connectors_list_fault()
        broken = await _fault_response(fault)
        if broken is not None:
            return broken
        body = state.connectors_page(page_size, after, is_active, connector_token, origin_id)
        if fault is not None and fault.malformed is not None:
            content = _malformed_page(fault.malformed, body, cursor)
            return Response(content, media_type="application/json")
        return json_response(body)

    @app.get(API_PREFIX + "/{model}", dependencies=authenticated)
    async def list_records(
        model: str,
        ds: Annotated[Dataset, Depends(connector)],
        page_size: PageSize = 50,
        cursor: str | None = None,
        remote_id: str | None = None,
        user: str | None = None,
        course: str | None = None,
        content: str | None = None,
        include_raw_data: bool = False,
        include_custom_fields: bool = False,
        expand: str | None = None,
        start_date_from: datetime | None = None,
        start_date_to: datetime | None = None,
        end_date_from: datetime | None = None,
        end_date_to: datetime | None = None,
        modified_after: str | None = None,
    ) -> Response:
        """One page of a model's records, ordered by id."""
        spec = _spec(model)
        state.record_read(ds.name, model, None)
        relation_ids = {"user": user, "course": course, "content": content}
        bounds = {
            "start_date": (start_date_from, start_date_to),
            "end_date": (end_date_from, end_date_to),
        }
        query = ListQuery(
            page_size=page_size,
            after=_decode(cursor),
            remote_id=remote_id,
            equals={f: v for f in spec.equality_filters if (v := relation_ids[f]) is not None},
            ranges={
                f: (_us(low), _us(high))
                for f in spec.date_filters
                for low, high in [bounds[f]]
                if low is not None or high is not None
            },
            # Unknown to the documented endpoint: ignored unless the switch is on.
            modified_after=_modified_after(modified_after) if state.honor_modified_after else None,
            projection=_projection(spec, include_raw_data, include_custom_fields, expand),
        )
        fault = state.take_fault(ds.name, model, is_page=True)
        broken = await _fault_response(fault)
        if broken is not None:
            return broken
        with state.lock:
            body = ds.page(model, query)
            if fault is not None and fault.malformed is not None:
                content_bytes = _malformed_page(fault.malformed, body, cursor)
            else:
                content_bytes = orjson.dumps(body)
        return Response(content_bytes, media_type="application/json")

    @app.get(API_PREFIX + "/{model}/{record_id}", dependencies=authenticated)
    async def get_record(
        model: str,
        record_id: str,
        ds: Annotated[Dataset, Depends(connector)],
        include_raw_data: bool = False,
        include_custom_fields: bool = False,
        expand: str | None = None,
    ) -> Response:
        """One record by id (404 when there is none)."""
        spec = _spec(model)
        state.record_read(ds.name, model, record_id)
        projection = _projection(spec, include_raw_data, include_custom_fields, expand)
        fault = state.take_fault(ds.name, model, is_page=False)
        broken = await _fault_response(fault)
        if broken is not None:
            return broken
        with state.lock:
            record = ds.get(model, record_id, projection)
            if record is None:
                raise HTTPException(404, "Not Found")
            if fault is not None and fault.malformed == "item_without_id":
                del record["id"]
            content_bytes = orjson.dumps(record)
        if fault is not None and fault.malformed == "json":
            content_bytes = content_bytes[: len(content_bytes) // 2]
        return Response(content_bytes, media_type="application/json")

    app.include_router(control_router(state))
    return app


def _decode(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError as exc:
        raise _invalid("query", "cursor", str(exc), cursor) from exc


def _us(value: datetime | None) -> int | None:
    return None if value is None else datetime_to_us(value)


def _modified_after(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_us(value)
    except ValueError as exc:
        raise _invalid(
            "query", "modified_after", "Input should be a valid datetime", value
        ) from exc
