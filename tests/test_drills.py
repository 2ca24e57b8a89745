"""Failure drills against the real RTSP server: every second is either recorded or a gap with
its reason, and one camera's trouble never touches another camera."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import CAM_PASSWORD, CAM_USER
from nvr.app import App
from nvr.ingest.camera import CameraState, CameraStatus
from support.fakecam import FakeCam
from support.recording import (
    IndexReader,
    camera_toml,
    ffprobe_errors,
    make_config,
    poll,
)

pytestmark = pytest.mark.rtsp


def _closed(reader: IndexReader, cam: str) -> int:
    return len(reader.segments(cam, "closed"))


def _status(app: App, cam: str) -> CameraStatus:
    return next(s for s in app.statuses() if s.id == cam)


async def test_dropped_clients_end_the_run_and_a_new_run_follows(
    cam_private: FakeCam, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path, camera_toml("cam", cam_private.url("/file/h264")))
    reader = IndexReader(cfg.storage.index_path)
    app = App(cfg)
    await app.start(serve_api=False)
    try:
        await poll("a closed segment", lambda: _closed(reader, "cam") >= 1)
        assert cam_private.drop() >= 1
        await poll("the first run to end", lambda: reader.runs("cam")[0].end_reason is not None)
        await poll("a second run with a closed segment",
                   lambda: len(reader.runs("cam")) >= 2 and _closed(reader, "cam") >= 2)
    finally:
        await app.stop()
    first, second = reader.runs("cam")[:2]
    assert first.end_reason == "camera_closed", first
    assert first.end_90k is not None and second.start_90k > first.end_90k
    for seg in reader.segments("cam"):
        assert seg.state == "closed" and ffprobe_errors(tmp_path / seg.path) == ""


async def test_a_stall_ends_the_run_within_the_timeout_and_leaves_a_gap(
    cam_private: FakeCam, tmp_path: Path
) -> None:
    stall_timeout_s = 3.0
    cfg = make_config(tmp_path, camera_toml("cam", cam_private.url("/file/h264")))
    reader = IndexReader(cfg.storage.index_path)
    app = App(cfg)
    await app.start(serve_api=False)
    try:
        await poll("a closed segment", lambda: _closed(reader, "cam") >= 1)
        stalled_at = time.time()
        cam_private.stall(10)
        await poll("the run to end", lambda: reader.runs("cam")[0].end_reason is not None)
        ended_after_s = time.time() - stalled_at
        await poll("recording to resume", lambda: len(reader.runs("cam")) >= 2, timeout_s=30)
    finally:
        await app.stop()
    first, second = reader.runs("cam")[:2]
    assert first.end_reason == "timeout", first
    assert first.end_detail is not None and "no video for" in first.end_detail
    print(f"stall: run ended {ended_after_s:.2f} s after the stall began")
    # Noticed within the stall timeout (plus the watchdog's half-second tick and the index write).
    assert ended_after_s <= stall_timeout_s + 1.0, ended_after_s
    # The run's end is the last frame before the stall, so the gap covers the stall.
    assert first.end_90k is not None
    gap_s = (second.start_90k - first.end_90k) / 90_000
    assert gap_s >= 9.0, gap_s
    assert abs(first.end_90k / 90_000 - stalled_at) < 1.0


async def _one_bad_one_good(tmp_path: Path, bad: str, good: str) -> tuple[App, IndexReader]:
    cfg = make_config(tmp_path, bad + good)
    reader = IndexReader(cfg.storage.index_path)
    app = App(cfg)
    await app.start(serve_api=False)
    try:
        await poll("the good camera to close 3 segments", lambda: _closed(reader, "good") >= 3)
        await poll("the bad camera to fail twice", lambda: _status(app, "bad").failures >= 2)
        bad_status = _status(app, "bad")
        assert bad_status.state in (CameraState.BACKOFF, CameraState.CONNECTING)
    finally:
        await app.stop()
    return app, reader


async def test_wrong_password_backs_off_while_another_camera_records(
    cam_digest: FakeCam, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = camera_toml("bad", cam_digest.url("/file/h264"), username=CAM_USER,
                      password="not-the-password")  # fmt: skip
    good = camera_toml("good", cam_digest.url("/file/h265"), username=CAM_USER,
                       password=CAM_PASSWORD)  # fmt: skip
    app, reader = await _one_bad_one_good(tmp_path, bad, good)
    status = _status(app, "bad")
    assert status.last_error_kind == "auth", status
    assert "rejected" in (status.last_error or "")
    # Backing off: a handful of attempts, not a tight loop.
    assert status.failures <= 8, status
    assert reader.runs("bad") == []
    assert all(r.end_reason == "shutdown" for r in reader.runs("good"))
    assert len(reader.runs("good")) == 1
    assert "not-the-password" not in caplog.text


async def test_unreachable_camera_backs_off_while_another_camera_records(
    cam_none: FakeCam, tmp_path: Path
) -> None:
    # A loopback port nobody listens on: connection refused at once, as a camera that is down.
    bad = camera_toml("bad", "rtsp://127.0.0.1:9/stream")
    good = camera_toml("good", cam_none.url("/file/h264"))
    app, reader = await _one_bad_one_good(tmp_path, bad, good)
    status = _status(app, "bad")
    assert status.last_error_kind == "connect", status
    assert reader.runs("bad") == []
    assert len(reader.runs("good")) == 1
