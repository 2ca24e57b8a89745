"""A small real filesystem filled by three live cameras: the floor holds, recording goes on.

The test mounts a 40 MiB tmpfs (root only: CI runs as root), points the storage at it with a
10 MiB free-space floor, and records three simulated cameras at about 2 Mbit/s each until
retention has had to make room several times over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvr.app import App
from nvr.cli import main
from nvr.config import Config, parse_config
from nvr.ingest.camera import CameraState
from support.fakecam import FakeCam
from support.recording import IndexReader, poll

pytestmark = pytest.mark.rtsp

MIB = 1024 * 1024
FLOOR = 10 * MIB


@contextlib.contextmanager
def _tmpfs(tmp_path: Path, size_mib: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs",
                    str(disk)], check=True)  # fmt: skip
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path, 40) as disk:
        yield disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path, 24) as disk:
        yield disk


def _config(disk: Path, cam: FakeCam) -> Config:
    cams = "".join(
        f'[[cameras]]\nid = "cam-{i}"\nurl = "{cam.url("/live/h264")}"\n'
        'audio = "off"\nstall_timeout_s = 5\nbackoff_initial_s = 0.2\nbackoff_max_s = 1\n'
        for i in range(3)
    )
    text = (
        f'[storage]\npath = "{disk}"\nsegment_seconds = 2\nmin_free_bytes = {FLOOR}\n'
        f'min_free_percent = 0\nspace_check_s = 0.2\n[api]\nlisten = "127.0.0.1:0"\n{cams}'
    )
    (disk.parent / "nvr.toml").write_text(text)  # for `nvr check` afterwards
    return parse_config(text)


def _tree(disk: Path) -> set[str]:
    return {str(p.relative_to(disk)) for p in disk.rglob("*.mp4")}


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def test_three_cameras_fill_a_small_disk_and_the_floor_holds(
    small_disk: Path, cam_none: FakeCam
) -> None:
    cfg = _config(small_disk, cam_none)
    reader = IndexReader(cfg.storage.index_path)
    app = App(cfg)
    lowest = _free(small_disk)
    seen: dict[str, tuple[str, int]] = {}  # path -> (camera, start) of every closed segment

    async def watch() -> None:
        nonlocal lowest
        while True:
            lowest = min(lowest, _free(small_disk))
            for s in reader.segments(state="closed"):
                seen[s.path] = (s.camera_id, s.start_90k)
            await asyncio.sleep(0.02)

    await app.start(serve_api=False)
    watcher = asyncio.create_task(watch())
    try:
        assert app.retention is not None
        retention = app.retention
        deadline = asyncio.get_running_loop().time() + 240
        # Until the disk has been refilled about twice over by recording.
        while retention.freed_total < 30 * MIB:
            assert asyncio.get_running_loop().time() < deadline, "retention never caught up"
            await asyncio.sleep(0.1)
        states = {s.id: s.state for s in app.statuses()}
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await app.stop()
    assert lowest >= FLOOR, f"free space fell to {lowest / MIB:.1f} MiB"
    assert retention.gate.closed_count == 0
    assert set(states.values()) == {CameraState.STREAMING}
    runs = reader.runs()
    assert len(runs) == 3 and {r.end_reason for r in runs} == {"shutdown"}  # never stopped
    kept = {s.path: (s.camera_id, s.start_90k) for s in reader.segments(state="closed")}
    deleted = {p: v for p, v in seen.items() if p not in kept}
    assert len({c for c, _ in deleted.values()}) == 3
    # Oldest first: nothing kept is older than anything deleted.
    assert max(t for _, t in deleted.values()) <= min(t for _, t in kept.values())
    # The index and the tree agree.
    assert _tree(small_disk) == set(kept)
    assert reader.segments(state="deleting") == []
    check = ["check", "--config", str(small_disk.parent / "nvr.toml"), "--hash"]
    assert await asyncio.to_thread(main, check) == 0  # its own event loop


async def test_a_disk_full_of_held_footage_stops_recording_until_the_hold_is_released(
    tiny_disk: Path, cam_none: FakeCam
) -> None:
    cfg = _config(tiny_disk, cam_none)
    reader = IndexReader(cfg.storage.index_path)
    app = App(cfg)
    await app.start(serve_api=False)
    try:
        assert app.index is not None and app.retention is not None
        held = await app.index.add_hold("e" * 16, ["cam-0", "cam-1", "cam-2"], 0, 2**62,
                                        case_ref="2026/117", reason="everything is evidence",
                                        created_by="test")  # fmt: skip
        await poll("every camera stopped for lack of space",
                   lambda: {s.state for s in app.statuses()} == {CameraState.STORAGE_FULL},
                   timeout_s=120)  # fmt: skip
        assert not app.retention.gate.ok
        held_paths = {s.path for s in reader.segments(state="closed")}
        assert {r.end_reason for r in reader.runs()} == {"disk_full"}
        # Nothing held was deleted to make room.
        assert held_paths <= _tree(tiny_disk)
        assert await app.index.release_hold(held.id, "test")
        await poll("recording again",
                   lambda: {s.state for s in app.statuses()} == {CameraState.STREAMING},
                   timeout_s=60)  # fmt: skip
        assert app.retention.gate.ok and app.retention.deleted_total > 0
    finally:
        await app.stop()
    assert len(reader.runs()) == 6  # one run each before the stop, one after
