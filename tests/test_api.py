"""The first slice of the HTTP API over real loopback HTTP: health and camera status.

Every client sends an admin token (tests/test_auth.py covers the token checks themselves).
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import av
import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvr.api.server import make_app
from nvr.api.times import format_rfc3339
from nvr.clock import SimulatedClock
from nvr.config import parse_config
from nvr.exports import ExportManager
from nvr.ingest.camera import CameraState, CameraStatus
from nvr.media import VideoAccessUnit, VideoCodec
from nvr.metrics import Metrics
from nvr.storage.index import Index
from nvr.storage.leases import ReaderLeases
from nvr.storage.model import Fragment, RunEndReason, SegmentFile
from nvr.storage.recorder import Recorder
from support.api import auth_headers
from support.media import encode_clip

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
STATUS_GATE = replace(STATUS, id="gate")


async def test_health_and_camera_status(tmp_path: Path) -> None:
    async with (
        await Index.open(tmp_path / "index.db") as index,
        TestClient(TestServer(make_app(lambda: [STATUS], index)),
                   headers=await auth_headers(index)) as client,
    ):  # fmt: skip
        resp = await client.get("/healthz")
        assert resp.status == 200 and await resp.json() == {
            "status": "ok", "problems": [],
            "degraded_cameras": [{"id": "gate", "state": "backoff", "last_error_kind": "auth"}],
            "storage": {"free_bytes": None, "recording_allowed": None},
        }  # fmt: skip
        resp = await client.get("/api/v1/cameras")
        body = await resp.json()
        assert body["cameras"][0]["state"] == "backoff"
        assert body["cameras"][0]["last_error_kind"] == "auth"
        resp = await client.get("/api/v1/cameras/gate")
        assert (await resp.json())["failures"] == 3


async def test_unknown_camera_is_a_json_404(tmp_path: Path) -> None:
    async with (
        await Index.open(tmp_path / "index.db") as index,
        TestClient(TestServer(make_app(lambda: [STATUS], index)),
                   headers=await auth_headers(index)) as client,
    ):  # fmt: skip
        resp = await client.get("/api/v1/cameras/nope")
        assert resp.status == 404
        assert await resp.json() == {
            "error": {"code": "not_found", "message": "no camera with id 'nope'"}
        }


async def _index_with_two_runs(tmp_path: Path) -> Index:
    index = await Index.open(tmp_path / "index.db")
    await index.upsert_camera("gate", "Gate", "rtsp://h/x")
    t0 = 1_795_897_600 * 90_000  # 2026-11-28T20:26:40Z
    run = await index.start_run("gate", t0, video_codec="h264", width=640, height=360,
                                audio_codec=None, clock_offset_ns=2_500_000_000)  # fmt: skip
    seg = await index.open_segment(run, "gate", "gate/a.mp4", t0)
    facts = SegmentFile(1000, "ab" * 32, 250, 900_000, (Fragment(0, 0, 1000, True),))
    await index.close_segment(seg, t0 + 900_000, facts)
    await index.end_run(run, t0 + 900_000, RunEndReason.TIMEOUT, "no video for 10.0 s")
    await index.start_run("gate", t0 + 1_800_000, video_codec="h264", width=640, height=360,
                          audio_codec=None, clock_offset_ns=None)  # fmt: skip
    return index


async def test_recordings_lists_runs_segments_and_gaps_in_the_callers_offset(
    tmp_path: Path,
) -> None:
    index = await _index_with_two_runs(tmp_path)
    try:
        app = make_app(lambda: [STATUS_GATE], index)
        async with TestClient(TestServer(app), headers=await auth_headers(index)) as client:
            resp = await client.get(
                "/api/v1/cameras/gate/recordings",
                params={"start": "2026-11-29T03:00:00+07:00", "end": "2026-11-29T04:00:00+07:00"},
            )
            assert resp.status == 200
            body = await resp.json()
    finally:
        await index.close()
    assert body["start"] == "2026-11-29T03:00:00.000+07:00"
    first, second = body["runs"]
    assert first["start"] == "2026-11-29T03:26:40.000+07:00"
    assert first["end"] == "2026-11-29T03:26:50.000+07:00"
    assert first["end_reason"] == "timeout" and first["camera_clock_offset_ms"] == 2500
    assert second["end"] is None
    [segment] = body["segments"]
    assert segment["frames"] == 250 and segment["sha256"] == "ab" * 32
    [gap] = body["gaps"]
    assert gap == {"start": "2026-11-29T03:26:50.000+07:00", "end": "2026-11-29T03:27:00.000+07:00",
                   "reason": "timeout", "detail": "no video for 10.0 s"}  # fmt: skip


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"start": "2026-11-29T03:00:00", "end": "2026-11-29T04:00:00Z"}, 400, "bad_time"),
        ({"start": "2026-11-29T04:00:00Z", "end": "2026-11-29T03:00:00Z"}, 400, "bad_range"),
        ({"start": "2026-11-01T00:00:00Z", "end": "2026-11-29T00:00:00Z"}, 400, "range_too_long"),
        ({"end": "2026-11-29T00:00:00Z"}, 400, "bad_request"),
    ],
)
async def test_bad_ranges_are_4xx_naming_the_problem(
    tmp_path: Path, params: dict[str, str], status: int, code: str
) -> None:
    index = await Index.open(tmp_path / "index.db")
    try:
        app = make_app(lambda: [STATUS_GATE], index)
        async with TestClient(TestServer(app), headers=await auth_headers(index)) as client:
            resp = await client.get("/api/v1/cameras/gate/recordings", params=params)
            assert resp.status == status
            assert (await resp.json())["error"]["code"] == code
            resp = await client.get("/api/v1/cameras/nope/recordings", params=params)
            assert resp.status == 404
    finally:
        await index.close()


async def test_every_route_is_in_the_openapi_document(tmp_path: Path) -> None:
    index = await Index.open(tmp_path / "index.db")
    try:
        leases = ReaderLeases()
        exports = ExportManager(index, tmp_path, leases)
        app = make_app(lambda: [STATUS_GATE], index, tmp_path, leases=leases, exports=exports,
                       config=lambda: {}, metrics=Metrics(lambda: [], index=index))  # fmt: skip
        routes = {r.resource.canonical for r in app.router.routes()
                  if r.method != "HEAD" and r.resource is not None}  # fmt: skip
        async with TestClient(TestServer(app), headers=await auth_headers(index)) as client:
            doc = await (await client.get("/api/v1/openapi.json")).json()
            # Responses match the document's required fields (a light check of the schemas).
            camera = await (await client.get("/api/v1/cameras/gate")).json()
    finally:
        await index.close()
    assert routes == set(doc["paths"])
    schema = doc["components"]["schemas"]["Camera"]
    assert set(camera) == set(schema["required"]) == set(schema["properties"])


async def test_snapshot_decodes_the_keyframe_at_or_before_the_time(tmp_path: Path) -> None:
    clip = encode_clip(VideoCodec.H264, 100)  # keyframes every 25 frames (1 s), 128x72
    clock = SimulatedClock()
    index = await Index.open(tmp_path / "index.db", clock=clock)
    await index.upsert_camera("gate", "Gate", "file")
    rec = Recorder("gate", root=tmp_path, index=index, clock=clock, segment_seconds=2,
                   writer_queue_frames=1000)  # fmt: skip
    rec.begin_session(None, "off")
    for i, (nals, key) in enumerate(clip.units):
        clock.advance(40_000_000)
        au = VideoAccessUnit(i * 3600, nals, key, clip.params, i == 0, False)
        await rec.video(au, clock.monotonic_ns())
    await rec.end_run(RunEndReason.SHUTDOWN)
    await rec.close()
    [run] = await index.runs("gate", 0, 2**62)
    at = format_rfc3339(run.start_90k + 90_000 + 45_000)  # 1.5 s in: the keyframe at 1 s
    try:
        app = make_app(lambda: [STATUS_GATE], index, tmp_path)
        async with TestClient(TestServer(app), headers=await auth_headers(index)) as client:
            resp = await client.get("/api/v1/cameras/gate/snapshot.jpg", params={"at": at})
            assert resp.status == 200 and resp.content_type == "image/jpeg"
            jpeg = await resp.read()
            latest = await client.get("/api/v1/cameras/gate/snapshot.jpg")
            assert latest.status == 200
            before = format_rfc3339(run.start_90k - 90_000)
            resp = await client.get("/api/v1/cameras/gate/snapshot.jpg", params={"at": before})
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "no_recording"
    finally:
        await index.close()
    with av.open(io.BytesIO(jpeg), "r") as img:
        frame = next(img.decode(video=0))
        assert (frame.width, frame.height) == (128, 72)


async def test_the_running_config_is_shown_to_admins_without_secrets(tmp_path: Path) -> None:
    cfg = parse_config(
        '[storage]\npath = "/srv/nvr"\n[[cameras]]\nid = "gate"\n'
        'url = "rtsp://admin:hunter2-secret@127.0.0.1:554/live"\n'
        '[[cameras]]\nid = "lane"\nurl = "rtsp://127.0.0.1:554/x"\nusername = "u"\n'
        'password = "other-secret"\n'
    )
    index = await Index.open(tmp_path / "index.db")
    try:
        app = make_app(lambda: [STATUS_GATE], index, tmp_path, config=cfg.public)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/api/v1/config", headers=await auth_headers(index))
            body = await resp.text()
            viewer = await client.get("/api/v1/config", headers=await auth_headers(index, "viewer"))
    finally:
        await index.close()
    assert resp.status == 200 and viewer.status == 403
    assert "hunter2-secret" not in body and "other-secret" not in body
    doc = json.loads(body)
    assert doc["storage"]["path"] == "/srv/nvr"
    assert [c["id"] for c in doc["cameras"]] == ["gate", "lane"]
    assert "password" not in doc["cameras"][1]
