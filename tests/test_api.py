"""The first slice of the HTTP API over real loopback HTTP: health and camera status."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from nvr.api.server import make_app
from nvr.ingest.camera import CameraState, CameraStatus

STATUS = CameraStatus(
    id="gate",
    state=CameraState.BACKOFF,
    failures=3,
    last_error="credentials rejected by 127.0.0.1:554",
    last_error_kind="auth",
    last_frame_wall_ns=None,
    runs=0,
    frames=0,
    segments_closed=0,
)


async def test_health_and_camera_status() -> None:
    async with TestClient(TestServer(make_app(lambda: [STATUS]))) as client:
        resp = await client.get("/healthz")
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
        resp = await client.get("/api/v1/cameras")
        body = await resp.json()
        assert body["cameras"][0]["state"] == "backoff"
        assert body["cameras"][0]["last_error_kind"] == "auth"
        resp = await client.get("/api/v1/cameras/gate")
        assert (await resp.json())["failures"] == 3


async def test_unknown_camera_is_a_json_404() -> None:
    async with TestClient(TestServer(make_app(lambda: [STATUS]))) as client:
        resp = await client.get("/api/v1/cameras/nope")
        assert resp.status == 404
        assert await resp.json() == {
            "error": {"code": "not_found", "message": "no camera with id 'nope'"}
        }
