"""The SQLite index, on real database files."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from importlib import resources
from itertools import pairwise
from pathlib import Path

import pytest

from nvr.clock import SimulatedClock
from nvr.errors import StorageError, StorageFullError
from nvr.storage.index import (
    MAX_SEGMENT_90K,
    SCHEMA_VERSION,
    Index,
    new_export_id,
    segment_rel_path,
)
from nvr.storage.index_rows import ExportRow, ExportState, Gap
from nvr.storage.model import Fragment, RunEndReason, SegmentFile, SegmentState

S = 90_000  # one second in 90 kHz units
T0 = 1_790_000_000 * S
SHA = "0123456789abcdef" * 4


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "index.db"


@pytest.fixture
async def ix(db_path: Path) -> AsyncIterator[Index]:
    index = await Index.open(db_path, clock=SimulatedClock(wall_ns=T0 // S * 10**9))
    await index.upsert_camera("cam-1", "Front gate", "rtsp://admin:hunter2@10.0.0.5/stream1")
    await index.upsert_camera("cam-2", "Back yard", "rtsp://10.0.0.6/stream1")
    yield index
    await index.close()


@contextmanager
def raw(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection beside the index's own, autocommit, foreign keys on."""
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        yield conn


async def start(ix: Index, start_90k: int = T0, camera: str = "cam-1") -> int:
    return await ix.start_run(
        camera,
        start_90k,
        video_codec="h264",
        width=1280,
        height=720,
        audio_codec=None,
        clock_offset_ns=None,
    )


def facts(duration_90k: int = 60 * S, frames: int = 1500) -> SegmentFile:
    frags = (Fragment(0, 1000, 5000, True), Fragment(S, 6000, 4000, False))
    return SegmentFile(10_000, SHA, frames, duration_90k, frags)


async def seg(ix: Index, run_id: int, start_90k: int, end_90k: int | None) -> int:
    """A segment from start to end (left open when end is None)."""
    sid = await ix.open_segment(run_id, "cam-1", segment_rel_path("cam-1", start_90k), start_90k)
    if end_90k is not None:
        await ix.close_segment(sid, end_90k, facts(end_90k - start_90k))
    return sid


# --- schema -------------------------------------------------------------------------------


async def test_creates_schema_and_reopens_with_the_same_identity(db_path: Path) -> None:
    index = await Index.open(db_path)
    uuid_ = await index.storage_identity()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", uuid_)
    await index.close()
    await index.close()  # idempotent
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        meta = conn.execute("SELECT schema_version, storage_uuid FROM meta").fetchall()
        assert meta == [(SCHEMA_VERSION, uuid_)]
        tables = conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'table'").fetchall()
    assert {name for name, _ in tables} == {
        "meta", "camera", "run", "segment", "api_token", "export_job", "hold", "camera_usage",
        "hold_camera"}  # fmt: skip
    assert all(sql.rstrip().endswith(("strict", "without rowid")) for _, sql in tables)
    again = await Index.open(db_path)
    assert await again.storage_identity() == uuid_
    await again.close()


def test_every_column_in_schema_sql_has_a_comment() -> None:
    text = resources.files("nvr.storage").joinpath("schema.sql").read_text(encoding="utf-8")
    column = re.compile(r"^\s+([a-z_0-9]+) (integer|text|blob)\b")
    lines = text.splitlines()
    checked = 0
    for i, line in enumerate(lines):
        m = column.match(line)
        if not m:
            continue
        before = lines[i - 1].strip()
        assert "--" in line or before.startswith("--"), f"column {m.group(1)} has no comment"
        checked += 1
    assert checked >= 30


def test_segment_length_cap_matches_the_schema() -> None:
    text = resources.files("nvr.storage").joinpath("schema.sql").read_text(encoding="utf-8")
    assert text.count(str(MAX_SEGMENT_90K)) == 4
    assert text.count("000000") == text.count(str(MAX_SEGMENT_90K))  # no stale copy of it


async def test_refuses_a_newer_schema_version(db_path: Path) -> None:
    await (await Index.open(db_path)).close()
    with raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer = f"schema version {SCHEMA_VERSION + 1} is newer than this nvr"
    with pytest.raises(StorageError, match=newer):
        await Index.open(db_path)


async def test_refuses_a_database_that_is_not_an_index(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    with pytest.raises(StorageError, match="not an nvr index"):
        await Index.open(db_path)


async def test_refuses_meta_that_disagrees_with_user_version(db_path: Path) -> None:
    await (await Index.open(db_path)).close()
    with raw(db_path) as conn:
        conn.execute("UPDATE meta SET schema_version = 7")
    with pytest.raises(StorageError, match="disagrees"):
        await Index.open(db_path)


async def test_open_in_a_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open"):
        await Index.open(tmp_path / "nowhere" / "index.db")


async def test_strict_tables_reject_wrong_types(ix: Index, db_path: Path) -> None:
    with raw(db_path) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="cannot store TEXT value in INTEGER"):
            conn.execute(
                "INSERT INTO run (camera_id, start_90k, video_codec) VALUES ('cam-1', 'noon', "
                "'h264')"
            )
        with pytest.raises(sqlite3.IntegrityError, match="cannot store REAL value in INTEGER"):
            conn.execute(
                "INSERT INTO run (camera_id, start_90k, video_codec) VALUES ('cam-1', 1.5, 'h264')"
            )


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO camera (id, name, source) VALUES ('Cam 1', 'x', 'y')",
        "INSERT INTO run (camera_id, start_90k, video_codec) VALUES ('cam-2', 0, 'mjpeg')",
        "INSERT INTO run (camera_id, start_90k, end_90k, end_reason, video_codec) "
        "VALUES ('cam-2', 0, 10, 'bored', 'h264')",
        # an end without a reason, and a reason without an end
        "INSERT INTO run (camera_id, start_90k, end_90k, video_codec) VALUES ('cam-2', 0, 9, "
        "'h264')",
        "INSERT INTO run (camera_id, start_90k, end_reason, video_codec) VALUES ('cam-2', 0, "
        "'crash', 'h264')",
        "INSERT INTO run (camera_id, start_90k, end_90k, end_reason, video_codec) "
        "VALUES ('cam-2', 10, 5, 'crash', 'h264')",
        "INSERT INTO segment (run_id, camera_id, path, state, start_90k, created_90k) "
        "VALUES (1, 'cam-1', 'a.mp4', 'half-done', 0, 0)",
        # closed without facts
        "INSERT INTO segment (run_id, camera_id, path, state, start_90k, created_90k) "
        "VALUES (1, 'cam-1', 'a.mp4', 'closed', 0, 0)",
        # open with an end
        "INSERT INTO segment (run_id, camera_id, path, state, start_90k, end_90k, bytes, "
        "media_duration_90k, video_frames, sha256, fragments, created_90k, closed_90k) VALUES "
        f"(1, 'cam-1', 'a.mp4', 'open', 0, 9, 1, 9, 1, '{SHA}', x'01', 0, 0)",
        # an upper-case hash
        "INSERT INTO segment (run_id, camera_id, path, state, start_90k, end_90k, bytes, "
        "media_duration_90k, video_frames, sha256, fragments, created_90k, closed_90k) VALUES "
        f"(1, 'cam-1', 'a.mp4', 'closed', 0, 9, 1, 9, 1, '{SHA.upper()}', x'01', 0, 0)",
        "INSERT INTO segment (run_id, camera_id, path, state, start_90k, created_90k) "
        "VALUES (1, 'cam-1', '/abs/a.mp4', 'open', 0, 0)",
        # tokens: an unknown role, an upper-case hash, an empty name
        f"INSERT INTO api_token (name, role, token_sha256, created_90k) VALUES ('a', 'root', "
        f"'{SHA}', 0)",
        f"INSERT INTO api_token (name, role, token_sha256, created_90k) VALUES ('a', 'admin', "
        f"'{SHA.upper()}', 0)",
        f"INSERT INTO api_token (name, role, token_sha256, created_90k) VALUES ('', 'admin', "
        f"'{SHA}', 0)",
        # exports: an empty range, done without a hash, failed without an error, a bad id
        "INSERT INTO export_job (id, camera_id, start_90k, end_90k, reason, requested_by, "
        "state, file_name, created_90k) VALUES ('0123456789abcdef', 'cam-1', 5, 5, 'r', 'p', "
        "'queued', 'exports/a.mp4', 0)",
        "INSERT INTO export_job (id, camera_id, start_90k, end_90k, reason, requested_by, "
        "state, size_bytes, file_name, created_90k, started_90k, finished_90k) VALUES "
        "('0123456789abcdef', 'cam-1', 0, 5, 'r', 'p', 'done', 9, 'exports/a.mp4', 0, 0, 0)",
        "INSERT INTO export_job (id, camera_id, start_90k, end_90k, reason, requested_by, "
        "state, file_name, created_90k, finished_90k) VALUES ('0123456789abcdef', 'cam-1', 0, "
        "5, 'r', 'p', 'failed', 'exports/a.mp4', 0, 0)",
        "INSERT INTO export_job (id, camera_id, start_90k, end_90k, reason, requested_by, "
        "state, file_name, created_90k) VALUES ('export-1', 'cam-1', 0, 5, 'r', 'p', "
        "'queued', 'exports/a.mp4', 0)",
        "INSERT INTO export_job (id, camera_id, start_90k, end_90k, reason, requested_by, "
        "state, file_name, created_90k) VALUES ('0123456789abcdef', 'cam-1', 0, 5, 'r', 'p', "
        "'queued', '../a.mp4', 0)",
    ],
)
async def test_check_constraints_reject_bad_rows(ix: Index, db_path: Path, sql: str) -> None:
    await start(ix, 0)
    with raw(db_path) as conn, pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):
        conn.execute(sql)


async def test_close_and_reopen_keeps_everything(db_path: Path) -> None:
    index = await Index.open(db_path)
    await index.upsert_camera("cam-1", "Front", "rtsp://h/1")
    run_id = await start(index)
    sid = await seg(index, run_id, T0, T0 + 60 * S)
    await index.end_run(run_id, T0 + 60 * S, RunEndReason.SHUTDOWN)
    await index.close()
    with pytest.raises(StorageError, match="closed"):
        await index.upsert_camera("cam-1", "Front", "rtsp://h/1")

    index = await Index.open(db_path)
    [run] = await index.runs("cam-1", T0, T0 + 1)
    assert (run.id, run.end_90k, run.end_reason) == (run_id, T0 + 60 * S, RunEndReason.SHUTDOWN)
    [row] = await index.segments("cam-1", T0, T0 + 1)
    assert (row.id, row.state, row.sha256) == (sid, SegmentState.CLOSED, SHA)
    assert await index.segment_fragments(sid) == facts().fragments
    await index.close()


# --- cameras and runs ---------------------------------------------------------------------


async def test_camera_source_is_stored_without_its_password(ix: Index, db_path: Path) -> None:
    await ix.upsert_camera("cam-1", "Front gate (new)", "rtsp://admin:other@10.0.0.9/s")
    with raw(db_path) as conn:
        rows = conn.execute("SELECT id, name, source FROM camera ORDER BY id").fetchall()
    assert rows == [
        ("cam-1", "Front gate (new)", "rtsp://admin:***@10.0.0.9/s"),
        ("cam-2", "Back yard", "rtsp://10.0.0.6/stream1"),
    ]
    with pytest.raises(StorageError, match=r"must match \[a-z0-9-\]\+"):
        await ix.upsert_camera("Cam_1", "x", "y")


async def test_run_lifecycle(ix: Index) -> None:
    run_id = await start(ix)
    [open_run] = await ix.open_runs()
    assert open_run.id == run_id
    assert (open_run.end_90k, open_run.end_reason, open_run.video_codec) == (None, None, "h264")
    with pytest.raises(StorageError, match=r"UNIQUE constraint failed: run\.camera_id"):
        await start(ix, T0 + S)  # one open run per camera
    other = await start(ix, T0, camera="cam-2")  # other cameras are independent

    await ix.set_run_clock_offset(run_id, -1_250_000_000)
    await ix.end_run(
        run_id,
        T0 + 10 * S,
        RunEndReason.ERROR,
        "DESCRIBE rtsp://admin:hunter2@10.0.0.5/s failed: 500",
    )
    [ended] = await ix.runs("cam-1", T0, T0 + 1)
    assert ended.clock_offset_ns == -1_250_000_000
    assert ended.end_reason is RunEndReason.ERROR
    assert ended.end_detail == "DESCRIBE rtsp://admin:***@10.0.0.5/s failed: 500"
    assert [r.id for r in await ix.open_runs()] == [other]

    with pytest.raises(StorageError, match="no such open run"):
        await ix.end_run(run_id, T0 + 11 * S, RunEndReason.CRASH)
    with pytest.raises(StorageError, match="no such run"):
        await ix.set_run_clock_offset(999, 0)
    with pytest.raises(StorageError, match="CHECK constraint failed"):
        await ix.end_run(other, T0 - 1, RunEndReason.SHUTDOWN)  # before its start
    with pytest.raises(StorageError, match="FOREIGN KEY constraint failed"):
        await start(ix, camera="cam-9")


# --- segments -----------------------------------------------------------------------------


async def test_segment_row_is_committed_open_before_open_segment_returns(
    ix: Index, db_path: Path
) -> None:
    run_id = await start(ix)
    sid = await ix.open_segment(run_id, "cam-1", "cam-1/x.mp4", T0)
    with raw(db_path) as conn:  # another connection sees it: it is committed
        row = conn.execute("SELECT state, path, end_90k FROM segment WHERE id = ?", (sid,))
        assert row.fetchone() == ("open", "cam-1/x.mp4", None)


async def test_segment_lifecycle(ix: Index) -> None:
    run_id = await start(ix)
    sid = await ix.open_segment(run_id, "cam-1", "cam-1/a.mp4", T0)
    [row] = await ix.open_segments()
    assert (row.id, row.state, row.path, row.size_bytes, row.sha256) == (
        sid,
        SegmentState.OPEN,
        "cam-1/a.mp4",
        None,
        None,
    )
    assert row.created_90k == T0
    assert await ix.segment_fragments(sid) == ()

    with pytest.raises(StorageError, match=r"UNIQUE constraint failed: segment\.run_id"):
        await ix.open_segment(run_id, "cam-1", "cam-1/b.mp4", T0 + 60 * S)  # one open per run

    await ix.close_segment(sid, T0 + 60 * S, facts())
    assert await ix.open_segments() == []
    [row] = await ix.segments("cam-1", T0, T0 + 60 * S)
    assert (row.state, row.end_90k, row.size_bytes, row.video_frames) == (
        SegmentState.CLOSED,
        T0 + 60 * S,
        10_000,
        1500,
    )
    assert (row.media_duration_90k, row.sha256, row.closed_90k) == (60 * S, SHA, T0)
    assert await ix.segment_fragments(sid) == facts().fragments

    with pytest.raises(StorageError, match="state is closed"):
        await ix.close_segment(sid, T0 + 60 * S, facts())
    with pytest.raises(StorageError, match="no such segment"):
        await ix.close_segment(999, T0, facts())
    with pytest.raises(StorageError, match="no such segment"):
        await ix.segment_fragments(999)

    await ix.mark_segment_missing(sid)
    await ix.mark_segment_missing(sid)  # idempotent
    [row] = await ix.segments("cam-1", T0, T0 + 1)
    assert (row.state, row.sha256) == (SegmentState.MISSING, SHA)  # the facts stay


async def test_segments_of_a_run_touch_but_never_overlap(ix: Index) -> None:
    run_id = await start(ix)
    await seg(ix, run_id, T0, T0 + 60 * S)
    with pytest.raises(StorageError, match="overlaps another segment"):
        await ix.open_segment(run_id, "cam-1", "cam-1/inside.mp4", T0 + 30 * S)
    with pytest.raises(StorageError, match=r"UNIQUE constraint failed: segment\.run_id"):
        await ix.open_segment(run_id, "cam-1", "cam-1/same-start.mp4", T0)
    with pytest.raises(StorageError, match=r"UNIQUE constraint failed: segment\.path"):
        await ix.open_segment(run_id, "cam-1", segment_rel_path("cam-1", T0), T0 + 60 * S)
    b = await seg(ix, run_id, T0 + 60 * S, None)  # touching is fine
    await ix.close_segment(b, T0 + 120 * S, facts())
    c = await seg(ix, run_id, T0 + 150 * S, None)
    # closing c with its start moved back into b is refused
    with pytest.raises(StorageError, match="overlaps another segment"):
        await ix.close_segment(c, T0 + 160 * S, facts(), start_90k=T0 + 119 * S)
    await ix.close_segment(c, T0 + 160 * S, facts(), start_90k=T0 + 120 * S)
    assert [(s.start_90k, s.end_90k) for s in await ix.segments("cam-1", T0, T0 + 10**4 * S)] == [
        (T0, T0 + 60 * S),
        (T0 + 60 * S, T0 + 120 * S),
        (T0 + 120 * S, T0 + 160 * S),
    ]


async def test_segment_rules_tied_to_the_run(ix: Index) -> None:
    run_id = await start(ix, T0)
    with pytest.raises(StorageError, match="inside a run that is still open"):
        await ix.open_segment(run_id, "cam-1", "cam-1/early.mp4", T0 - 1)
    with pytest.raises(StorageError, match="FOREIGN KEY constraint failed"):
        await ix.open_segment(run_id, "cam-2", "cam-2/x.mp4", T0)  # not the run's camera
    with pytest.raises(StorageError, match="not a plain path"):
        await ix.open_segment(run_id, "cam-1", "cam-1/../../etc/x.mp4", T0)
    sid = await ix.open_segment(run_id, "cam-1", "cam-1/long.mp4", T0)
    with pytest.raises(StorageError, match="CHECK constraint failed: end_90k"):
        await ix.close_segment(sid, T0 + MAX_SEGMENT_90K + 1, facts())
    await ix.close_segment(sid, T0 + MAX_SEGMENT_90K, facts())
    await ix.end_run(run_id, T0 + MAX_SEGMENT_90K, RunEndReason.SHUTDOWN)
    with pytest.raises(StorageError, match="inside a run that is still open"):
        await ix.open_segment(run_id, "cam-1", "cam-1/late.mp4", T0 + MAX_SEGMENT_90K)


async def test_close_segment_can_move_the_start_and_checks_the_fragments(ix: Index) -> None:
    run_id = await start(ix, T0)
    sid = await seg(ix, run_id, T0 + 5, None)
    bad = SegmentFile(5000, SHA, 10, S, (Fragment(0, 1000, 5000, True),))
    with pytest.raises(StorageError, match="past the file's 5000 bytes"):
        await ix.close_segment(sid, T0 + S, bad)
    with pytest.raises(StorageError, match="CHECK constraint failed"):
        await ix.close_segment(sid, T0 + S, SegmentFile(1, "not-a-hash", 1, S, ()))
    await ix.close_segment(sid, T0 + S, facts(S), start_90k=T0 - 7)
    [row] = await ix.segments("cam-1", T0, T0 + S)
    assert (row.start_90k, row.end_90k) == (T0 - 7, T0 + S)
    [run] = await ix.runs("cam-1", T0, T0 + S)
    assert run.start_90k == T0 - 7  # the run starts where its first segment does
    # a later segment's start does not move the run
    sid = await seg(ix, run_id, T0 + S, None)
    await ix.close_segment(sid, T0 + 2 * S, facts(S), start_90k=T0 + S)
    [run] = await ix.runs("cam-1", T0, T0 + S)
    assert run.start_90k == T0 - 7


async def test_writer_commits_durably_with_foreign_keys_on(ix: Index) -> None:
    # synchronous=FULL (2): a commit is on disk when it returns, which I2 relies on
    for pragma, expected in (("synchronous", 2), ("foreign_keys", 1), ("journal_mode", "wal")):
        async with ix._writer.execute(f"PRAGMA {pragma}") as cur:
            assert await cur.fetchone() == (expected,)


async def test_a_full_database_is_a_storage_full_error(ix: Index) -> None:
    async with ix._writer.execute("PRAGMA page_count") as cur:
        row = await cur.fetchone()
    assert row is not None
    await ix._writer.execute(f"PRAGMA max_page_count = {row[0]}")
    with pytest.raises(StorageFullError, match=r"upsert_camera\(cam-\d+\): database or disk"):
        for i in range(100):
            await ix.upsert_camera(f"cam-{i}", "x" * 4000, "rtsp://h/")
    await ix._writer.execute("PRAGMA max_page_count = 1000000")
    await ix.upsert_camera("cam-3", "after the disk was freed", "rtsp://h/")


async def test_a_cancelled_caller_does_not_break_the_writer(ix: Index) -> None:
    run_id = await start(ix)
    task = asyncio.create_task(ix.open_segment(run_id, "cam-1", "cam-1/a.mp4", T0))
    await _one_loop_turn()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the transaction finished on its own; the writer takes the next one
    await ix.set_run_clock_offset(run_id, 5)
    assert [s.path for s in await ix.open_segments()] == ["cam-1/a.mp4"]


async def _one_loop_turn() -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, None)
    await fut


# --- time-range queries -------------------------------------------------------------------


async def test_range_queries_are_half_open(ix: Index) -> None:
    r1 = await start(ix, T0)
    s1 = await seg(ix, r1, T0, T0 + 60 * S)
    s2 = await seg(ix, r1, T0 + 60 * S, T0 + 120 * S)
    await ix.end_run(r1, T0 + 120 * S, RunEndReason.TIMEOUT)
    r2 = await start(ix, T0 + 200 * S)
    s3 = await seg(ix, r2, T0 + 200 * S, None)  # still being written

    async def seg_ids(a: int, b: int) -> list[int]:
        return [s.id for s in await ix.segments("cam-1", a, b)]

    async def run_ids(a: int, b: int) -> list[int]:
        return [r.id for r in await ix.runs("cam-1", a, b)]

    assert await seg_ids(T0 - 10 * S, T0) == []  # ends where s1 starts
    assert await seg_ids(T0 - 10 * S, T0 + 1) == [s1]
    assert await seg_ids(T0 + 60 * S, T0 + 60 * S + 1) == [s2]  # starts where s1 ends
    assert await seg_ids(T0 + 60 * S - 1, T0 + 60 * S + 1) == [s1, s2]
    assert await seg_ids(T0 + 120 * S, T0 + 200 * S) == []  # the gap, exactly
    assert await seg_ids(T0 + 10**6 * S, T0 + 10**6 * S + 1) == [s3]  # open: reaches to now
    assert await seg_ids(T0 + 30 * S, T0 + 30 * S) == []  # empty range
    assert await seg_ids(T0, T0 + 10**7 * S) == [s1, s2, s3]
    assert await ix.segments("cam-2", T0, T0 + 10**7 * S) == []

    assert await run_ids(T0 - S, T0) == []
    assert await run_ids(T0 + 119 * S, T0 + 120 * S) == [r1]
    assert await run_ids(T0 + 120 * S, T0 + 200 * S) == []
    assert await run_ids(T0 + 120 * S, T0 + 200 * S + 1) == [r2]
    assert await run_ids(T0 + 10**6 * S, T0 + 10**6 * S + 1) == [r2]


async def test_an_old_open_segment_is_still_found(ix: Index) -> None:
    """An open segment past the length cap (a crash long ago, before recovery) is found."""
    run_id = await start(ix, T0)
    sid = await seg(ix, run_id, T0, None)
    far = T0 + 3 * MAX_SEGMENT_90K
    assert [s.id for s in await ix.segments("cam-1", far, far + S)] == [sid]


async def test_a_missing_segment_that_never_closed_is_an_instant(ix: Index) -> None:
    run_id = await start(ix, T0)
    sid = await seg(ix, run_id, T0 + 10 * S, None)
    await ix.mark_segment_missing(sid)
    assert [s.id for s in await ix.segments("cam-1", T0, T0 + 11 * S)] == [sid]
    assert await ix.segments("cam-1", T0 + 11 * S, T0 + 20 * S) == []


# --- gaps ---------------------------------------------------------------------------------


async def test_gaps_between_runs_carry_the_ending_runs_reason(ix: Index) -> None:
    r1 = await start(ix, T0)
    await ix.end_run(r1, T0 + 100 * S, RunEndReason.TIMEOUT)
    r2 = await start(ix, T0 + 130 * S)
    await ix.end_run(r2, T0 + 200 * S, RunEndReason.ERROR, "RTSP 503")
    r3 = await start(ix, T0 + 200 * S)  # back to back: no gap
    await ix.end_run(r3, T0 + 300 * S, RunEndReason.CAMERA_CLOSED)
    r4 = await start(ix, T0 + 400 * S)  # still recording

    assert await ix.gaps("cam-1", T0 - 50 * S, T0 + 10**6 * S) == [
        Gap("cam-1", T0 + 100 * S, T0 + 130 * S, RunEndReason.TIMEOUT, None, r1, r2),
        Gap("cam-1", T0 + 300 * S, T0 + 400 * S, RunEndReason.CAMERA_CLOSED, None, r3, r4),
    ]
    # a range starting inside a gap gets the reason of the run before the range
    assert await ix.gaps("cam-1", T0 + 110 * S, T0 + 140 * S) == [
        Gap("cam-1", T0 + 110 * S, T0 + 130 * S, RunEndReason.TIMEOUT, None, r1, r2),
    ]
    # a range that starts exactly where r1 ends; the gap is cut at the range's end, so the
    # run after it is not named
    assert await ix.gaps("cam-1", T0 + 100 * S, T0 + 101 * S) == [
        Gap("cam-1", T0 + 100 * S, T0 + 101 * S, RunEndReason.TIMEOUT, None, r1, None),
    ]
    assert await ix.gaps("cam-1", T0 + 150 * S, T0 + 250 * S) == []  # r2 then r3, touching
    assert await ix.gaps("cam-1", T0 - 50 * S, T0) == []  # before the first run: not a gap
    assert await ix.gaps("cam-2", T0, T0 + 10**6 * S) == []


async def test_a_gap_after_the_last_run_reaches_the_range_end(ix: Index) -> None:
    r1 = await start(ix, T0)
    await ix.end_run(r1, T0 + 10 * S, RunEndReason.DISK_FULL, "ENOSPC on /srv/nvr")
    assert await ix.gaps("cam-1", T0, T0 + 60 * S) == [
        Gap(
            "cam-1",
            T0 + 10 * S,
            T0 + 60 * S,
            RunEndReason.DISK_FULL,
            "ENOSPC on /srv/nvr",
            r1,
            None,
        ),
    ]


async def test_gaps_with_runs_that_overlap_after_a_clock_step(ix: Index) -> None:
    """The NVR clock was set back: a later run starts before an earlier one ended."""
    r1 = await start(ix, T0)
    await ix.end_run(r1, T0 + 100 * S, RunEndReason.SHUTDOWN)
    r2 = await start(ix, T0 + 50 * S)
    await ix.end_run(r2, T0 + 80 * S, RunEndReason.CLOCK_JUMP)
    r3 = await start(ix, T0 + 120 * S)
    await ix.end_run(r3, T0 + 130 * S, RunEndReason.SHUTDOWN)
    assert await ix.gaps("cam-1", T0, T0 + 130 * S) == [
        Gap("cam-1", T0 + 100 * S, T0 + 120 * S, RunEndReason.SHUTDOWN, None, r1, r3),
    ]


# --- concurrency --------------------------------------------------------------------------


async def test_reads_run_beside_an_uncommitted_write(ix: Index, db_path: Path) -> None:
    r1 = await start(ix, T0)
    with raw(db_path) as other:
        other.execute("PRAGMA busy_timeout = 0")
        other.execute("BEGIN IMMEDIATE")  # holds the database's write lock
        other.execute(
            "INSERT INTO run (camera_id, start_90k, video_codec) VALUES ('cam-2', ?, 'h264')",
            (T0,),
        )
        # the index's read connection is not blocked and sees only committed rows
        assert [r.id for r in await ix.open_runs()] == [r1]
        other.execute("COMMIT")
    assert len(await ix.open_runs()) == 2


async def test_concurrent_writers_and_readers_stay_consistent(ix: Index) -> None:
    runs = await asyncio.gather(*(start(ix, T0, camera=c) for c in ("cam-1", "cam-2")))

    async def record(run_id: int, camera: str) -> None:
        for i in range(20):
            t = T0 + i * 60 * S
            sid = await ix.open_segment(run_id, camera, f"{camera}/{i}.mp4", t)
            await ix.close_segment(sid, t + 60 * S, facts())

    async def read() -> int:
        seen = 0
        for _ in range(20):
            rows = await ix.segments("cam-1", T0, T0 + 10**4 * S)
            assert all(a.end_90k == b.start_90k for a, b in pairwise(rows))
            seen = len(rows)
        return seen

    await asyncio.gather(record(runs[0], "cam-1"), record(runs[1], "cam-2"), read(), read())
    assert len(await ix.segments("cam-1", T0, T0 + 10**4 * S)) == 20
    assert len(await ix.segments("cam-2", T0, T0 + 10**4 * S)) == 20


# --- paths ---------------------------------------------------------------------------------


def test_segment_path_is_utc_and_millisecond_precise() -> None:
    # 2026-11-28T14:05:09.123456Z
    start_90k = (1_795_874_709 * 1_000_000 + 123_456) * 9 // 100
    assert segment_rel_path("cam-1", start_90k) == ("cam-1/2026/11/28/14/20261128T140509.123Z.mp4")
    assert segment_rel_path("c", 0) == "c/1970/01/01/00/19700101T000000.000Z.mp4"


async def test_camera_identity_is_stored(tmp_path: Path) -> None:
    index = await Index.open(tmp_path / "index.db")
    await index.upsert_camera("gate", "Gate", "http://10.0.0.5 (ONVIF)")
    await index.set_camera_identity("gate", serial="SN-1", mac="44:19:B6:0A:0B:0C",
                                    manufacturer="Acme", model="AC-2000")  # fmt: skip
    await index.close()
    con = sqlite3.connect(tmp_path / "index.db")
    row = con.execute(
        "SELECT onvif_serial, onvif_mac, onvif_manufacturer, onvif_model FROM camera"
    ).fetchone()
    con.close()
    assert row == ("SN-1", "44:19:b6:0a:0b:0c", "Acme", "AC-2000")


# --- API tokens ----------------------------------------------------------------------------


async def test_token_lifecycle(ix: Index) -> None:
    added = await ix.add_token("ops", "operator", SHA)
    assert (added.name, added.role, added.created_90k) == ("ops", "operator", T0)
    assert added.last_used_90k is None and added.revoked_90k is None
    assert await ix.token_by_hash(SHA) == added
    assert await ix.token_by_hash("f" * 64) is None
    with pytest.raises(StorageError, match="a token named 'ops' already exists"):
        await ix.add_token("ops", "viewer", "e" * 64)
    await ix.add_token("viewer", "viewer", "e" * 64)
    assert [t.name for t in await ix.tokens()] == ["ops", "viewer"]
    assert await ix.revoke_token("ops")
    assert not await ix.revoke_token("ops")  # already revoked
    assert not await ix.revoke_token("nobody")
    assert await ix.token_by_hash(SHA) is None
    [ops, _] = await ix.tokens()
    assert ops.revoked_90k == T0
    with pytest.raises(StorageError, match="already exists"):  # a revoked name stays taken
        await ix.add_token("ops", "viewer", "d" * 64)


async def test_token_use_is_recorded_at_most_once_a_minute(ix: Index) -> None:
    token = await ix.add_token("ops", "operator", SHA)

    async def last_used() -> int | None:
        row = await ix.token_by_hash(SHA)
        assert row is not None
        return row.last_used_90k

    await ix.touch_token(token.id, T0)
    assert await last_used() == T0
    await ix.touch_token(token.id, T0 + 59 * S)
    assert await last_used() == T0
    await ix.touch_token(token.id, T0 + 60 * S)
    assert await last_used() == T0 + 60 * S


# --- exports -------------------------------------------------------------------------------


async def _export(ix: Index, export_id: str, token_name: str | None = None) -> ExportRow:
    return await ix.create_export(
        export_id, "cam-1", T0, T0 + 60 * S, reason="incident 42", requested_by="officer",
        token_name=token_name, hold=True, file_name=f"exports/{export_id}.mp4",
    )  # fmt: skip


async def test_export_lifecycle(ix: Index) -> None:
    first = await _export(ix, new_export_id(), "ops")
    assert re.fullmatch(r"[0-9a-f]{16}", first.id)
    assert first.state is ExportState.QUEUED and first.hold and first.token_name == "ops"
    assert (first.created_90k, first.started_90k, first.finished_90k) == (T0, None, None)
    assert await ix.export(first.id) == first
    assert await ix.export("0" * 16) is None
    second = await _export(ix, "00000000000000aa")
    third = await _export(ix, "00000000000000bb")
    assert [e.id for e in await ix.exports()] == [third.id, second.id, first.id]
    assert [e.id for e in await ix.exports(limit=1)] == [third.id]

    await ix.export_started(first.id)
    await ix.export_done(first.id, 1234, SHA)
    done = await ix.export(first.id)
    assert done is not None and done.state is ExportState.DONE
    assert (done.size_bytes, done.sha256, done.started_90k, done.finished_90k) == (
        1234, SHA, T0, T0)  # fmt: skip
    with pytest.raises(StorageError, match="state is done"):
        await ix.export_failed(first.id, "too late")

    await ix.export_started(second.id)
    await ix.export_failed(second.id, "cannot read rtsp://admin:hunter2@10.0.0.5/x")
    failed = await ix.export(second.id)
    assert failed is not None and failed.state is ExportState.FAILED
    assert failed.error is not None and "hunter2" not in failed.error
    assert [e.id for e in await ix.unfinished_exports()] == [third.id]
    with pytest.raises(StorageError, match="no such export"):
        await ix.export_started("0" * 16)


async def test_export_rows_are_checked(ix: Index) -> None:
    with pytest.raises(StorageError, match="FOREIGN KEY"):
        await ix.create_export("00000000000000cc", "no-such-camera", T0, T0 + S, reason="r",
                               requested_by="p", token_name=None, hold=False,
                               file_name="exports/x.mp4")  # fmt: skip
    with pytest.raises(StorageError, match="not a plain path"):
        await ix.create_export("00000000000000cc", "cam-1", T0, T0 + S, reason="r",
                               requested_by="p", token_name=None, hold=False,
                               file_name="/etc/x.mp4")  # fmt: skip
    await _export(ix, "00000000000000cc")
    with pytest.raises(StorageError, match="UNIQUE"):
        await _export(ix, "00000000000000cc")
