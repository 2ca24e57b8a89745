"""The HTTP API (first slice): health and camera status. Secrets never leave the process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

from aiohttp import web

from nvr.ingest.camera import CameraStatus

StatusSource = Callable[[], Sequence[CameraStatus]]
STATUS_KEY: web.AppKey[StatusSource] = web.AppKey("status")


def _status_json(st: CameraStatus) -> dict[str, object]:
    return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(st).items()}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def cameras(request: web.Request) -> web.Response:
    statuses = request.app[STATUS_KEY]()
    return web.json_response({"cameras": [_status_json(s) for s in statuses]})


async def camera(request: web.Request) -> web.Response:
    wanted = request.match_info["id"]
    for st in request.app[STATUS_KEY]():
        if st.id == wanted:
            return web.json_response(_status_json(st))
    return web.json_response(
        {"error": {"code": "not_found", "message": f"no camera with id {wanted!r}"}}, status=404
    )


def make_app(status: StatusSource) -> web.Application:
    app = web.Application()
    app[STATUS_KEY] = status
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/cameras", cameras)
    app.router.add_get("/api/v1/cameras/{id}", camera)
    return app
