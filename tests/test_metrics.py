"""/metrics and /healthz over real loopback HTTP, on real indexes, files and cameras.

The metrics are read back with prometheus-client's own text parser. Counters are checked to move
as frames arrive, both from the simulated camera through the whole daemon and from an encoded
clip fed through a real recorder (no GStreamer needed).
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from nvr.api.server import make_app
from nvr.app import App
from nvr.clock import SimulatedClock
from nvr.config import Config, parse_config
from nvr.ingest.camera import CameraState, CameraStatus, CameraSupervisor
from nvr.ingest.source import FixedSource
from nvr.media import VideoAccessUnit, VideoCodec
from nvr.metrics import Metrics
from nvr.storage.index import Index
from nvr.storage.model import RunEndReason
from nvr.storage.recorder import Recorder
from nvr.storage.recovery import IDENTITY_FILE, open_checked_index
from support.api import add_token, bearer
from support.fakecam import FakeCam
from support.media import Clip, encode_clip
from support.recording import IndexReader, camera_toml, poll

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(root: Path, port: int, cameras: str) -> Config:
    return parse_config(f'[storage]\npath = "{root}"\nsegment_seconds = 2\n'
                        f'[api]\nlisten = "127.0.0.1:{port}"\n{cameras}')  # fmt: skip


# --- the daemon, a live camera and a dead one ----------------------------------------------


async def test_a_live_camera_moves_the_counters_and_a_dead_one_is_degraded(
    cam_none: FakeCam, tmp_path: Path
) -> None:
    port = free_port()
    cameras = (camera_toml("gate", cam_none.url("/file/h264"))
               + camera_toml("dead", "rtsp://127.0.0.1:9/x"))  # fmt: skip
    app = App(config(tmp_path / "store", port, cameras))
    await app.start()
    scrapes = 0
    try:
        assert app.index is not None and app.metrics is not None
        token = await add_token(app.index, "viewer")
        base = f"http://127.0.0.1:{port}"
        async with ClientSession(base, headers=bearer(token)) as http:

            async def scrape() -> Samples:
                nonlocal scrapes
                async with http.get("/metrics") as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"].startswith("text/plain; version=")
                    scrapes += 1
                    return parse(await resp.text())

            last: list[Samples] = [await scrape()]

            async def advanced(name: str, camera: str) -> bool:
                last.append(await scrape())
                before = value(last[0], name, camera=camera) or 0
                return (value(last[-1], name, camera=camera) or 0) > before

            async def wait_for(name: str) -> None:
                deadline = time.monotonic() + 60
                while not await advanced(name, "gate"):
                    assert time.monotonic() < deadline, f"{name} did not move"
                    await asyncio.sleep(0.1)

            await wait_for("nvr_camera_frames_total")
            await wait_for("nvr_camera_bytes_written_total")
            now = last[-1]
            assert value(now, "nvr_camera_state", camera="gate", state="streaming") == 1
            assert value(now, "nvr_camera_state", camera="gate", state="backoff") == 0
            assert value(now, "nvr_camera_state", camera="dead", state="streaming") == 0
            assert (value(now, "nvr_camera_runs_started_total", camera="gate") or 0) >= 1
            assert (value(now, "nvr_camera_connects_total", camera="dead") or 0) >= 1
            assert value(now, "nvr_camera_runs_ended_total", camera="gate", reason="error") == 0
            assert (value(now, "nvr_camera_last_frame_age_seconds", camera="gate") or 99) < 5
            assert (value(now, "nvr_camera_frames_per_second", camera="gate") or 0) > 0
            assert value(now, "nvr_camera_writer_queue_depth", camera="gate") is not None
            # Every scrape before this one was counted, under its route template.
            assert value(now, "nvr_api_requests_total", method="GET", route="/metrics",
                         status="200") == scrapes - 1  # fmt: skip
            assert (value(now, "nvr_event_loop_lag_seconds_count") or 0) > 0
            assert value(now, "nvr_event_loop_lag_max_seconds") is not None
            assert value(now, "nvr_storage_recording_allowed") == 1
            assert (value(now, "nvr_storage_free_bytes") or 0) > 0
            assert value(now, "nvr_segments", state="open") is not None

            # What each camera stores, from the kept totals: the bytes of its first k closed
            # segments (they close in order), k being the closed count in the same scrape.
            deadline = time.monotonic() + 30
            while not (value(last[-1], "nvr_camera_stored_segments", camera="gate") or 0):
                assert time.monotonic() < deadline, "nvr_camera_stored_segments stayed 0"
                await asyncio.sleep(0.5)
                last.append(await scrape())
            stored = last[-1]
            k = int(value(stored, "nvr_camera_stored_segments", camera="gate") or 0)
            closed = sorted(IndexReader(app.cfg.storage.index_path).segments("gate", "closed"),
                            key=lambda seg: seg.start_90k)  # fmt: skip
            assert len(closed) >= k
            assert value(stored, "nvr_camera_stored_bytes", camera="gate") == sum(
                seg.size_bytes or 0 for seg in closed[:k])
            assert value(stored, "nvr_segments", state="closed") == k  # the dead camera has none
            assert value(stored, "nvr_camera_stored_bytes", camera="dead") is None

            async with ClientSession(base) as anonymous:
                async with anonymous.get("/metrics") as resp:
                    assert resp.status == 401
                async with anonymous.get("/nope") as resp:
                    assert resp.status == 404
            counted = await scrape()
            assert value(counted, "nvr_api_requests_total", method="GET", route="/metrics",
                         status="401") == 1  # fmt: skip
            assert value(counted, "nvr_api_requests_total", method="GET", route="unmatched",
                         status="404") == 1  # fmt: skip

            deadline = time.monotonic() + 30
            while True:  # until the dead camera's first connect has failed
                async with http.get("/healthz") as resp:
                    assert resp.status == 200
                    body: dict[str, Any] = await resp.json()
                if any(c["last_error_kind"] for c in body["degraded_cameras"]):
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.1)
            assert body["status"] == "ok" and body["problems"] == []
            [dead] = body["degraded_cameras"]  # the streaming camera is not listed
            assert dead["id"] == "dead" and dead["last_error_kind"] == "connect"
            assert dead["state"] in ("connecting", "backoff")
            assert body["storage"]["recording_allowed"] is True
            assert body["storage"]["free_bytes"] > 0
    finally:
        await app.stop()
    # The run the stop ended is counted by its reason.
    stopped = parse(app.metrics.exposition().decode())
    assert value(stopped, "nvr_camera_runs_ended_total", camera="gate", reason="shutdown") == 1


# --- a real recorder fed an encoded clip: exact counts, no GStreamer ------------------------


async def _feed(rec: Recorder, clip: Clip, clock: SimulatedClock, first: int, count: int) -> None:
    """Frames ``first`` .. ``first + count - 1`` of the looped clip, 25 per second."""
    for i in range(first, first + count):
        clock.advance(40_000_000)
        nals, key = clip.units[i % len(clip.units)]
        au = VideoAccessUnit(timestamp=(1000 + i * 3600) & 0xFFFF_FFFF, nal_units=nals,
                             is_keyframe=key, parameters=clip.params, new_parameters=i == 0,
                             loss_before=False)  # fmt: skip
        await rec.video(au, clock.monotonic_ns())


def _file_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("**/*.mp4"))


async def test_counters_follow_the_recorder_exactly(tmp_path: Path) -> None:
    clock = SimulatedClock()
    clip = encode_clip(VideoCodec.H264, 100)
    cfg = parse_config(f'[storage]\npath = "{tmp_path}"\n'
                       '[[cameras]]\nid = "gate"\nurl = "rtsp://127.0.0.1/x"\n')  # fmt: skip
    async with await Index.open(tmp_path / "index.db", clock=clock) as index:
        await index.upsert_camera("gate", "Gate", "rtsp://127.0.0.1/x")
        rec = Recorder("gate", root=tmp_path, index=index, clock=clock, segment_seconds=1,
                       writer_queue_frames=1000)  # fmt: skip
        rec.begin_session(None, "off")
        sup = CameraSupervisor(cfg.cameras[0], rec, clock, FixedSource("rtsp://127.0.0.1/x"))
        metrics = Metrics(lambda: [sup], index=index, clock=clock, cache_s=0)
        app = make_app(lambda: [sup.status()], index, tmp_path, metrics=metrics)
        try:
            async with TestClient(TestServer(app), headers=bearer(await add_token(index))) as c:

                async def scrape() -> Samples:
                    async with c.get("/metrics") as resp:
                        assert resp.status == 200
                        return parse(await resp.text())

                await _feed(rec, clip, clock, 0, 60)
                first = await scrape()
                await _feed(rec, clip, clock, 60, 60)
                second = await scrape()
                await rec.end_run(RunEndReason.SHUTDOWN)
                ended = await scrape()
        finally:
            await rec.close()

    def frames(s: Samples) -> float | None:
        return value(s, "nvr_camera_frames_total", camera="gate")

    # A frame is written when its successor arrives (its duration is the distance to it).
    assert (frames(first), frames(second), frames(ended)) == (59, 119, 120)
    written = [value(s, "nvr_camera_bytes_written_total", camera="gate")
               for s in (first, second, ended)]  # fmt: skip
    assert written[0] is not None and written[1] is not None and written[2] is not None
    assert 0 < written[0] < written[1] < written[2]
    assert written[2] == _file_bytes(tmp_path / "gate")
    assert value(ended, "nvr_camera_segments_closed_total", camera="gate") == 5
    assert value(ended, "nvr_segments", state="closed") == 5  # from the kept totals
    assert value(ended, "nvr_camera_stored_segments", camera="gate") == 5
    assert value(ended, "nvr_camera_stored_bytes", camera="gate") == written[2]
    assert value(ended, "nvr_segments", state="open") == 0
    assert value(ended, "nvr_camera_runs_ended_total", camera="gate", reason="shutdown") == 1
    assert value(first, "nvr_camera_runs_ended_total", camera="gate", reason="shutdown") == 0
    assert value(first, "nvr_camera_state", camera="gate", state="connecting") == 1
    assert value(second, "nvr_camera_frames_per_second", camera="gate") == 25.0
    assert value(ended, "nvr_holds_active") == 0
    assert value(ended, "nvr_exports", state="queued") == 0


async def test_a_blocked_event_loop_shows_in_the_lag_metrics() -> None:
    metrics = Metrics(lambda: [])
    metrics.start()
    try:

        def lag() -> Samples:
            return parse(metrics.exposition().decode())

        await poll("a first loop tick", lambda: (value(lag(), "nvr_event_loop_lag_seconds_count")
                                                 or 0) > 0)  # fmt: skip
        # The loop stalls on purpose, 1 s. The watch's wake-up was due at most 0.25 s into
        # the stall, so it wakes at least 0.75 s late.
        time.sleep(1.0)  # noqa: ASYNC251
        await poll("the stall measured",
                   lambda: (value(lag(), "nvr_event_loop_lag_max_seconds") or 0) >= 0.7)
        over = value(lag(), "nvr_event_loop_lag_seconds_bucket", le="0.5")
        count = value(lag(), "nvr_event_loop_lag_seconds_count")
        assert over is not None and count is not None and over < count
    finally:
        await metrics.stop()


# --- /healthz failing, for real reasons -----------------------------------------------------


async def _health(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    async with client.get("/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def test_healthz_fails_when_the_storage_is_not_this_indexs(tmp_path: Path) -> None:
    root = tmp_path / "store"
    index = await open_checked_index(root, tmp_path / "index.db", require_mount=False)
    marker = root / IDENTITY_FILE
    try:
        app = make_app(lambda: [], index, root, metrics=Metrics(lambda: [], index=index))
        async with TestClient(TestServer(app)) as client:
            status, body = await _health(client)
            assert (status, body["status"], body["problems"]) == (200, "ok", [])
            assert body["storage"]["free_bytes"] > 0
            mine = marker.read_text(encoding="ascii")

            marker.write_text(f"{uuid.uuid4()}\n", encoding="ascii")  # another disk's identity
            status, body = await _health(client)
            assert (status, body["status"]) == (503, "failing")
            [problem] = body["problems"]
            assert "another disk is mounted there" in problem

            marker.unlink()  # an empty mount point: the storage volume did not mount
            status, body = await _health(client)
            assert status == 503 and "is the storage volume mounted?" in body["problems"][0]

            marker.write_text(mine, encoding="ascii")
            assert (await _health(client))[0] == 200
    finally:
        await index.close()


async def test_healthz_fails_while_the_index_takes_no_writes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    db = tmp_path / "index.db"
    index = await open_checked_index(root, db, require_mount=False)
    try:
        app = make_app(lambda: [], index, root)
        async with TestClient(TestServer(app)) as client:
            assert (await _health(client))[0] == 200
            # Another process holds the index's write lock (an admin's sqlite3 shell in a
            # transaction, say): recording could not commit a segment, and the probe's write
            # waits behind the lock until its 2 s bound.
            other = sqlite3.connect(db, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                status, body = await _health(client)
                assert status == 503, body
                assert body["problems"] == ["the index took no write in 2 s (locked, or its "
                                            "disk hangs)"]  # fmt: skip
            finally:
                other.execute("ROLLBACK")
                other.close()

            async def healthy() -> bool:
                return (await _health(client))[0] == 200

            deadline = time.monotonic() + 15  # the waiting probe commits once the lock is gone
            while not await healthy():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)

            await index.close()  # the index closed under the API: no write can reach it
            status, body = await _health(client)
            assert status == 503 and "the index takes no writes" in body["problems"][0]
            assert "the index is closed" in body["problems"][0]
    finally:
        await index.close()


async def test_healthz_without_an_index_lists_the_degraded_cameras() -> None:
    def status(cam: str, state: CameraState, kind: str | None) -> CameraStatus:
        return CameraStatus(id=cam, state=state, failures=0, last_error=None,
                            last_error_kind=kind, last_frame_wall_ns=None, runs=0, frames=0,
                            segments_closed=0)  # fmt: skip

    statuses = [status("gate", CameraState.STREAMING, None),
                status("yard", CameraState.STORAGE_FULL, "disk_full"),
                status("spare", CameraState.DISABLED, None)]  # fmt: skip
    async with TestClient(TestServer(make_app(lambda: statuses))) as client:
        assert await _health(client) == (200, {
            "status": "ok", "problems": [],
            "degraded_cameras": [{"id": "yard", "state": "storage_full",
                                  "last_error_kind": "disk_full"}],
            "storage": {"free_bytes": None, "recording_allowed": None},
        })  # fmt: skip
