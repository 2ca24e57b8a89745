"""Retention over a real index and real segment files: rules, the floor, holds, leases, I4.

Free space is the one thing simulated here: a filesystem of a stated size whose used bytes are
the files really under the root, so every deletion shows in it. The small real filesystem is
in test_disk_full.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvr.api.server import make_app
from nvr.api.times import format_rfc3339
from nvr.app import App
from nvr.cli import main
from nvr.clock import SimulatedClock
from nvr.ingest.camera import CameraState, CameraStatus
from nvr.media import VideoCodec
from nvr.storage.index import Index
from nvr.storage.leases import ReaderLeases
from nvr.storage.recovery import IDENTITY_FILE
from nvr.storage.retention import CameraRule, DiskSpace, Floor, Retention, StorageGate
from support.api import auth_headers
from support.media import encode_clip
from support.recorded import record_clip
from support.recording import IndexReader, make_config

SECOND = 90_000
MB = 1_000_000
T0_NS = 1_795_897_600 * 10**9


def _tree_bytes(root: Path) -> int:
    return sum(
        (Path(d) / f).stat().st_size
        for d, _, files in os.walk(root)
        for f in files
        if f.endswith(".mp4")
    )


@dataclass
class Site:
    root: Path
    index: Index
    clock: SimulatedClock
    leases: ReaderLeases
    capacity: int

    def space(self) -> DiskSpace:
        return DiskSpace(self.capacity - _tree_bytes(self.root), self.capacity)

    def retention(self, rules: list[CameraRule], floor: Floor) -> Retention:
        return Retention(self.index, self.root, self.leases, self.clock, rules, floor,
                         gate=StorageGate(), space=self.space)  # fmt: skip

    def files(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*.mp4")}


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    clip = encode_clip(VideoCodec.H264, 325)
    for cam in ("gate", "lane"):
        await (await record_clip(tmp_path, clip, seconds=600, camera_id=cam)).close()
    clock = SimulatedClock(wall_ns=T0_NS + 900 * 10**9)  # 15 minutes after recording began
    async with await Index.open(tmp_path / "index.db", clock=clock) as index:
        used = _tree_bytes(tmp_path)
        yield Site(tmp_path, index, clock, ReaderLeases(), capacity=used + 5 * MB)


def _segments(site: Site, cam: str | None = None) -> list[tuple[str, int, str]]:
    return [(s.camera_id, s.start_90k, s.path) for s in IndexReader(site.root / "index.db")
            .segments(cam) if s.state == "closed"]  # fmt: skip


async def test_the_floor_deletes_the_oldest_across_cameras_and_index_and_tree_agree(
    site: Site,
) -> None:
    before = _segments(site)
    floor = Floor(min_free_bytes=20 * MB)
    report = await site.retention([], floor).space_pass()
    after = _segments(site)
    assert report.deleted > 0 and site.space().free_bytes >= 20 * MB
    gone = [s for s in before if s not in after]
    # The oldest go first, whatever the camera: every kept segment starts no earlier than
    # every deleted one.
    assert max(s[1] for s in gone) <= min(s[1] for s in after)
    assert {s[0] for s in gone} == {"gate", "lane"}
    assert site.files() == {s[2] for s in after}  # no file without a row, no row without a file


async def test_age_and_size_rules_per_camera(site: Site) -> None:
    rules = [CameraRule("gate", retain_days=600 / 86_400),  # 10 minutes
             CameraRule("lane", retain_bytes=10 * MB)]  # fmt: skip
    await site.retention(rules, Floor()).rules_pass()
    cutoff = T0_NS // 10**9 * SECOND + 300 * SECOND
    reader = IndexReader(site.root / "index.db")
    gate = [s for s in reader.segments("gate") if s.state == "closed"]
    assert gate and all((s.end_90k or 0) > cutoff for s in gate)
    lane = [s for s in reader.segments("lane") if s.state == "closed"]
    assert sum(s.size_bytes or 0 for s in lane) <= 10 * MB
    assert site.files() == {s.path for s in gate + lane}


async def test_held_segments_survive_and_a_full_disk_of_them_stops_recording(site: Site) -> None:
    segs = IndexReader(site.root / "index.db").segments()
    start = min(s.start_90k for s in segs)
    end = max(s.end_90k or 0 for s in segs)
    hold = await site.index.add_hold("a" * 16, ["gate", "lane"], start, end, case_ref="2026/117",
                                     reason="theft", created_by="test")  # fmt: skip
    retention = site.retention([CameraRule("gate", retain_days=1 / 86_400)],
                               Floor(min_free_bytes=50 * MB))  # fmt: skip
    await retention.rules_pass()
    report = await retention.space_pass()
    assert report.deleted == 0 and report.skipped_held == len(segs)
    assert len(_segments(site)) == len(segs)
    assert not retention.gate.ok  # only held footage left under the floor: recording stops
    assert await site.index.release_hold(hold.id, "test")
    report = await retention.space_pass()
    assert report.deleted > 0 and retention.gate.ok


async def test_a_leased_range_is_kept_until_the_lease_ends(site: Site) -> None:
    segs = IndexReader(site.root / "index.db").segments("gate")
    oldest = segs[0]
    retention = site.retention([CameraRule("gate", retain_days=1 / 86_400)], Floor())
    with site.leases.hold_range("gate", oldest.start_90k, oldest.start_90k + SECOND):
        report = await retention.rules_pass()
        assert oldest.path in site.files() and report.skipped_leased == 0  # skipped up front
    assert oldest.path in {p for _, _, p in _segments(site)}
    await retention.rules_pass()
    assert oldest.path not in site.files()
    assert _segments(site, "gate") == []


async def test_a_download_in_progress_keeps_its_segments(site: Site) -> None:
    status = CameraStatus(id="gate", state=CameraState.STREAMING, failures=0, last_error=None,
                          last_error_kind=None, last_frame_wall_ns=None, runs=1, frames=0,
                          segments_closed=0)  # fmt: skip
    segs = IndexReader(site.root / "index.db").segments("gate")
    app = make_app(lambda: [status], site.index, site.root, leases=site.leases)
    retention = site.retention([CameraRule("gate", retain_days=1 / 86_400)], Floor())
    # Seven segments (~35 MB): more than loopback's socket buffers hold, so the server is
    # still sending (and leasing) while the client reads slowly.
    params = {"start": format_rfc3339(segs[0].start_90k), "end": format_rfc3339(segs[7].start_90k)}
    async with TestClient(TestServer(app)) as client:
        headers = await auth_headers(site.index, "viewer")
        resp = await client.get("/api/v1/cameras/gate/video.mp4", params=params, headers=headers)
        assert resp.status == 200
        first = await resp.content.readexactly(1 << 20)
        assert site.leases.held_ranges()  # the response is still being sent
        await retention.rules_pass()  # wants every gate segment: the seven being read stay
        kept = {p for c, _, p in _segments(site) if c == "gate"}
        assert kept == {s.path for s in segs[:7]}
        rest = await resp.read()
        assert len(first) + len(rest) == int(resp.headers["Content-Length"])
    await retention.rules_pass()
    assert _segments(site, "gate") == []


async def test_an_interrupted_deletion_is_finished_at_the_next_start(site: Site) -> None:
    segs = IndexReader(site.root / "index.db").segments("gate")[:4]
    # What kill -9 leaves between the steps of I4: rows marked, two files already unlinked.
    await site.index.begin_deleting([s.id for s in segs])
    for s in segs[:2]:
        (site.root / s.path).unlink()
    identity = await site.index.storage_identity()
    await site.index.close()
    (site.root / IDENTITY_FILE).write_text(identity + "\n")  # as `nvr run` made it
    toml = '[[cameras]]\nid = "gate"\nurl = "rtsp://127.0.0.1:9/x"\nenabled = false\n'
    (site.root.parent / "nvr.toml").write_text(f'[storage]\npath = "{site.root}"\n{toml}')
    app = App(make_config(site.root, toml))
    await app.start(serve_api=False)
    await app.stop()
    reader = IndexReader(site.root / "index.db")
    assert reader.segments("gate", "deleting") == []
    left = {s.path for s in reader.segments("gate")}
    assert not left & {s.path for s in segs}
    assert not any((site.root / s.path).exists() for s in segs)
    check = ["check", "--config", str(site.root.parent / "nvr.toml")]
    assert await asyncio.to_thread(main, check) == 0  # its own event loop


async def test_the_gate_stops_and_restarts_a_camera(tmp_path: Path) -> None:
    gate = StorageGate()
    gate.close()
    assert not gate.ok
    waiter = asyncio.ensure_future(gate.wait_ok())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.open()
    await asyncio.wait_for(waiter, 1)
    assert gate.closed_count == 1
