"""Cameras configured by ONVIF address: the stream is asked of the device, the device's identity
is stored, and a device that moves is found again by WS-Discovery and followed."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import CAM_PASSWORD, CAM_USER
from nvr.app import App
from support.fakecam import FakeCam
from support.onvif_device import Identity, OnvifTestDevice, default_profiles
from support.recording import IndexReader, ffprobe_errors, make_config, poll
from support.wsd_responder import WsdResponder

pytestmark = pytest.mark.rtsp

RESPONDER_HOST = "127.0.0.9"
ENDPOINT = "urn:uuid:6f1c0e2a-5b7d-4c1e-9a3b-2d8e4f6a1b0c"


@pytest.fixture
async def device(cam_digest: FakeCam) -> AsyncIterator[OnvifTestDevice]:
    dev = OnvifTestDevice(
        identity=Identity(serial="WARD7-CAM-0042"),
        username=CAM_USER,
        password=CAM_PASSWORD,
        profiles=default_profiles(
            cam_digest.url("/file/h264"), cam_digest.url("/file/h265"), cam_digest.url("/live/h264")
        ),
        clock_offset_s=3.0,
    )
    await dev.start()
    try:
        yield dev
    finally:
        await dev.stop()


def onvif_camera_toml(url: str, extra: str = "") -> str:
    return f"""
[[cameras]]
id = "gate"
onvif = "{url}"
profile = "main"
username = "{CAM_USER}"
password = "{CAM_PASSWORD}"
audio = "off"
backoff_initial_s = 0.3
backoff_max_s = 2
{extra}
"""


def _closed_in_run(reader: IndexReader, run_index: int) -> bool:
    runs = reader.runs("gate")
    if len(runs) <= run_index:
        return False
    run_id = runs[run_index].id
    return any(s.run_id == run_id and s.state == "closed" for s in reader.segments("gate"))


async def test_records_the_resolved_stream_and_stores_identity_and_clock(
    device: OnvifTestDevice, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = make_config(tmp_path, onvif_camera_toml(f"http://127.0.0.1:{device.port}"))
    reader = IndexReader(cfg.storage.index_path)
    app = App(cfg)
    await app.start(serve_api=False)
    try:
        await poll("a closed segment", lambda: _closed_in_run(reader, 0))
    finally:
        await app.stop()
    # The device reported its stream on 192.168.1.64 (behind NAT); we recorded via 127.0.0.1.
    assert "camera=gate stream rtsp://127.0.0.1:" in caplog.text
    assert CAM_PASSWORD not in caplog.text
    for seg in reader.segments("gate"):
        assert ffprobe_errors(tmp_path / seg.path) == ""
    con = sqlite3.connect(cfg.storage.index_path)
    row = con.execute("SELECT onvif_serial, onvif_mac FROM camera WHERE id = 'gate'").fetchone()
    con.close()
    assert row == ("WARD7-CAM-0042", "44:19:b6:0a:0b:0c")
    run = reader.runs("gate")[0]
    assert run.clock_offset_ns is not None and abs(run.clock_offset_ns - 3 * 10**9) < 300_000_000
    assert re.search(r"camera=gate clock is \+(2\.9|3\.0|3\.1) s off the NVR clock", caplog.text)


async def test_a_moved_device_is_found_again_and_recording_resumes(
    device: OnvifTestDevice, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_url = device.url
    responder = WsdResponder(RESPONDER_HOST, 0, endpoint_ref=ENDPOINT, xaddrs=[old_url])
    await responder.start()
    try:
        targets = f'discovery_targets = ["{RESPONDER_HOST}:{responder.bound_port}"]'
        cfg = make_config(tmp_path, onvif_camera_toml(
            old_url, f"{targets}\ndiscovery_multicast = false\nonvif_check_s = 0.5"
        ))  # fmt: skip
        reader = IndexReader(cfg.storage.index_path)
        app = App(cfg)
        await app.start(serve_api=False)
        try:
            await poll("a closed segment at the first address", lambda: _closed_in_run(reader, 0))
            # The camera gets a new address; it announces itself there.
            moved_at = time.monotonic()
            new_url = await device.restart()
            responder.xaddrs = (new_url,)  # its Hello-less announcement of the new address
            await poll("a closed segment after the move", lambda: _closed_in_run(reader, 1))
            print(f"moved device: a closed segment at the new address "
                  f"{time.monotonic() - moved_at:.2f} s after the move")
        finally:
            await app.stop()
    finally:
        await responder.stop()
    assert f"now answers at {new_url}" in caplog.text
    first, second = reader.runs("gate")[:2]
    assert first.end_reason == "error" and "moved" in (first.end_detail or "")
    assert first.end_90k is not None and second.start_90k >= first.end_90k
    print(f"moved device: gap {(second.start_90k - first.end_90k) / 90_000:.2f} s")


async def test_repeated_rtsp_failures_ask_the_device_again(
    cam_digest: FakeCam, tmp_path: Path
) -> None:
    dead = "rtsp://127.0.0.1:9/dead"  # nothing listens: every session fails to connect
    dev = OnvifTestDevice(username=CAM_USER, password=CAM_PASSWORD,
                          profiles=default_profiles(dead, dead, dead))  # fmt: skip
    await dev.start()
    try:
        cfg = make_config(tmp_path, onvif_camera_toml(dev.url))
        reader = IndexReader(cfg.storage.index_path)
        app = App(cfg)
        await app.start(serve_api=False)
        try:
            await poll("three failed sessions", lambda: app.statuses()[0].failures >= 3)
            asked = dev.operations.count("GetStreamUri")
            # The camera's stream moves (a firmware update, a new port): the device says so.
            dev.profiles = default_profiles(cam_digest.url("/file/h264"), dead, dead)
            await poll("recording from the new stream URI", lambda: _closed_in_run(reader, 0))
        finally:
            await app.stop()
    finally:
        await dev.stop()
    assert dev.operations.count("GetStreamUri") > asked
