"""The HTTP API (first slices): health, camera status, recordings. Secrets never leave the process.

Errors are JSON ``{"error": {"code": ..., "message": ...}}``; a user's mistake is a 4xx that
names the problem, never a 500.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import timezone

from aiohttp import web

from nvr.api import openapi
from nvr.api.times import TimeFormatError, format_rfc3339, parse_rfc3339
from nvr.ingest.camera import CameraStatus
from nvr.storage.index import Index
from nvr.storage.index_rows import Gap, RunRow, SegmentRow

StatusSource = Callable[[], Sequence[CameraStatus]]
STATUS_KEY: web.AppKey[StatusSource] = web.AppKey("status")
INDEX_KEY: web.AppKey[Index] = web.AppKey("index")
MAX_RANGE_90K = 7 * 24 * 3600 * 90_000  # one query covers at most a week


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _status_json(st: CameraStatus) -> dict[str, object]:
    return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(st).items()}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def cameras(request: web.Request) -> web.Response:
    statuses = request.app[STATUS_KEY]()
    return web.json_response({"cameras": [_status_json(s) for s in statuses]})


def _find(request: web.Request) -> CameraStatus | None:
    wanted = request.match_info["id"]
    return next((s for s in request.app[STATUS_KEY]() if s.id == wanted), None)


def _no_camera(request: web.Request) -> web.Response:
    return error(404, "not_found", f"no camera with id {request.match_info['id']!r}")


async def camera(request: web.Request) -> web.Response:
    st = _find(request)
    return web.json_response(_status_json(st)) if st is not None else _no_camera(request)


def _range(request: web.Request) -> tuple[int, int, timezone] | web.Response:
    query = request.query
    missing = [name for name in ("start", "end") if name not in query]
    if missing:
        return error(400, "bad_request", f"missing query parameter {missing[0]!r}")
    try:
        start_90k, tz = parse_rfc3339(query["start"], "start")
        end_90k, _ = parse_rfc3339(query["end"], "end")
    except TimeFormatError as exc:
        return error(400, "bad_time", str(exc))
    if end_90k <= start_90k:
        return error(400, "bad_range", "end must be after start")
    if end_90k - start_90k > MAX_RANGE_90K:
        return error(400, "range_too_long", "a range may cover at most 7 days")
    return start_90k, end_90k, tz


def _run_json(r: RunRow, tz: timezone) -> dict[str, object]:
    return {
        "id": r.id,
        "start": format_rfc3339(r.start_90k, tz),
        "end": format_rfc3339(r.end_90k, tz) if r.end_90k is not None else None,
        "end_reason": r.end_reason.value if r.end_reason is not None else None,
        "end_detail": r.end_detail,
        "camera_clock_offset_ms": (
            r.clock_offset_ns // 1_000_000 if r.clock_offset_ns is not None else None
        ),
        "video_codec": r.video_codec,
        "width": r.width,
        "height": r.height,
        "audio_codec": r.audio_codec,
    }


def _segment_json(s: SegmentRow, tz: timezone) -> dict[str, object]:
    return {
        "id": s.id,
        "run_id": s.run_id,
        "state": s.state.value,
        "start": format_rfc3339(s.start_90k, tz),
        "end": format_rfc3339(s.end_90k, tz) if s.end_90k is not None else None,
        "bytes": s.size_bytes,
        "frames": s.video_frames,
        "sha256": s.sha256,
    }


def _gap_json(g: Gap, tz: timezone) -> dict[str, object]:
    return {
        "start": format_rfc3339(g.start_90k, tz),
        "end": format_rfc3339(g.end_90k, tz),
        "reason": g.reason.value,
        "detail": g.detail,
    }


async def recordings(request: web.Request) -> web.Response:
    """Runs, segments and gaps overlapping ``[start, end)``, times in the caller's offset."""
    if _find(request) is None:
        return _no_camera(request)
    parsed = _range(request)
    if isinstance(parsed, web.Response):
        return parsed
    start_90k, end_90k, tz = parsed
    index = request.app[INDEX_KEY]
    cam = request.match_info["id"]
    runs = await index.runs(cam, start_90k, end_90k)
    segments = await index.segments(cam, start_90k, end_90k)
    gaps = await index.gaps(cam, start_90k, end_90k)
    return web.json_response({
        "camera": cam,
        "start": format_rfc3339(start_90k, tz),
        "end": format_rfc3339(end_90k, tz),
        "runs": [_run_json(r, tz) for r in runs],
        "segments": [_segment_json(s, tz) for s in segments],
        "gaps": [_gap_json(g, tz) for g in gaps],
    })  # fmt: skip


def make_app(status: StatusSource, index: Index | None = None) -> web.Application:
    app = web.Application()
    app[STATUS_KEY] = status
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get("/api/v1/cameras", cameras)
    app.router.add_get("/api/v1/cameras/{id}", camera)
    if index is not None:
        app[INDEX_KEY] = index
        app.router.add_get("/api/v1/cameras/{id}/recordings", recordings)
    return app
