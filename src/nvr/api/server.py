"""The HTTP API (first slices): health, camera status, recordings. Secrets never leave the process.

Every route but ``/healthz`` needs a bearer token of a role high enough (``auth.py``).

Errors are JSON ``{"error": {"code": ..., "message": ...}}``; a user's mistake is a 4xx that
names the problem, never a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import timezone
from pathlib import Path

from aiohttp import web

from nvr.api import openapi
from nvr.api.auth import add_token_routes, auth_middleware
from nvr.api.common import (
    INDEX_KEY,
    ROOT_KEY,
    STATUS_KEY,
    StatusSource,
    error,
    find_camera,
    no_camera,
    range_query,
)
from nvr.api.exports import add_export_routes
from nvr.api.holds import add_hold_routes
from nvr.api.monitoring import add_monitoring_routes
from nvr.api.times import TimeFormatError, format_rfc3339, parse_rfc3339
from nvr.api.video import add_video_routes
from nvr.clock import Clock, SystemClock
from nvr.errors import StorageError
from nvr.exports import ExportManager
from nvr.ingest.camera import CameraStatus
from nvr.metrics import Metrics
from nvr.storage.index import Index
from nvr.storage.index_rows import Gap, RunRow, SegmentRow
from nvr.storage.leases import ReaderLeases
from nvr.storage.model import SegmentState
from nvr.storage.snapshot import keyframe_jpeg


def _status_json(st: CameraStatus) -> dict[str, object]:
    return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(st).items()}


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


CONFIG_KEY: web.AppKey[Callable[[], Mapping[str, object]]] = web.AppKey("config")


async def running_config(request: web.Request) -> web.Response:
    """The configuration the daemon runs with, without secrets (admin)."""
    return web.json_response(request.app[CONFIG_KEY]())


async def cameras(request: web.Request) -> web.Response:
    statuses = request.app[STATUS_KEY]()
    return web.json_response({"cameras": [_status_json(s) for s in statuses]})


async def camera(request: web.Request) -> web.Response:
    st = find_camera(request)
    return web.json_response(_status_json(st)) if st is not None else no_camera(request)


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
    if find_camera(request) is None:
        return no_camera(request)
    parsed = range_query(request)
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


async def snapshot(request: web.Request) -> web.Response:
    """The keyframe at or before ``at`` (default: the latest recorded), as JPEG."""
    if find_camera(request) is None:
        return no_camera(request)
    cam = request.match_info["id"]
    index = request.app[INDEX_KEY]
    root = request.app[ROOT_KEY]
    if "at" in request.query:
        try:
            at_90k, _ = parse_rfc3339(request.query["at"], "at")
        except TimeFormatError as exc:
            return error(400, "bad_time", str(exc))
        found = [s for s in await index.segments(cam, at_90k, at_90k + 1)
                 if s.state is SegmentState.CLOSED and s.start_90k <= at_90k]  # fmt: skip
    else:
        latest = await index.latest_closed_segment(cam)
        found = [latest] if latest is not None and latest.end_90k is not None else []
        at_90k = latest.end_90k - 1 if latest is not None and latest.end_90k is not None else 0
    if not found:
        return error(404, "no_recording", "nothing was recorded at that time")
    seg = found[-1]
    try:
        jpeg = await asyncio.to_thread(keyframe_jpeg, root / seg.path, at_90k - seg.start_90k)
    except StorageError as exc:
        return error(404, "no_picture", str(exc))
    return web.Response(body=jpeg, content_type="image/jpeg")


def make_app(
    status: StatusSource,
    index: Index | None = None,
    root: Path | None = None,
    *,
    clock: Clock | None = None,
    leases: ReaderLeases | None = None,
    exports: ExportManager | None = None,
    max_clip_90k: int = 86_400 * 90_000,
    config: Callable[[], Mapping[str, object]] | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The API. Tokens are checked against ``index``; without one only /healthz answers.

    With ``metrics``, /metrics is served and every answer is counted (401s and 404s too).
    """
    middlewares = [auth_middleware(index, clock=clock)]
    if metrics is not None:
        middlewares.insert(0, metrics.middleware())  # outermost: sees 401s and 404s too
    app = web.Application(middlewares=middlewares)
    app[STATUS_KEY] = status
    add_monitoring_routes(app, index, root, metrics)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get("/api/v1/cameras", cameras)
    app.router.add_get("/api/v1/cameras/{id}", camera)
    if config is not None:
        app[CONFIG_KEY] = config
        app.router.add_get("/api/v1/config", running_config)
    if index is not None:
        app[INDEX_KEY] = index
        add_token_routes(app, index)
        add_hold_routes(app, clock or SystemClock())
        app.router.add_get("/api/v1/cameras/{id}/recordings", recordings)
        if root is not None:
            app[ROOT_KEY] = root
            app.router.add_get("/api/v1/cameras/{id}/snapshot.jpg", snapshot)
            add_video_routes(app, leases or ReaderLeases(), max_clip_90k)
            if exports is not None:
                add_export_routes(app, exports)
    return app
