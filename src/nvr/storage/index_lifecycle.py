"""The index's part in the storage lifecycle: evidence holds, retention queries, deletion (I4).

A mixin of ``Index`` (it uses the index's connections and transaction helper), kept apart so
``index.py`` stays about recording. Deletion is three steps so a crash never leaves a row
whose file may be gone without saying so: ``begin_deleting`` moves rows to ``deleting``, the
caller unlinks the files, ``finish_deleting`` removes the rows; a row left in ``deleting`` is
finished at the next start (its file is unlinked if still there) or by ``nvr check --repair``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

from nvr.errors import StorageError
from nvr.storage.index_rows import SEGMENT_COLUMNS, HoldRow, SegmentRow, segment_row

_T = TypeVar("_T")
_Db = aiosqlite.Connection
_HOLD_COLUMNS = (
    "id, case_ref, reason, start_90k, end_90k, until_90k, created_90k, created_by, "
    "released_90k, released_by, export_id"
)
_BATCH = 500  # rows per statement when a list of ids is long


def _hold_rows(rows: list[Any], cameras: list[Any]) -> list[HoldRow]:
    by_hold: dict[str, list[str]] = {}
    for hold_id, camera_id in cameras:
        by_hold.setdefault(hold_id, []).append(camera_id)
    out = []
    for hid, case_ref, reason, start, end, until, created, by, released, rel_by, export in rows:
        cams = tuple(sorted(by_hold.get(hid, ())))
        out.append(HoldRow(hid, case_ref, reason, start, end, until, created, by, released,
                           rel_by, export, cams))  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class IndexCounts:
    """Row counts the metrics show: segments and export jobs by state, holds in force."""

    segments: Mapping[str, int]  # every state; 'closed' from the per-camera totals
    exports: Mapping[str, int]
    holds_active: int
    stored: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # camera: bytes, segments


@dataclass(frozen=True, slots=True)
class UsageMismatch:
    """A camera whose kept totals (``camera_usage``) differ from its closed rows."""

    camera_id: str
    kept_bytes: int
    kept_segments: int
    rows_bytes: int
    rows_segments: int


class LifecycleQueries:
    if TYPE_CHECKING:

        async def _write(self, what: str, body: Callable[[_Db], Awaitable[_T]]) -> _T: ...

        async def _fetchall(self, what: str, sql: str, params: Sequence[object]) -> list[Any]: ...

        def _now_90k(self) -> int: ...

    # --- holds ---

    async def add_hold(
        self,
        hold_id: str,
        cameras: Sequence[str],
        start_90k: int,
        end_90k: int,
        *,
        case_ref: str,
        reason: str,
        created_by: str,
        until_90k: int | None = None,
        export_id: str | None = None,
    ) -> HoldRow:
        """Place a hold on ``cameras`` over ``[start_90k, end_90k)``."""
        if not cameras:
            raise StorageError("a hold needs at least one camera")
        now = self._now_90k()

        async def body(db: _Db) -> None:
            known = {r[0] for r in await (await db.execute(
                f"SELECT id FROM camera WHERE id IN ({','.join('?' * len(cameras))})",
                tuple(cameras))).fetchall()}  # fmt: skip
            unknown = sorted(set(cameras) - known)
            if unknown:
                raise StorageError(f"no camera with id {unknown[0]!r}")
            await db.execute(
                f"INSERT INTO hold ({_HOLD_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                (hold_id, case_ref, reason, start_90k, end_90k, until_90k, now, created_by,
                 export_id),
            )  # fmt: skip
            await db.executemany(
                "INSERT INTO hold_camera (hold_id, camera_id) VALUES (?, ?)",
                [(hold_id, c) for c in sorted(set(cameras))],
            )

        await self._write(f"add_hold({hold_id})", body)
        found = await self.hold(hold_id)
        assert found is not None
        return found

    async def hold(self, hold_id: str) -> HoldRow | None:
        rows = await self._fetchall(
            f"hold({hold_id})", f"SELECT {_HOLD_COLUMNS} FROM hold WHERE id = ?", (hold_id,)
        )
        cams = await self._fetchall(
            f"hold({hold_id})", "SELECT hold_id, camera_id FROM hold_camera WHERE hold_id = ?",
            (hold_id,),
        )  # fmt: skip
        return next(iter(_hold_rows(rows, cams)), None)

    async def holds(self, *, active_only: bool = False, limit: int = 1000) -> list[HoldRow]:
        """Holds, newest first; ``active_only``: not released and not lapsed."""
        where = ""
        params: tuple[object, ...] = (limit,)
        if active_only:
            where = "WHERE released_90k IS NULL AND (until_90k IS NULL OR until_90k > ?)"
            params = (self._now_90k(), limit)
        rows = await self._fetchall(
            "holds", f"SELECT {_HOLD_COLUMNS} FROM hold {where} "
            "ORDER BY created_90k DESC, id LIMIT ?", params)  # fmt: skip
        cams = await self._fetchall("holds", "SELECT hold_id, camera_id FROM hold_camera", ())
        return _hold_rows(rows, cams)

    async def release_hold(self, hold_id: str, released_by: str) -> bool:
        """Release a hold; False if there is no such hold or it was released already."""
        now = self._now_90k()

        async def body(db: _Db) -> bool:
            cur = await db.execute(
                "UPDATE hold SET released_90k = ?, released_by = ? "
                "WHERE id = ? AND released_90k IS NULL", (now, released_by, hold_id))  # fmt: skip
            return cur.rowcount == 1

        return await self._write(f"release_hold({hold_id})", body)

    async def held_ranges(self) -> list[tuple[str, int, int]]:
        """(camera, start, end) of every hold in force now (not released, not lapsed)."""
        sql = (
            "SELECT c.camera_id, h.start_90k, h.end_90k FROM hold AS h "
            "JOIN hold_camera AS c ON c.hold_id = h.id WHERE h.released_90k IS NULL "
            "AND (h.until_90k IS NULL OR h.until_90k > ?)"
        )
        return [tuple(r) for r in await self._fetchall("held_ranges", sql, (self._now_90k(),))]

    # --- retention ---

    async def closed_bytes(self, camera_id: str) -> int:
        """Bytes of the camera's closed segments (what its ``retain_bytes`` rule measures).

        One row of ``camera_usage``, which triggers keep equal to the sum over the camera's
        closed segments: summing the rows themselves read 2.26 GB for a year of one camera."""
        sql = "SELECT closed_bytes FROM camera_usage WHERE camera_id = ?"
        rows = await self._fetchall(f"closed_bytes({camera_id})", sql, (camera_id,))
        return int(rows[0][0]) if rows else 0

    async def usage_mismatches(self) -> list[UsageMismatch]:
        """Cameras whose ``camera_usage`` totals differ from their closed rows, in one read
        (one snapshot, so a recorder writing meanwhile cannot make a false difference).

        Reads every closed row: for ``nvr check``, never for a timer."""
        sql = (
            "WITH summed AS (SELECT camera_id, sum(bytes) AS b, count(*) AS n FROM segment "
            "WHERE state = 'closed' GROUP BY camera_id) "
            "SELECT c.id, coalesce(u.closed_bytes, 0), coalesce(u.closed_segments, 0), "
            "coalesce(s.b, 0), coalesce(s.n, 0) FROM camera AS c "
            "LEFT JOIN camera_usage AS u ON u.camera_id = c.id "
            "LEFT JOIN summed AS s ON s.camera_id = c.id "
            "WHERE coalesce(u.closed_bytes, 0) <> coalesce(s.b, 0) "
            "OR coalesce(u.closed_segments, 0) <> coalesce(s.n, 0) ORDER BY c.id"
        )
        rows = await self._fetchall("usage_mismatches", sql, ())
        return [UsageMismatch(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def recount_usage(self, camera_ids: Sequence[str]) -> None:
        """Set the cameras' ``camera_usage`` totals from their closed rows (``nvr check
        --repair``), in one write transaction."""
        ids = list(camera_ids)

        async def body(db: _Db) -> None:
            for cam in ids:
                await db.execute(
                    "INSERT INTO camera_usage (camera_id, closed_bytes, closed_segments) "
                    "SELECT ?, coalesce(sum(bytes), 0), count(*) FROM segment "
                    "WHERE camera_id = ? AND state = 'closed' "
                    "ON CONFLICT (camera_id) DO UPDATE SET "
                    "closed_bytes = excluded.closed_bytes, "
                    "closed_segments = excluded.closed_segments", (cam, cam))  # fmt: skip

        await self._write(f"recount_usage({len(ids)} cameras)", body)

    async def oldest_segments(
        self, camera_id: str | None, *, limit: int, after: tuple[int, int] | None = None
    ) -> list[SegmentRow]:
        """Closed segments oldest first (of one camera, or of all), from ``after`` (a
        (start_90k, id) already seen) on: what retention considers, in the order it goes.

        Two statements rather than one with ``camera_id = ? OR ? IS NULL``, which would keep
        SQLite from either index and scan the whole table."""
        since_start, since_id = after if after is not None else (-(2**62), -1)
        if camera_id is None:
            sql = (f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE state = 'closed' "
                   "AND (start_90k, id) > (?, ?) ORDER BY start_90k, id LIMIT ?")  # fmt: skip
            params: tuple[object, ...] = (since_start, since_id, limit)
        else:
            sql = (f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE camera_id = ? "
                   "AND (start_90k, id) > (?, ?) AND state = 'closed' "
                   "ORDER BY start_90k, id LIMIT ?")  # fmt: skip
            params = (camera_id, since_start, since_id, limit)
        rows = await self._fetchall("oldest_segments", sql, params)
        return [segment_row(r) for r in rows]

    async def old_missing_segments(self, camera_id: str, before_90k: int) -> list[SegmentRow]:
        """Rows of lost files (``missing``) that started before ``before_90k``. The repeated
        ``state <> 'closed'`` lets SQLite use the small partial index of unsettled rows, and
        the ``+`` keeps it off the (camera, start) index, which would read every old row."""
        sql = (f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE state = 'missing' "
               "AND state <> 'closed' AND +camera_id = ? AND +start_90k < ? "
               "ORDER BY +id")  # fmt: skip
        rows = await self._fetchall("old_missing_segments", sql, (camera_id, before_90k))
        return [segment_row(r) for r in rows]

    async def begin_deleting(self, segment_ids: Sequence[int]) -> list[SegmentRow]:
        """Step 1 of I4: move closed or missing rows to ``deleting``; returns those moved."""
        ids = list(segment_ids)

        async def body(db: _Db) -> list[SegmentRow]:
            moved: list[SegmentRow] = []
            for i in range(0, len(ids), _BATCH):
                chunk = ids[i : i + _BATCH]
                marks = ",".join("?" * len(chunk))
                await db.execute(
                    f"UPDATE segment SET state = 'deleting' WHERE id IN ({marks}) "
                    "AND state IN ('closed', 'missing')", chunk)  # fmt: skip
                cur = await db.execute(
                    f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE id IN ({marks}) "
                    "AND state = 'deleting'", chunk)  # fmt: skip
                moved += [segment_row(r) for r in await cur.fetchall()]
            return moved

        return await self._write(f"begin_deleting({len(ids)} segments)", body)

    async def finish_deleting(self, segment_ids: Sequence[int]) -> int:
        """Step 3 of I4: remove rows in ``deleting`` whose files are unlinked."""
        ids = list(segment_ids)

        async def body(db: _Db) -> int:
            removed = 0
            for i in range(0, len(ids), _BATCH):
                chunk = ids[i : i + _BATCH]
                cur = await db.execute(
                    f"DELETE FROM segment WHERE id IN ({','.join('?' * len(chunk))}) "
                    "AND state = 'deleting'", chunk)  # fmt: skip
                removed += cur.rowcount
            return removed

        return await self._write(f"finish_deleting({len(ids)} segments)", body)

    async def cancel_deleting(self, segment_ids: Sequence[int]) -> None:
        """Give closed rows marked ``deleting`` (files untouched) back to ``closed``."""
        ids = list(segment_ids)

        async def body(db: _Db) -> None:
            for i in range(0, len(ids), _BATCH):
                chunk = ids[i : i + _BATCH]
                await db.execute(
                    f"UPDATE segment SET state = 'closed' WHERE id IN "
                    f"({','.join('?' * len(chunk))}) AND state = 'deleting' "
                    "AND end_90k IS NOT NULL AND sha256 IS NOT NULL", chunk)  # fmt: skip

        await self._write(f"cancel_deleting({len(ids)} segments)", body)

    async def deleting_segments(self) -> list[SegmentRow]:
        """Rows a crash left between the steps of a deletion."""
        # The repeated ``state <> 'closed'`` matches the partial index of unsettled rows; without
        # it SQLite scans the whole table (50 s at a year of 16 cameras).
        sql = (f"SELECT {SEGMENT_COLUMNS} FROM segment WHERE state = 'deleting' "
               "AND state <> 'closed' ORDER BY +id")  # fmt: skip
        return [segment_row(r) for r in await self._fetchall("deleting_segments", sql, ())]

    # --- counts ---

    async def counts(self) -> IndexCounts:
        """Segments by state, each camera's stored bytes and segments, exports by state,
        holds in force.

        Closed segments are counted from the per-camera totals (``camera_usage``), never row
        by row: that read an index of millions of entries (0.4 s at a year of 16 cameras)."""
        unsettled = await self._fetchall(
            "counts",
            "SELECT state, count(*) FROM segment WHERE state <> 'closed' GROUP BY state",
            (),
        )
        usage = await self._fetchall(
            "counts", "SELECT camera_id, closed_bytes, closed_segments FROM camera_usage", ()
        )
        exports = await self._fetchall(
            "counts", "SELECT state, count(*) FROM export_job GROUP BY state", ()
        )
        holds = await self._fetchall(
            "counts",
            "SELECT count(*) FROM hold WHERE released_90k IS NULL "
            "AND (until_90k IS NULL OR until_90k > ?)",
            (self._now_90k(),),
        )
        segments = {s: int(n) for s, n in unsettled}
        stored = {str(cam): (int(b), int(n)) for cam, b, n in usage}
        segments["closed"] = sum(n for _, n in stored.values())
        return IndexCounts(segments, {s: int(n) for s, n in exports}, int(holds[0][0]), stored)
