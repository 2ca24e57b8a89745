"""The recording index in SQLite: cameras, runs and segments; API tokens and clip exports.

One writer connection takes every write, one transaction at a time (an ``asyncio.Lock``
serializes them, and each transaction runs to its end even if the caller is cancelled). A
second, read-only connection serves queries; WAL lets it read beside the writer and each query
sees one committed snapshot.

The writer runs with ``synchronous=FULL``: a commit is on disk when the call returns. That is
what invariant I2 needs (a segment row is durably ``open`` before its file gets any data) and
it costs little, since the index commits a few times per segment, not per frame.

The schema lives in ``schema.sql`` (units of every column are there), and the steps that
upgrade an older index in ``migrations.py``; the storage lifecycle is described in
``docs/storage.md``. ``sqlite3`` errors become ``StorageError`` here, with the
operation in the message (``StorageFullError`` when the disk is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiosqlite

from nvr.clock import Clock, SystemClock
from nvr.errors import StorageError, StorageFullError
from nvr.ingest.timeline import ns_to_90k
from nvr.redact import redact_url
from nvr.storage.dbutil import check_rel_path as _check_rel_path
from nvr.storage.dbutil import scalar as _scalar
from nvr.storage.dbutil import scrub as _scrub
from nvr.storage.fragment_map import decode_fragments, encode_fragments
from nvr.storage.fsync import fsync_dir
from nvr.storage.index_access import AccessQueries
from nvr.storage.index_lifecycle import LifecycleQueries
from nvr.storage.index_rows import (
    CAMERA_COLUMNS,
    RUN_COLUMNS,
    SEGMENT_COLUMNS,
    CameraRow,
    Gap,
    RunRow,
    SegmentRow,
    derive_gaps,
    run_row,
    segment_row,
)
from nvr.storage.migrations import upgrade
from nvr.storage.model import Fragment, RunEndReason, SegmentFile, SegmentState

SCHEMA_VERSION = 4

MAX_SEGMENT_90K = 2 * 3600 * 90_000
"""Longest wall duration of one segment; schema.sql holds the same bound (648000000).

Twice the longest ``segment_seconds`` the config accepts (3600), leaving room for the wait for
the next keyframe. Time-range queries use it to bound their search.
"""

_T = TypeVar("_T")
_Db = aiosqlite.Connection
_Params = Sequence[object] | Mapping[str, object]
_BUSY_TIMEOUT_MS = 10_000
_CAMERA_ID = re.compile(r"[a-z0-9-]+")


# --- paths ----------------------------------------------------------------------------------


def segment_rel_path(camera_id: str, start_90k: int) -> str:
    """``<camera_id>/<YYYY>/<MM>/<DD>/<HH>/<YYYYMMDDTHHMMSS.fffZ>.mp4`` for a segment start.

    All fields are UTC and come from ``start_90k`` rounded down to the millisecond.
    """
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=start_90k // 90)
    stamp = f"{t:%Y%m%dT%H%M%S}.{t.microsecond // 1000:03d}Z"
    return f"{camera_id}/{t:%Y/%m/%d/%H}/{stamp}.mp4"


def new_export_id() -> str:
    """A random export id: 16 lower-case hex digits."""
    return secrets.token_hex(8)


# --- schema ---------------------------------------------------------------------------------


def _schema_statements() -> Iterable[str]:
    """schema.sql split into complete statements (triggers contain ';' of their own)."""
    text = resources.files("nvr.storage").joinpath("schema.sql").read_text(encoding="utf-8")
    pending = ""
    for line in text.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip() and not pending.strip().startswith("--"):
        raise StorageError("schema.sql ends with an incomplete statement")


# --- the index ------------------------------------------------------------------------------


class Index(LifecycleQueries, AccessQueries):
    """Async access to the index database. Create with ``await Index.open(path)``."""

    def __init__(self, db_path: Path, writer: _Db, reader: _Db, clock: Clock, uuid_: str) -> None:
        self._path = db_path
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._uuid = uuid_
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._pending: set[asyncio.Future[Any]] = set()

    @classmethod
    async def open(cls, db_path: Path, *, clock: Clock | None = None) -> Index:
        """Open the index at ``db_path``, creating it (and its identity) when absent.

        Refuses, with ``StorageError``, a file that is not an nvr index or whose schema is
        newer than this code.
        """
        clock = clock or SystemClock()
        db_path = await asyncio.to_thread(db_path.resolve)
        writer: _Db | None = None
        reader: _Db | None = None
        try:
            writer = await aiosqlite.connect(db_path, isolation_level=None)
            for pragma in (
                f"busy_timeout = {_BUSY_TIMEOUT_MS}",
                "journal_mode = WAL",
                "synchronous = FULL",
                "foreign_keys = ON",
            ):
                await writer.execute(f"PRAGMA {pragma}")
            created = await cls._prepare_schema(writer, db_path, clock)
            if created:
                await asyncio.to_thread(fsync_dir, db_path.parent)
            reader = await aiosqlite.connect(
                f"{db_path.as_uri()}?mode=ro", uri=True, isolation_level=None
            )
            await reader.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
            async with reader.execute("SELECT storage_uuid FROM meta") as cur:
                row = await cur.fetchone()
            if row is None:
                raise StorageError(f"index {db_path}: the meta row is missing")
            return cls(db_path, writer, reader, clock, row[0])
        except BaseException as e:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()
            if isinstance(e, sqlite3.Error):
                raise _translate(e, f"index {db_path}: cannot open") from e
            raise

    @staticmethod
    async def _prepare_schema(db: _Db, db_path: Path, clock: Clock) -> bool:
        """Create or check the schema; True when it was created now."""
        await db.execute("BEGIN IMMEDIATE")
        try:
            version = int(await _scalar(db, "PRAGMA user_version"))
            if version == 0:
                others = await _scalar(
                    db, "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
                )
                if others:
                    raise StorageError(
                        f"index {db_path}: not an nvr index (no schema version, {others} "
                        "objects present)"
                    )
                for stmt in _schema_statements():
                    await db.execute(stmt)
                await db.execute(
                    "INSERT INTO meta (id, schema_version, storage_uuid, created_90k) "
                    "VALUES (1, ?, ?, ?)",
                    (SCHEMA_VERSION, str(uuid.uuid4()), ns_to_90k(clock.wall_ns())),
                )
                await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise StorageError(
                    f"index {db_path}: schema version {version} is newer than this nvr "
                    f"understands ({SCHEMA_VERSION}); upgrade nvr or restore a backup"
                )
            else:
                meta = await _scalar(db, "SELECT schema_version FROM meta WHERE id = 1")
                if meta != version:
                    raise StorageError(
                        f"index {db_path}: meta.schema_version {meta} disagrees with "
                        f"user_version {version}"
                    )
                if version < SCHEMA_VERSION:
                    try:
                        await upgrade(db, db_path, version, SCHEMA_VERSION)
                    except StorageError as e:
                        raise StorageError(f"index {db_path}: {e}") from e
            await db.execute("COMMIT")
            return version == 0
        except BaseException:
            await db.rollback()
            raise

    async def close(self) -> None:
        """Finish the write in progress, then close both connections. Idempotent."""
        if self._closed:
            return
        async with self._write_lock:
            self._closed = True
            await self._reader.close()
            await self._writer.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- plumbing ---

    def _now_90k(self) -> int:
        return ns_to_90k(self._clock.wall_ns())

    async def _write(self, what: str, body: Callable[[_Db], Awaitable[_T]]) -> _T:
        """Run ``body`` in one write transaction. A cancelled caller does not cut it short."""
        if self._closed:
            raise StorageError(f"index {self._path}: {what}: the index is closed")
        task = asyncio.ensure_future(self._transaction(what, body))
        # Keep the task alive and its outcome observed even if our caller goes away.
        self._pending.add(task)
        task.add_done_callback(_settle)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    async def _transaction(self, what: str, body: Callable[[_Db], Awaitable[_T]]) -> _T:
        async with self._write_lock:
            if self._closed:
                raise StorageError(f"index {self._path}: {what}: the index is closed")
            db = self._writer
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    result = await body(db)
                    await db.execute("COMMIT")
                except BaseException:
                    await db.rollback()
                    raise
            except sqlite3.Error as e:
                raise _translate(e, f"index {self._path}: {what}") from e
            except StorageError as e:
                raise type(e)(f"index {self._path}: {what}: {e}") from e
            return result

    @contextlib.asynccontextmanager
    async def _read(self, what: str, sql: str, params: _Params) -> AsyncIterator[Any]:
        if self._closed:
            raise StorageError(f"index {self._path}: {what}: the index is closed")
        try:
            async with self._reader.execute(sql, params) as cur:
                yield cur
        except sqlite3.Error as e:
            raise _translate(e, f"index {self._path}: {what}") from e

    async def _fetchall(self, what: str, sql: str, params: Sequence[object]) -> list[Any]:
        async with self._read(what, sql, params) as cur:
            return list(await cur.fetchall())

    # --- cameras and runs ---

    async def storage_identity(self) -> str:
        """The UUID made when this index was created."""
        return self._uuid

    async def probe_writable(self) -> None:
        """Commit a one-row write (the meta row, unchanged) through the writer: raises
        ``StorageError`` when the index cannot take writes. Costs one WAL append and fsync."""

        async def body(db: _Db) -> None:
            cur = await db.execute(
                "UPDATE meta SET schema_version = schema_version WHERE id = 1"
            )
            if cur.rowcount != 1:
                raise StorageError("the meta row is missing")

        await self._write("probe_writable", body)

    async def upsert_camera(self, camera_id: str, name: str, source: str) -> None:
        """Add a camera or update its name and source (a password in the URL is removed)."""
        if not _CAMERA_ID.fullmatch(camera_id):
            raise StorageError(f"camera id {camera_id!r} must match [a-z0-9-]+")

        async def body(db: _Db) -> None:
            await db.execute(
                "INSERT INTO camera (id, name, source) VALUES (?, ?, ?) ON CONFLICT (id) DO "
                "UPDATE SET name = excluded.name, source = excluded.source",
                (camera_id, name, _scrub(redact_url(source))),
            )

        await self._write(f"upsert_camera({camera_id})", body)

    async def set_camera_identity(
        self, camera_id: str, *, serial: str, mac: str | None, manufacturer: str, model: str
    ) -> None:
        """Record who the camera is (from ONVIF), so it can be found again at a new address."""

        async def body(db: _Db) -> None:
            cur = await db.execute(
                "UPDATE camera SET onvif_serial = ?, onvif_mac = ?, onvif_manufacturer = ?, "
                "onvif_model = ? WHERE id = ?",
                (serial, mac.lower() if mac else None, manufacturer, model, camera_id),
            )
            if cur.rowcount != 1:
                raise StorageError("no such camera")

        await self._write(f"set_camera_identity({camera_id})", body)

    async def camera(self, camera_id: str) -> CameraRow | None:
        """The camera's row: name, source (no secrets) and ONVIF identity; None if unknown."""
        sql = f"SELECT {CAMERA_COLUMNS} FROM camera WHERE id = ?"
        rows = await self._fetchall(f"camera({camera_id})", sql, (camera_id,))
        return CameraRow(*rows[0]) if rows else None

    async def start_run(
        self,
        camera_id: str,
        start_90k: int,
        *,
        video_codec: str,
        width: int | None,
        height: int | None,
        audio_codec: str | None,
        clock_offset_ns: int | None,
    ) -> int:
        """Open a run; refused if the camera is unknown or already has an open run."""

        async def body(db: _Db) -> int:
            cur = await db.execute(
                "INSERT INTO run (camera_id, start_90k, video_codec, width, height, "
                "audio_codec, clock_offset_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (camera_id, start_90k, video_codec, width, height, audio_codec, clock_offset_ns),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return await self._write(f"start_run(camera {camera_id}, start_90k {start_90k})", body)

    async def end_run(
        self, run_id: int, end_90k: int, reason: RunEndReason, detail: str | None = None
    ) -> None:
        """Close an open run with why it ended; ``detail`` is scrubbed of URL passwords."""
        reason = RunEndReason(reason)
        clean = None if detail is None else _scrub(detail)

        async def body(db: _Db) -> None:
            cur = await db.execute(
                "UPDATE run SET end_90k = ?, end_reason = ?, end_detail = ? "
                "WHERE id = ? AND end_90k IS NULL",
                (end_90k, reason.value, clean, run_id),
            )
            if cur.rowcount != 1:
                raise StorageError("no such open run")

        await self._write(f"end_run(run {run_id}, {reason.value})", body)

    async def set_run_clock_offset(self, run_id: int, clock_offset_ns: int) -> None:
        async def body(db: _Db) -> None:
            cur = await db.execute(
                "UPDATE run SET clock_offset_ns = ? WHERE id = ?", (clock_offset_ns, run_id)
            )
            if cur.rowcount != 1:
                raise StorageError("no such run")

        await self._write(f"set_run_clock_offset(run {run_id})", body)

    # --- segments ---

    async def open_segment(self, run_id: int, camera_id: str, rel_path: str, start_90k: int) -> int:
        """Insert a segment row in state ``open``; it is committed (durably) on return."""
        _check_rel_path(rel_path)
        created_90k = self._now_90k()

        async def body(db: _Db) -> int:
            cur = await db.execute(
                "INSERT INTO segment (run_id, camera_id, path, state, start_90k, created_90k) "
                "VALUES (?, ?, ?, 'open', ?, ?)",
                (run_id, camera_id, rel_path, start_90k, created_90k),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return await self._write(
            f"open_segment(run {run_id}, camera {camera_id}, {rel_path!r})", body
        )

    async def close_segment(
        self, segment_id: int, end_90k: int, facts: SegmentFile, *, start_90k: int | None = None
    ) -> None:
        """Record a finished (or recovered) file's facts and mark the row ``closed``.

        ``start_90k``, when given, replaces the start recorded at open: a run's wall-time
        anchor is refined until its first segment closes (docs/time.md). When the segment is
        the first of its run, the run's start moves with it, in the same transaction.
        """
        what = f"close_segment(segment {segment_id})"
        blob = encode_fragments(facts.fragments)
        if facts.fragments:
            last = facts.fragments[-1]
            if last.byte_offset + last.size_bytes > facts.size_bytes:
                raise StorageError(
                    f"{what}: last fragment ends at byte {last.byte_offset + last.size_bytes}, "
                    f"past the file's {facts.size_bytes} bytes"
                )
        closed_90k = self._now_90k()

        async def body(db: _Db) -> None:
            cur = await db.execute(
                "UPDATE segment SET state = 'closed', start_90k = coalesce(?, start_90k), "
                "end_90k = ?, media_duration_90k = ?, bytes = ?, video_frames = ?, sha256 = ?, "
                "fragments = ?, closed_90k = ? WHERE id = ? AND state = 'open'",
                (
                    start_90k, end_90k, facts.media_duration_90k, facts.size_bytes,
                    facts.video_frames, facts.sha256, blob, closed_90k, segment_id,
                ),
            )
            if cur.rowcount != 1:
                state = await _scalar(db, "SELECT state FROM segment WHERE id = ?", (segment_id,))
                raise StorageError("no such segment" if state is None else f"state is {state}")
            if start_90k is not None:
                await db.execute(
                    "UPDATE run SET start_90k = :start WHERE id = (SELECT run_id FROM segment "
                    "WHERE id = :seg) AND start_90k <> :start AND NOT EXISTS (SELECT 1 FROM "
                    "segment AS s WHERE s.run_id = run.id AND s.start_90k < :start)",
                    {"start": start_90k, "seg": segment_id},
                )

        await self._write(what, body)

    async def mark_segment_missing(self, segment_id: int) -> None:
        """The segment's file is gone; keep the row as ``missing`` (I3). Idempotent."""

        async def body(db: _Db) -> None:
            cur = await db.execute(
                "UPDATE segment SET state = 'missing' WHERE id = ? AND state <> 'deleting'",
                (segment_id,),
            )
            if cur.rowcount != 1:
                state = await _scalar(db, "SELECT state FROM segment WHERE id = ?", (segment_id,))
                raise StorageError("no such segment" if state is None else f"state is {state}")

        await self._write(f"mark_segment_missing(segment {segment_id})", body)

    # --- queries ---

    async def open_runs(self) -> list[RunRow]:
        """Runs still recording (after a crash: the runs recovery must end)."""
        sql = f"SELECT {RUN_COLUMNS} FROM run WHERE end_90k IS NULL ORDER BY +id"
        return [run_row(r) for r in await self._fetchall("open_runs", sql, ())]

    async def open_segments(self) -> list[SegmentRow]:
        """Segments in state ``open`` (after a crash: the files recovery must finish)."""
        sql = f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE state = 'open' ORDER BY +id"
        return [segment_row(r) for r in await self._fetchall("open_segments", sql, ())]

    async def runs(self, camera_id: str, start_90k: int, end_90k: int) -> list[RunRow]:
        """Runs overlapping ``[start_90k, end_90k)``, by start; an open run extends to now."""
        if end_90k <= start_90k:
            return []
        sql = (
            f"SELECT {RUN_COLUMNS} FROM run WHERE camera_id = ? AND start_90k < ? "
            "AND (end_90k IS NULL OR end_90k > ?) ORDER BY start_90k, id"
        )
        rows = await self._fetchall(f"runs({camera_id})", sql, (camera_id, end_90k, start_90k))
        return [run_row(r) for r in rows]

    async def latest_closed_segment(self, camera_id: str) -> SegmentRow | None:
        """The camera's most recent closed segment (by start), if any."""
        sql = (
            f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE camera_id = :cam "
            "AND state = 'closed' ORDER BY start_90k DESC LIMIT 1"
        )
        what = f"latest_closed_segment({camera_id})"
        async with self._read(what, sql, {"cam": camera_id}) as cur:
            row = await cur.fetchone()
        return segment_row(row) if row is not None else None

    async def segments(self, camera_id: str, start_90k: int, end_90k: int) -> list[SegmentRow]:
        """Segments of every state overlapping ``[start_90k, end_90k)``, ordered by start.

        An open segment counts as reaching to now; a segment that was never closed and is
        no longer open (missing) counts as the instant of its start.
        """
        if end_90k <= start_90k:
            return []
        # The first branch is bounded by the segment-length cap, so it scans only segments
        # that start within that cap before the range; the second catches the rare open
        # segment older than that (only until recovery closes it). '+' keeps the planner on
        # the small partial index of open segments there.
        sql = (
            f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE camera_id = :cam "
            "AND start_90k < :end AND start_90k > :start - :cap "
            "AND (end_90k > :start OR (end_90k IS NULL AND (state = 'open' "
            "OR start_90k >= :start))) "
            f"UNION ALL SELECT {SEGMENT_COLUMNS} FROM segment WHERE state = 'open' "
            "AND +camera_id = :cam AND +start_90k <= :start - :cap "
            "ORDER BY start_90k, id"
        )
        params = {"cam": camera_id, "start": start_90k, "end": end_90k, "cap": MAX_SEGMENT_90K}
        async with self._read(f"segments({camera_id})", sql, params) as cur:
            rows = await cur.fetchall()
        return [segment_row(r) for r in rows]

    async def gaps(self, camera_id: str, start_90k: int, end_90k: int) -> list[Gap]:
        """Stretches of ``[start_90k, end_90k)`` no run covers, each with the reason the run
        before it ended. Time before the camera's first run is not a gap (nothing ended);
        time after the last ended run up to ``end_90k`` is one. Gaps are cut to the range; one
        cut at ``end_90k`` has ``next_run_id`` None even if a run starts later.
        """
        if end_90k <= start_90k:
            return []
        # One statement, so one snapshot: the runs in the range plus the last one before it.
        sql = (
            f"SELECT {RUN_COLUMNS} FROM run WHERE camera_id = :cam AND start_90k < :end "
            "AND (end_90k IS NULL OR end_90k > :start) "
            f"UNION ALL SELECT * FROM (SELECT {RUN_COLUMNS} FROM run WHERE camera_id = :cam "
            "AND end_90k <= :start ORDER BY end_90k DESC, id DESC LIMIT 1)"
        )
        params = {"cam": camera_id, "start": start_90k, "end": end_90k}
        async with self._read(f"gaps({camera_id})", sql, params) as cur:
            runs = [run_row(r) for r in await cur.fetchall()]
        return derive_gaps(camera_id, start_90k, end_90k, runs)

    async def segment_fragments(self, segment_id: int) -> tuple[Fragment, ...]:
        """The segment's fragment map; empty while the segment is open."""
        found = await self.segments_fragments([segment_id])
        if segment_id not in found:
            what = f"segment_fragments(segment {segment_id})"
            raise StorageError(f"index {self._path}: {what}: no such segment")
        return found[segment_id]

    async def segments_fragments(
        self, segment_ids: Sequence[int]
    ) -> dict[int, tuple[Fragment, ...]]:
        """The fragment maps of many segments, in one query per 500 (a clip of an hour needs
        61): each id that has a row maps to its map (empty while the segment is open); an id
        without a row is left out."""
        ids = list(segment_ids)
        found: dict[int, tuple[Fragment, ...]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            sql = f"SELECT id, fragments FROM segment WHERE id IN ({','.join('?' * len(chunk))})"
            for segment_id, blob in await self._fetchall("segments_fragments", sql, chunk):
                try:
                    found[segment_id] = () if blob is None else decode_fragments(blob)
                except StorageError as e:
                    what = f"segments_fragments(segment {segment_id})"
                    raise StorageError(f"index {self._path}: {what}: {e}") from e
        return found

    async def segments_after(self, after_id: int, limit: int) -> list[SegmentRow]:
        """Up to ``limit`` segments of every state with id above ``after_id``, by id: the
        whole table a page at a time (``nvr check``)."""
        sql = f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE id > ? ORDER BY id LIMIT ?"
        rows = await self._fetchall("segments_after", sql, (after_id, limit))
        return [segment_row(r) for r in rows]

    async def segment_states(self, rel_paths: Sequence[str]) -> dict[str, SegmentState]:
        """The state of the segment at each of ``rel_paths`` that has a row."""
        paths = list(rel_paths)
        found: dict[str, SegmentState] = {}
        for i in range(0, len(paths), 500):
            chunk = paths[i : i + 500]
            sql = f"SELECT path, state FROM segment WHERE path IN ({','.join('?' * len(chunk))})"
            for path, state in await self._fetchall("segment_states", sql, chunk):
                found[path] = SegmentState(state)
        return found


def _settle(task: asyncio.Future[Any]) -> None:
    """Mark a write's exception as seen; the awaiting caller (if any) still gets it."""
    if not task.cancelled():
        task.exception()


def _translate(e: sqlite3.Error, context: str) -> StorageError:
    """The one place sqlite3 errors become ours; a full disk gets its own type."""
    code = getattr(e, "sqlite_errorcode", None)
    full = code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    return (StorageFullError if full else StorageError)(f"{context}: {e}")
