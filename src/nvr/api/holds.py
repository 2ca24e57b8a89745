"""Evidence-hold routes: place, list and read holds (operator); release one (admin).

A hold keeps the recording of its cameras over ``[start, end)`` from retention until it is
released or its ``until`` passes. Placing one needs only the operator role, since keeping
evidence is never harmful; releasing one lets recording be deleted, so it needs admin.
"""

from __future__ import annotations

import secrets
from datetime import UTC
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nvr.api.auth import TOKEN_KEY
from nvr.api.common import INDEX_KEY, CameraId, Text, check_range, error, json_body, no_camera
from nvr.api.times import TimeFormatError, format_rfc3339, parse_rfc3339
from nvr.clock import Clock
from nvr.ingest.timeline import ns_to_90k
from nvr.storage.index_rows import HoldRow

MAX_HOLD_90K = 366 * 86_400 * 90_000  # a sanity cap, not a policy: a case may span months
MAX_HOLD_CAMERAS = 64
_CLOCK_KEY: web.AppKey[Clock] = web.AppKey("holds_clock")


class _HoldBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cameras: Annotated[list[CameraId], Field(min_length=1, max_length=MAX_HOLD_CAMERAS)]
    start: str
    end: str
    case: Text
    reason: Text
    until: str | None = None


def hold_json(h: HoldRow, now_90k: int) -> dict[str, object]:
    """A hold as the API and the CLI show it, times in UTC."""

    def t(v: int | None) -> str | None:
        return format_rfc3339(v, UTC) if v is not None else None

    return {
        "id": h.id, "cameras": list(h.cameras), "start": t(h.start_90k), "end": t(h.end_90k),
        "until": t(h.until_90k), "case": h.case_ref, "reason": h.reason,
        "created": t(h.created_90k), "created_by": h.created_by, "released": t(h.released_90k),
        "released_by": h.released_by, "export_id": h.export_id, "active": h.active(now_90k),
    }  # fmt: skip


def _now_90k(request: web.Request) -> int:
    return ns_to_90k(request.app[_CLOCK_KEY].wall_ns())


def _answer(request: web.Request, h: HoldRow, status: int = 200) -> web.Response:
    headers = {"Location": f"/api/v1/holds/{h.id}"} if status == 201 else None
    return web.json_response(hold_json(h, _now_90k(request)), status=status, headers=headers)


async def create_hold(request: web.Request) -> web.Response:
    body = await json_body(request, _HoldBody)
    if isinstance(body, web.Response):
        return body
    try:
        start_90k, _ = parse_rfc3339(body.start, "start")
        end_90k, _ = parse_rfc3339(body.end, "end")
        until_90k = parse_rfc3339(body.until, "until")[0] if body.until is not None else None
    except TimeFormatError as exc:
        return error(400, "bad_time", str(exc))
    if (refused := check_range(start_90k, end_90k, MAX_HOLD_90K)) is not None:
        return refused
    if until_90k is not None and until_90k <= _now_90k(request):
        return error(400, "bad_request", "until: must be in the future")
    index = request.app[INDEX_KEY]
    cameras = sorted(set(body.cameras))
    for cam in cameras:  # the index's rows: a camera no longer configured can still be held
        if await index.camera(cam) is None:
            return no_camera(request, cam)
    row = await index.add_hold(
        secrets.token_hex(8), cameras, start_90k, end_90k, case_ref=body.case,
        reason=body.reason, created_by=request[TOKEN_KEY].name, until_90k=until_90k,
    )  # fmt: skip
    return _answer(request, row, 201)


async def list_holds(request: web.Request) -> web.Response:
    active = request.query.get("active", "false")
    if active not in ("true", "false"):
        return error(400, "bad_request", "active: must be 'true' or 'false'")
    rows = await request.app[INDEX_KEY].holds(active_only=active == "true")
    now_90k = _now_90k(request)
    return web.json_response({"holds": [hold_json(h, now_90k) for h in rows]})


async def _row(request: web.Request) -> HoldRow | web.Response:
    hold_id = request.match_info["id"]
    row = await request.app[INDEX_KEY].hold(hold_id)
    if row is None:
        return error(404, "not_found", f"no hold with id {hold_id!r}")
    return row


async def get_hold(request: web.Request) -> web.Response:
    row = await _row(request)
    return row if isinstance(row, web.Response) else _answer(request, row)


async def release_hold(request: web.Request) -> web.Response:
    row = await _row(request)
    if isinstance(row, web.Response):
        return row
    index = request.app[INDEX_KEY]
    if row.released_90k is not None or not await index.release_hold(
        row.id, request[TOKEN_KEY].name
    ):
        return error(409, "already_released", f"hold {row.id} was released already")
    released = await index.hold(row.id)
    assert released is not None
    return _answer(request, released)


def add_hold_routes(app: web.Application, clock: Clock) -> None:
    """Serve ``/api/v1/holds`` from the app's index; ``clock`` says which holds are active."""
    app[_CLOCK_KEY] = clock
    app.router.add_post("/api/v1/holds", create_hold)
    app.router.add_get("/api/v1/holds", list_holds)
    app.router.add_get("/api/v1/holds/{id}", get_hold)
    app.router.add_delete("/api/v1/holds/{id}", release_hold)
