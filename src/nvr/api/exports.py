"""Export routes: start a job, follow it, download the clip and its manifest (role operator)."""

from __future__ import annotations

import base64
from datetime import UTC

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from nvr.api.auth import TOKEN_KEY
from nvr.api.common import (
    INDEX_KEY,
    ROOT_KEY,
    CameraId,
    Text,
    check_range,
    error,
    find_camera,
    json_body,
    no_camera,
)
from nvr.api.times import TimeFormatError, format_rfc3339, parse_rfc3339
from nvr.api.video import MAX_CLIP_KEY, clip_file_name
from nvr.exports import ExportManager, ExportRequest, manifest_name
from nvr.storage.index_rows import ExportRow, ExportState
from nvr.storage.model import SegmentState

EXPORTS_KEY: web.AppKey[ExportManager] = web.AppKey("exports")


class _ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    camera: CameraId
    start: str
    end: str
    reason: Text
    requested_by: Text
    hold: bool = True


def export_json(row: ExportRow, progress: tuple[int, int] | None) -> dict[str, object]:
    utc = UTC

    def t(v: int | None) -> str | None:
        return format_rfc3339(v, utc) if v is not None else None

    done = 1.0 if row.state is ExportState.DONE else 0.0
    if progress is not None and progress[1]:
        done = progress[0] / progress[1]
    base = f"/api/v1/exports/{row.id}"
    return {
        "id": row.id, "camera": row.camera_id, "start": t(row.start_90k), "end": t(row.end_90k),
        "reason": row.reason, "requested_by": row.requested_by, "token_name": row.token_name,
        "hold": row.hold, "state": row.state.value, "progress": round(done, 4),
        "size_bytes": row.size_bytes, "sha256": row.sha256, "error": row.error,
        "created": t(row.created_90k), "started": t(row.started_90k),
        "finished": t(row.finished_90k),
        "file": f"{base}/file" if row.state is ExportState.DONE else None,
        "manifest": f"{base}/manifest" if row.state is ExportState.DONE else None,
    }  # fmt: skip


async def create_export(request: web.Request) -> web.Response:
    body = await json_body(request, _ExportBody)
    if isinstance(body, web.Response):
        return body
    try:
        start_90k, _ = parse_rfc3339(body.start, "start")
        end_90k, _ = parse_rfc3339(body.end, "end")
    except TimeFormatError as exc:
        return error(400, "bad_time", str(exc))
    if (refused := check_range(start_90k, end_90k, request.app[MAX_CLIP_KEY])) is not None:
        return refused
    if find_camera(request, body.camera) is None:
        return no_camera(request, body.camera)
    index = request.app[INDEX_KEY]
    segs = await index.segments(body.camera, start_90k, end_90k)
    if not any(s.state is SegmentState.CLOSED for s in segs):
        return error(404, "no_recording", "nothing was recorded in that range")
    token = request.get(TOKEN_KEY)
    req = ExportRequest(body.camera, start_90k, end_90k, body.reason, body.requested_by,
                        token.name if token is not None else None, body.hold)  # fmt: skip
    manager = request.app[EXPORTS_KEY]
    row = await manager.submit(req)
    return web.json_response(export_json(row, manager.progress(row.id)), status=202,
                             headers={"Location": f"/api/v1/exports/{row.id}"})  # fmt: skip


async def list_exports(request: web.Request) -> web.Response:
    manager = request.app[EXPORTS_KEY]
    rows = await request.app[INDEX_KEY].exports()
    return web.json_response({"exports": [export_json(r, manager.progress(r.id)) for r in rows]})


async def _row(request: web.Request) -> ExportRow | web.Response:
    export_id = request.match_info["id"]
    row = await request.app[INDEX_KEY].export(export_id)
    if row is None:
        return error(404, "not_found", f"no export with id {export_id!r}")
    return row


async def get_export(request: web.Request) -> web.Response:
    row = await _row(request)
    if isinstance(row, web.Response):
        return row
    return web.json_response(export_json(row, request.app[EXPORTS_KEY].progress(row.id)))


def _ready(request: web.Request, row: ExportRow) -> web.Response | None:
    if row.state is ExportState.DONE and row.file_name is not None:
        return None
    why = f": {row.error}" if row.error else ""
    return error(409, "not_ready", f"export {row.id} is {row.state.value}{why}")


async def export_file(request: web.Request) -> web.StreamResponse:
    row = await _row(request)
    if isinstance(row, web.Response):
        return row
    if (refused := _ready(request, row)) is not None:
        return refused
    assert row.file_name is not None and row.sha256 is not None
    path = request.app[ROOT_KEY] / row.file_name
    name = clip_file_name(row.camera_id, row.start_90k, UTC)
    digest = base64.b64encode(bytes.fromhex(row.sha256)).decode()
    return web.FileResponse(path, headers={
        "Content-Type": "video/mp4",
        "Content-Disposition": f'attachment; filename="{name}"',
        "Repr-Digest": f"sha-256=:{digest}:",
    })  # fmt: skip


async def export_manifest(request: web.Request) -> web.StreamResponse:
    row = await _row(request)
    if isinstance(row, web.Response):
        return row
    if (refused := _ready(request, row)) is not None:
        return refused
    assert row.file_name is not None
    path = request.app[ROOT_KEY] / manifest_name(row.file_name)
    return web.FileResponse(path, headers={"Content-Type": "application/json"})


def add_export_routes(app: web.Application, manager: ExportManager) -> None:
    app[EXPORTS_KEY] = manager
    app.router.add_post("/api/v1/exports", create_export)
    app.router.add_get("/api/v1/exports", list_exports)
    app.router.add_get("/api/v1/exports/{id}", get_export)
    app.router.add_get("/api/v1/exports/{id}/file", export_file)
    app.router.add_get("/api/v1/exports/{id}/manifest", export_manifest)
