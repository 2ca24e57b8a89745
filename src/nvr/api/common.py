"""What every route module shares: the app's keys, JSON errors, JSON bodies, camera lookup,
range queries."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timezone
from pathlib import Path
from typing import Annotated, TypeVar

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints, ValidationError

from nvr.api.times import TimeFormatError, parse_rfc3339
from nvr.ingest.camera import CameraStatus
from nvr.storage.index import Index

StatusSource = Callable[[], Sequence[CameraStatus]]
STATUS_KEY: web.AppKey[StatusSource] = web.AppKey("status")
INDEX_KEY: web.AppKey[Index] = web.AppKey("index")
ROOT_KEY: web.AppKey[Path] = web.AppKey("root")
MAX_RANGE_90K = 7 * 24 * 3600 * 90_000  # one query covers at most a week

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
CameraId = Annotated[str, Field(pattern=r"^[a-z0-9-]+$", max_length=64)]
_Body = TypeVar("_Body", bound=BaseModel)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def json_body(request: web.Request, model: type[_Body]) -> _Body | web.Response:
    """The request's JSON body as ``model``, or a 400 naming the first bad field."""
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error(400, "bad_request", "the body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return error(400, "bad_request", f"{where}: {first['msg']}")


def find_camera(request: web.Request, camera_id: str | None = None) -> CameraStatus | None:
    wanted = camera_id if camera_id is not None else request.match_info["id"]
    return next((s for s in request.app[STATUS_KEY]() if s.id == wanted), None)


def no_camera(request: web.Request, camera_id: str | None = None) -> web.Response:
    wanted = camera_id if camera_id is not None else request.match_info["id"]
    return error(404, "not_found", f"no camera with id {wanted!r}")


def range_query(
    request: web.Request, max_90k: int = MAX_RANGE_90K
) -> tuple[int, int, timezone] | web.Response:
    """``start`` and ``end`` from the query: 90 kHz times and the caller's offset, or a 400."""
    query = request.query
    missing = [name for name in ("start", "end") if name not in query]
    if missing:
        return error(400, "bad_request", f"missing query parameter {missing[0]!r}")
    try:
        start_90k, tz = parse_rfc3339(query["start"], "start")
        end_90k, _ = parse_rfc3339(query["end"], "end")
    except TimeFormatError as exc:
        return error(400, "bad_time", str(exc))
    return check_range(start_90k, end_90k, max_90k) or (start_90k, end_90k, tz)


def check_range(start_90k: int, end_90k: int, max_90k: int) -> web.Response | None:
    """A 400 naming what is wrong with ``[start, end)``, or None when it is fine."""
    if end_90k <= start_90k:
        return error(400, "bad_range", "end must be after start")
    if end_90k - start_90k > max_90k:
        return error(400, "range_too_long", f"a range may cover at most {_span(max_90k)}")
    return None


def _span(t_90k: int) -> str:
    s = t_90k // 90_000
    if s % 86_400 == 0:
        return f"{s // 86_400} days" if s != 86_400 else "1 day"
    if s % 3600 == 0:
        return f"{s // 3600} hours" if s != 3600 else "1 hour"
    return f"{s} seconds"
