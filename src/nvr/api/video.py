"""``GET /api/v1/cameras/{id}/video.mp4?start&end``: any recorded range as one MP4.

The clip is planned from the index (``storage.clip``) and streamed from the segment files;
nothing is re-muxed, so the first byte goes out as soon as the header is built. ``Range``
requests are served from the same plan, with a strong ETag so a client resuming or seeking
with ``If-Range`` knows the bytes are the same. The segments read stay leased (DESIGN I6)
until the response is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime, timedelta, timezone

from aiohttp import web

from nvr.api.common import INDEX_KEY, ROOT_KEY, error, find_camera, no_camera, range_query
from nvr.api.ranges import UnsatisfiableRange, parse_range
from nvr.api.times import format_rfc3339
from nvr.errors import StorageError
from nvr.storage.clip import Clip, ClipCache, NoRecordingError, plan_clip
from nvr.storage.leases import ReaderLeases

log = logging.getLogger(__name__)
LEASES_KEY: web.AppKey[ReaderLeases] = web.AppKey("leases")
MAX_CLIP_KEY: web.AppKey[int] = web.AppKey("max_clip_90k")
CLIP_CACHE_KEY: web.AppKey[ClipCache] = web.AppKey("clip_cache")
READ_BYTES = 1 << 20


def clip_etag(clip: Clip) -> str:
    """Same camera, range and source files (by hash): same bytes."""
    h = hashlib.sha256(f"{clip.camera_id}:{clip.asked_start_90k}:{clip.asked_end_90k}".encode())
    for s in clip.sources:
        h.update(f":{s.segment_id}:{s.sha256}".encode())
    return f'"{h.hexdigest()[:32]}"'


def clip_file_name(camera_id: str, start_90k: int, tz: timezone) -> str:
    """``gate_2026-11-29_03-00-00+0700.mp4``: the camera and the local start time."""
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start_90k * 100 // 9)
    return f"{camera_id}_{t.astimezone(tz):%Y-%m-%d_%H-%M-%S%z}.mp4"


def gaps_header(clip: Clip, tz: timezone) -> str:
    """``start/end;reason=timeout, ...`` for each gap inside the clip."""
    return ", ".join(
        f"{format_rfc3339(g.start_90k, tz)}/{format_rfc3339(g.end_90k, tz)};reason={g.reason}"
        for g in clip.gaps
    )


async def video_mp4(request: web.Request) -> web.StreamResponse:
    if find_camera(request) is None:
        return no_camera(request)
    parsed = range_query(request, request.app[MAX_CLIP_KEY])
    if isinstance(parsed, web.Response):
        return parsed
    start_90k, end_90k, tz = parsed
    cam = request.match_info["id"]
    # Leased by range before the segments are looked up: retention cannot delete one between
    # the lookup and the last byte sent (I6).
    with request.app[LEASES_KEY].hold_range(cam, start_90k, end_90k):
        return await _serve_clip(request, cam, start_90k, end_90k, tz)


async def _serve_clip(
    request: web.Request, cam: str, start_90k: int, end_90k: int, tz: timezone
) -> web.StreamResponse:
    try:
        clip = await plan_clip(request.app[INDEX_KEY], request.app[ROOT_KEY], cam, start_90k,
                               end_90k, cache=request.app[CLIP_CACHE_KEY])  # fmt: skip
    except NoRecordingError:
        return error(404, "no_recording", "nothing was recorded in that range")
    except StorageError as exc:
        return error(409, "recording_unreadable", str(exc))
    etag = clip_etag(clip)
    headers = {
        "Content-Type": "video/mp4",
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": (
            f'inline; filename="{clip_file_name(cam, clip.delivered_start_90k, tz)}"'
        ),
        "X-Nvr-Delivered": (
            f"{format_rfc3339(clip.delivered_start_90k, tz)}/"
            f"{format_rfc3339(clip.delivered_end_90k, tz)}"
        ),
        "X-Nvr-Gaps": gaps_header(clip, tz),
    }
    if_range = request.headers.get("If-Range")
    try:
        byte_range = parse_range(request.headers.get("Range"), clip.size_bytes)
    except UnsatisfiableRange:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{clip.size_bytes}"})
    if byte_range is not None and if_range is not None and if_range != etag:
        byte_range = None  # the client's copy is of other bytes: send it all
    first, stop = byte_range if byte_range is not None else (0, clip.size_bytes)
    resp = web.StreamResponse(status=206 if byte_range is not None else 200, headers=headers)
    if byte_range is not None:
        resp.headers["Content-Range"] = f"bytes {first}-{stop - 1}/{clip.size_bytes}"
    resp.content_length = stop - first
    with request.app[LEASES_KEY].hold(s.segment_id for s in clip.sources):  # and by id
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        at = first
        while at < stop:
            try:
                data = await asyncio.to_thread(clip.read, at, min(READ_BYTES, stop - at))
            except StorageError as exc:
                # Headers are out: all we can do is cut the response short, which the client
                # sees as a truncated body (Content-Length is not met).
                log.warning("camera=%s clip cut short at byte %d: %s", cam, at, exc)
                if request.transport is not None:
                    request.transport.close()
                return resp
            await resp.write(data)
            at += len(data)
        await resp.write_eof()
    return resp


def add_video_routes(app: web.Application, leases: ReaderLeases, max_clip_90k: int) -> None:
    app[LEASES_KEY] = leases
    app[MAX_CLIP_KEY] = max_clip_90k
    app[CLIP_CACHE_KEY] = ClipCache()
    app.router.add_get("/api/v1/cameras/{id}/video.mp4", video_mp4)
