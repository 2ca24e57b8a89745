"""``nvr check``: compare the index with the storage tree (invariants I1–I4), and repair what
can be repaired without touching footage.

Three passes, each streamed so memory stays flat on an index of millions of rows:

1. **Rows**, a page at a time by id. A ``closed`` row whose file is gone should be
   ``missing`` (I3); a file whose size, or with ``hash_files`` SHA-256, differs from its row
   breaks I1. ``open`` rows are only noted: the running recorder is writing them, or a crash
   left them for start-up recovery.
2. **Tree**: every file under a camera directory (a top-level directory named like a camera
   id, so never ``_exports`` or ``_quarantine``), a batch at a time, looked up in the index by
   path. An ``.mp4`` with no row, or any other file, is outside interference (I3).
3. **Totals**: each camera's kept byte and segment totals (``camera_usage``, which its
   ``retain_bytes`` rule reads) against its closed rows, in one snapshot.
4. **Deletions**: rows in ``deleting`` at the start of the check and still at its end (at
   least ``deleting_grace_s`` later, so a running recorder's deletion in flight is not taken
   for one a crash interrupted) are stuck mid-delete (I4).

The recorder may run beside the check. What looks wrong is read again before it is reported
or repaired: a closed row whose file is gone counts only if the row is still ``closed`` after
the file was found gone (retention marks a row ``deleting`` before it unlinks), and a file
with no row only if it is still there after the lookup (a row is created before its file and
removed after it).

Repair: a file with no row is moved, never deleted, to
``_quarantine/<YYYYMMDDTHHMMSSZ>/<its path>``; a row with no file is marked ``missing``; a
stuck deletion is finished; totals that differ are counted again from the rows. A file that
differs from its row is reported and left as it is, row and file both: it is not what was
recorded, and that is evidence in itself.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from nvr.clock import Clock, SystemClock
from nvr.errors import StorageError
from nvr.storage.fsync import fsync_dir
from nvr.storage.index import Index
from nvr.storage.index_rows import SegmentRow
from nvr.storage.model import SegmentState
from nvr.storage.recovery import unlink_segment_files
from nvr.storage.recovery_file import sha256_file

QUARANTINE_DIR = "_quarantine"  # '_' is never in a camera id, so never a camera's directory
_CAMERA_DIR = re.compile(r"[a-z0-9-]+")
_ROW_PAGE = 10_000  # rows per query
_STAT_CHUNK = 2_000  # files stat'ed per thread call
_HASH_CHUNK_BYTES = 64 * 1024 * 1024  # about this much hashed per thread call
_WALK_BATCH = 1_000  # files listed per thread call


class ProblemKind(StrEnum):
    NO_FILE = "no_file"  # a closed row whose file is gone (I3: it must be 'missing')
    SIZE_DIFFERS = "size_differs"  # the file's size is not the row's (I1)
    HASH_DIFFERS = "hash_differs"  # the file's SHA-256 is not the row's (I1; --hash only)
    UNREADABLE = "unreadable"  # a file or directory that could not be read
    NO_ROW = "no_row"  # an .mp4 under a camera directory with no row (I3)
    STRAY_FILE = "stray_file"  # any other file under a camera directory (temporary, foreign)
    STUCK_DELETING = "stuck_deleting"  # a row left in 'deleting' (I4)
    USAGE_DIFFERS = "usage_differs"  # a camera's kept totals are not the sum of its rows
    OPEN = "open"  # informational: being written, or left by a crash for recovery


LABELS: dict[ProblemKind, str] = {
    ProblemKind.NO_FILE: "row with no file",
    ProblemKind.SIZE_DIFFERS: "size differs",
    ProblemKind.HASH_DIFFERS: "hash differs",
    ProblemKind.UNREADABLE: "unreadable",
    ProblemKind.NO_ROW: "file with no row",
    ProblemKind.STRAY_FILE: "stray file",
    ProblemKind.STUCK_DELETING: "stuck mid-delete",
    ProblemKind.USAGE_DIFFERS: "totals differ",
    ProblemKind.OPEN: "open",
}
INFORMATIONAL = frozenset({ProblemKind.OPEN})  # reported, never counted as a problem
_DIFFERS = "the file differs from what was recorded; file and row left as found"
_OPEN = "being written by the running recorder, or left by a crash for recovery at next start"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    path: str  # relative to the storage root, '/'-separated
    detail: str
    segment_id: int | None = None
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class CheckProgress:
    rows_checked: int
    files_seen: int  # files listed under the camera directories
    files_hashed: int
    bytes_hashed: int


@dataclass(frozen=True, slots=True)
class CheckReport:
    hashed: bool  # SHA-256 was compared (--hash)
    repair: bool  # repairs were made (--repair)
    rows_checked: int
    rows_by_state: dict[str, int]
    files_seen: int
    files_hashed: int
    bytes_hashed: int
    found: dict[ProblemKind, int]  # per kind, informational ones included
    repaired: dict[ProblemKind, int]
    problems: tuple[Problem, ...]  # the first ``max_listed``, in the order found
    quarantine: str | None  # where files were moved, relative to the root; None if none were

    @property
    def unrepaired(self) -> int:
        """Problems (informational items excluded) still there after the check."""
        return sum(
            n - self.repaired.get(kind, 0)
            for kind, n in self.found.items()
            if kind not in INFORMATIONAL
        )

    @property
    def clean(self) -> bool:
        return self.unrepaired == 0

    def as_json(self) -> dict[str, object]:
        return {
            "clean": self.clean,
            "unrepaired": self.unrepaired,
            "hashed": self.hashed,
            "repair": self.repair,
            "rows_checked": self.rows_checked,
            "rows_by_state": self.rows_by_state,
            "files_seen": self.files_seen,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "counts": {
                k.value: {"found": self.found.get(k, 0), "repaired": self.repaired.get(k, 0)}
                for k in ProblemKind
            },
            "quarantine": self.quarantine,
            "problems": [_problem_json(p) for p in self.problems],
            "problems_listed": len(self.problems),
            "problems_total": sum(self.found.values()),
        }


def _problem_json(p: Problem) -> dict[str, object]:
    return {"kind": p.kind.value, "path": p.path, "detail": p.detail,
            "segment_id": p.segment_id, "repaired": p.repaired}  # fmt: skip


# --- blocking file work (run in a thread) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Seen:
    """What was found at a closed row's path."""

    row: SegmentRow
    size: int | None  # None: no file (or unreadable, with ``error``)
    sha256: str | None  # when hashed
    error: str | None = None


def _inspect(root: Path, rows: Sequence[SegmentRow], hash_files: bool) -> list[_Seen]:
    seen = []
    for row in rows:
        path = root / row.path
        try:
            size = path.stat().st_size
            digest = sha256_file(path) if hash_files and size == row.size_bytes else None
        except FileNotFoundError:
            seen.append(_Seen(row, None, None))
        except OSError as exc:
            seen.append(_Seen(row, None, None, exc.strerror or str(exc)))
        else:
            seen.append(_Seen(row, size, digest))
    return seen


class _TreeWalk:
    """The files under the camera directories, a batch at a time, depth first, sorted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pending: list[str] | None = None  # directories still to list (a stack)

    @property
    def done(self) -> bool:
        return self.pending == []

    def next_batch(self, limit: int) -> tuple[list[str], list[tuple[str, str]]]:
        """Up to about ``limit`` file paths, and the directories that could not be listed."""
        if self.pending is None:
            with os.scandir(self.root) as it:
                cams = [e.name for e in it if e.is_dir(follow_symlinks=False)]
            self.pending = sorted((c for c in cams if _CAMERA_DIR.fullmatch(c)), reverse=True)
        files: list[str] = []
        errors: list[tuple[str, str]] = []
        while self.pending and len(files) < limit:
            rel = self.pending.pop()
            subdirs: list[str] = []
            try:
                with os.scandir(self.root / rel) as it:
                    for e in it:
                        child = f"{rel}/{e.name}"
                        (subdirs if e.is_dir(follow_symlinks=False) else files).append(child)
            except FileNotFoundError:
                continue  # removed while we walked
            except OSError as exc:
                errors.append((rel, exc.strerror or str(exc)))
            self.pending.extend(sorted(subdirs, reverse=True))
        return sorted(files), errors


def _sizes(root: Path, rel_paths: Sequence[str]) -> list[int | None]:
    """Each file's size, None for one that is gone."""
    out: list[int | None] = []
    for rel in rel_paths:
        try:
            out.append((root / rel).lstat().st_size)
        except FileNotFoundError:
            out.append(None)
    return out


def _quarantine(root: Path, dest: str, rel_paths: Sequence[str]) -> dict[str, str | None]:
    """Move each file to ``root/dest/<its path>``, never over a file there; the error per file
    (None when moved). Both directories are fsynced, so the move survives a crash."""
    result: dict[str, str | None] = {}
    touched: set[Path] = set()
    for rel in rel_paths:
        source, target = root / rel, root / dest / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                raise FileExistsError(f"{dest}/{rel} exists")
            os.rename(source, target)
        except OSError as exc:
            result[rel] = f"not moved: {exc.strerror or exc}"
            continue
        result[rel] = None
        touched.update((source.parent, target.parent))
    for directory in touched:
        fsync_dir(directory)
    return result


def _chunks(rows: list[SegmentRow], hash_files: bool) -> list[list[SegmentRow]]:
    """Rows in groups small enough for progress to move between them."""
    groups: list[list[SegmentRow]] = [[]]
    size = 0
    for row in rows:
        full = len(groups[-1]) >= _STAT_CHUNK or (hash_files and size >= _HASH_CHUNK_BYTES)
        if full:
            groups.append([])
            size = 0
        groups[-1].append(row)
        size += row.size_bytes or 0
    return [g for g in groups if g]


# --- the check --------------------------------------------------------------------------------


class _Check:
    def __init__(
        self,
        index: Index,
        root: Path,
        *,
        hash_files: bool,
        repair: bool,
        clock: Clock,
        on_progress: Callable[[CheckProgress], None] | None,
        max_listed: int,
        deleting_grace_s: float,
    ) -> None:
        self.index = index
        self.root = root
        self.hash_files = hash_files
        self.repair = repair
        self.clock = clock
        self.on_progress = on_progress
        self.max_listed = max_listed
        self.deleting_grace_s = deleting_grace_s
        stamp = datetime.fromtimestamp(clock.wall_ns() // 10**9, UTC)
        self.quarantine_dir = f"{QUARANTINE_DIR}/{stamp:%Y%m%dT%H%M%SZ}"
        self.quarantined = False
        self.rows_checked = self.files_seen = self.files_hashed = self.bytes_hashed = 0
        self.by_state: Counter[str] = Counter()
        self.found: Counter[ProblemKind] = Counter()
        self.fixed: Counter[ProblemKind] = Counter()
        self.problems: list[Problem] = []

    def add(self, problem: Problem) -> None:
        self.found[problem.kind] += 1
        if problem.repaired:
            self.fixed[problem.kind] += 1
        if len(self.problems) < self.max_listed:
            self.problems.append(problem)

    def progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(CheckProgress(self.rows_checked, self.files_seen,
                                           self.files_hashed, self.bytes_hashed))  # fmt: skip

    async def run(self) -> CheckReport:
        started_ns = self.clock.monotonic_ns()
        deleting_before = {s.id for s in await self.index.deleting_segments()}
        await self.rows()
        await self.tree()
        await self.usage()
        await self.deletions(deleting_before, started_ns)
        self.progress()
        return CheckReport(
            hashed=self.hash_files, repair=self.repair, rows_checked=self.rows_checked,
            rows_by_state=dict(sorted(self.by_state.items())), files_seen=self.files_seen,
            files_hashed=self.files_hashed, bytes_hashed=self.bytes_hashed,
            found=dict(self.found), repaired=dict(self.fixed), problems=tuple(self.problems),
            quarantine=self.quarantine_dir if self.quarantined else None,
        )  # fmt: skip

    # --- pass 1: rows ---

    async def rows(self) -> None:
        after_id = 0
        while page := await self.index.segments_after(after_id, _ROW_PAGE):
            after_id = page[-1].id
            for row in page:
                self.by_state[row.state.value] += 1
                if row.state is SegmentState.OPEN:
                    self.add(Problem(ProblemKind.OPEN, row.path, _OPEN, row.id))
            closed = [r for r in page if r.state is SegmentState.CLOSED]
            for chunk in _chunks(closed, self.hash_files):
                seen = await asyncio.to_thread(_inspect, self.root, chunk, self.hash_files)
                await self.judge(seen)
                self.rows_checked += len(chunk)
                self.progress()
            self.rows_checked += len(page) - len(closed)
            self.progress()

    async def judge(self, seen: list[_Seen]) -> None:
        gone = [s.row for s in seen if s.size is None and s.error is None]
        # Read again after the file was found gone: retention marks 'deleting' first.
        still = await self.index.segment_states([r.path for r in gone]) if gone else {}
        for s in seen:
            row = s.row
            if s.error is not None:
                self.add(Problem(ProblemKind.UNREADABLE, row.path, s.error, row.id))
            elif s.size is None:
                if still.get(row.path) is SegmentState.CLOSED:
                    await self.no_file(row)
            elif s.size != row.size_bytes:
                detail = f"the file has {s.size} bytes, the row {row.size_bytes}: {_DIFFERS}"
                self.add(Problem(ProblemKind.SIZE_DIFFERS, row.path, detail, row.id))
            elif s.sha256 is not None:
                self.files_hashed += 1
                self.bytes_hashed += s.size
                if s.sha256 != row.sha256:
                    detail = f"SHA-256 {s.sha256}, the row {row.sha256}: {_DIFFERS}"
                    self.add(Problem(ProblemKind.HASH_DIFFERS, row.path, detail, row.id))

    async def no_file(self, row: SegmentRow) -> None:
        detail = "the row is closed but its file is gone (I3: it must be 'missing')"
        repaired = False
        if self.repair:
            try:
                await self.index.mark_segment_missing(row.id)
                repaired = True
                detail += "; marked missing"
            except StorageError:
                now = await self.index.segment_states([row.path])
                if now.get(row.path) is not SegmentState.CLOSED:
                    return  # retention took it meanwhile: nothing wrong
                raise
        self.add(Problem(ProblemKind.NO_FILE, row.path, detail, row.id, repaired))

    # --- pass 2: the tree ---

    async def tree(self) -> None:
        walk = _TreeWalk(self.root)
        while not walk.done:
            files, errors = await asyncio.to_thread(walk.next_batch, _WALK_BATCH)
            for rel, error in errors:
                self.add(Problem(ProblemKind.UNREADABLE, rel, f"cannot list: {error}"))
            self.files_seen += len(files)
            if files:
                known = await self.index.segment_states(files)
                await self.lone_files([f for f in files if f not in known])
            self.progress()

    async def lone_files(self, rel_paths: list[str]) -> None:
        if not rel_paths:
            return
        # Still there after the lookup? A row is removed only after its file is unlinked.
        sizes = await asyncio.to_thread(_sizes, self.root, rel_paths)
        lone = [(rel, n) for rel, n in zip(rel_paths, sizes, strict=True) if n is not None]
        moved: dict[str, str | None] = {}
        if self.repair and lone:
            moved = await asyncio.to_thread(
                _quarantine, self.root, self.quarantine_dir, [rel for rel, _ in lone]
            )
        for rel, size in lone:
            segment = rel.endswith(".mp4")
            kind = ProblemKind.NO_ROW if segment else ProblemKind.STRAY_FILE
            detail = (f"{size} bytes, no segment row" if segment
                      else f"{size} bytes, not a segment file")  # fmt: skip
            error = moved.get(rel, "")
            if self.repair and error is None:
                self.quarantined = True
                detail += f"; moved to {self.quarantine_dir}/{rel}"
            elif error:
                detail += f"; {error}"
            self.add(Problem(kind, rel, detail, None, self.repair and error is None))

    # --- pass 3: per-camera totals ---

    async def usage(self) -> None:
        wrong = await self.index.usage_mismatches()
        if self.repair and wrong:
            await self.index.recount_usage([w.camera_id for w in wrong])
        for w in wrong:
            detail = (f"kept {w.kept_bytes} bytes in {w.kept_segments} closed segments, the rows "
                      f"hold {w.rows_bytes} bytes in {w.rows_segments}")  # fmt: skip
            if self.repair:
                detail += "; counted again from the rows"
            self.add(Problem(ProblemKind.USAGE_DIFFERS, w.camera_id, detail, None, self.repair))

    # --- pass 4: interrupted deletions ---

    async def deletions(self, before: set[int], started_ns: int) -> None:
        stuck = [s for s in await self.index.deleting_segments() if s.id in before]
        waited_s = (self.clock.monotonic_ns() - started_ns) / 1e9
        if stuck and waited_s < self.deleting_grace_s:
            await self.clock.sleep(self.deleting_grace_s - waited_s)
            ids = {s.id for s in stuck}
            stuck = [s for s in await self.index.deleting_segments() if s.id in ids]
        if not stuck:
            return
        failed: set[str] = set()
        left: dict[str, SegmentState] = {}
        if self.repair:
            # Only these rows: one a running recorder has just marked may yet be given back.
            paths = [s.path for s in stuck]
            failed = set(await asyncio.to_thread(unlink_segment_files, self.root, paths))
            await self.index.finish_deleting([s.id for s in stuck if s.path not in failed])
            left = await self.index.segment_states(paths)
        for s in stuck:
            detail = "left in 'deleting': a deletion was interrupted (the next start finishes it)"
            repaired = self.repair and s.path not in left
            if repaired:
                detail += "; finished: file unlinked, row removed"
            elif s.path in failed:
                detail += "; not finished: the file could not be unlinked (the error is logged)"
            elif self.repair:
                detail += f"; not finished: the row is now {left[s.path]}"
            self.add(Problem(ProblemKind.STUCK_DELETING, s.path, detail, s.id, repaired))


async def check_storage(
    index: Index,
    root: Path,
    *,
    hash_files: bool = False,
    repair: bool = False,
    clock: Clock | None = None,
    on_progress: Callable[[CheckProgress], None] | None = None,
    max_listed: int = 1000,
    deleting_grace_s: float = 2.0,
) -> CheckReport:
    """Check the index at ``index`` against the tree at ``root``; with ``repair``, repair what
    can be (see the module's doc). Without it nothing is changed."""
    check = _Check(index, root, hash_files=hash_files, repair=repair, clock=clock or SystemClock(),
                   on_progress=on_progress, max_listed=max_listed,
                   deleting_grace_s=deleting_grace_s)  # fmt: skip
    return await check.run()
