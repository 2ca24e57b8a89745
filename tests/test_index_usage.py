"""Per-camera totals of closed segments (``camera_usage``): kept by triggers through every
state change a segment goes through, read by retain_bytes, checked and repaired by nvr check."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from nvr.clock import SimulatedClock
from nvr.storage.check import ProblemKind, check_storage
from nvr.storage.index import Index, segment_rel_path
from nvr.storage.model import Fragment, SegmentFile

S = 90_000
T0 = 1_790_000_000 * S
SHA = "0123456789abcdef" * 4
CAMS = ("cam-1", "cam-2", "cam-3")


@pytest.fixture
async def ix(tmp_path: Path) -> AsyncIterator[Index]:
    index = await Index.open(tmp_path / "index.db", clock=SimulatedClock(wall_ns=T0 // S * 10**9))
    for cam in CAMS:
        await index.upsert_camera(cam, cam, f"rtsp://127.0.0.1/{cam}")
    yield index
    await index.close()


def summed(db: Path) -> dict[str, tuple[int, int]]:
    """What the totals must be: summed from the rows themselves."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT camera_id, sum(bytes), count(*) FROM segment WHERE state = 'closed' "
            "GROUP BY camera_id"
        ).fetchall()
    return {cam: (int(b), int(n)) for cam, b, n in rows}


def kept(db: Path) -> dict[str, tuple[int, int]]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT camera_id, closed_bytes, closed_segments FROM camera_usage"
        ).fetchall()
    return {cam: (b, n) for cam, b, n in rows if n or b}


def segment_file(size: int, duration_90k: int) -> SegmentFile:
    return SegmentFile(size, SHA, 25, duration_90k, (Fragment(0, 100, size - 100, True),))


async def test_totals_follow_every_state_change(ix: Index, tmp_path: Path) -> None:
    """Open, close, missing, deleting, given back, deleted, in a random order of cameras and
    sizes: after every step the kept totals equal the rows' sums and closed_bytes agrees."""
    db = tmp_path / "index.db"
    rng = random.Random(11)
    runs = {}
    for cam in CAMS:
        runs[cam] = await ix.start_run(cam, T0, video_codec="h264", width=1280, height=720,
                                       audio_codec=None, clock_offset_ns=None)  # fmt: skip
    next_start = dict.fromkeys(CAMS, T0)
    closed: list[int] = []
    for step in range(120):
        op = rng.random()
        if op < 0.7 or not closed:
            cam = rng.choice(CAMS)
            start = next_start[cam]
            sid = await ix.open_segment(runs[cam], cam, segment_rel_path(cam, start), start)
            duration = rng.randrange(1, 120) * S
            await ix.close_segment(sid, start + duration,
                                   segment_file(rng.randrange(1_000, 10**9), duration))  # fmt: skip
            next_start[cam] = start + duration
            closed.append(sid)
        elif op < 0.78:
            await ix.mark_segment_missing(closed.pop(rng.randrange(len(closed))))
        else:
            picked = [closed.pop(rng.randrange(len(closed))) for _ in range(min(2, len(closed)))]
            marked = await ix.begin_deleting(picked)
            assert {r.id for r in marked} == set(picked)
            if rng.random() < 0.4:
                await ix.cancel_deleting(picked)
                closed.extend(picked)
            else:
                await ix.finish_deleting(picked)
        assert kept(db) == summed(db), step
        for cam in CAMS:
            assert await ix.closed_bytes(cam) == summed(db).get(cam, (0, 0))[0], (step, cam)
    assert len(summed(db)) == len(CAMS)  # every camera has closed segments left to count


async def test_nvr_check_finds_and_repairs_wrong_totals(ix: Index, tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    root = tmp_path / "root"
    root.mkdir()
    run = await ix.start_run("cam-1", T0, video_codec="h264", width=1280, height=720,
                             audio_codec=None, clock_offset_ns=None)  # fmt: skip
    size = 4096
    for i in range(3):
        start = T0 + i * 60 * S
        rel = segment_rel_path("cam-1", start)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\0" * size)
        sid = await ix.open_segment(run, "cam-1", rel, start)
        await ix.close_segment(sid, start + 60 * S, segment_file(size, 60 * S))
    report = await check_storage(ix, root)
    assert report.clean, report.problems
    # A total changed behind the triggers' back (a hand edit, an old bug).
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("UPDATE camera_usage SET closed_bytes = 5 WHERE camera_id = 'cam-1'")
        conn.execute("DELETE FROM camera_usage WHERE camera_id = 'cam-2'")
        conn.execute(
            "INSERT INTO camera_usage VALUES ('cam-3', 77, 1) "
            "ON CONFLICT (camera_id) DO UPDATE SET closed_bytes = 77, closed_segments = 1"
        )
    report = await check_storage(ix, root)
    assert not report.clean
    assert report.found.get(ProblemKind.USAGE_DIFFERS) == 2, report.problems  # cam-1, cam-3
    [p1, p3] = [p for p in report.problems if p.kind is ProblemKind.USAGE_DIFFERS]
    assert (p1.path, p3.path) == ("cam-1", "cam-3")
    assert "kept 5 bytes in 3 closed segments, the rows hold 12288 bytes in 3" in p1.detail
    assert await ix.closed_bytes("cam-1") == 5  # a check without --repair changes nothing
    report = await check_storage(ix, root, repair=True)
    assert report.repaired.get(ProblemKind.USAGE_DIFFERS) == 2 and report.clean
    assert kept(db) == summed(db) == {"cam-1": (3 * size, 3)}
    assert await ix.closed_bytes("cam-1") == 3 * size
    assert (await check_storage(ix, root)).clean
