"""Retention: delete the oldest footage by rule, never held footage, and keep the disk's floor.

Everything is decided from the index, never by walking the tree. Two kinds of pass:

* **rules**, on a timer (``retention_interval_s``): per camera, segments older than
  ``retain_days`` and, oldest first, whatever makes the camera's footage exceed
  ``retain_bytes``;
* **space**, whenever free space (``statvfs``) falls below the floor plus a headroom, checked
  every ``space_check_s`` and at once when a writer reports the disk full: the oldest
  segments of every camera together, until free space is back above the floor plus twice the
  headroom, so deletion runs in batches rather than one segment at a time.

Never deleted: a segment overlapping an evidence hold in force on its camera (I5), and a
segment a reader has leased (I6); they are skipped and the next oldest is taken. When only
such segments are left and free space is under the floor, the ``StorageGate`` closes: every
camera stops recording with state ``storage_full`` and a loud log line, and recording resumes
by itself once a pass frees enough (a hold released or lapsed, or space freed by hand).

Deletion follows I4: rows to ``deleting`` in one transaction, then the unlinks (in a thread),
then the rows removed; a crash between the steps is finished at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nvr.clock import Clock
from nvr.ingest.timeline import ns_to_90k
from nvr.storage.index import Index
from nvr.storage.index_rows import SegmentRow
from nvr.storage.leases import ReaderLeases
from nvr.storage.model import SegmentState
from nvr.storage.recovery import unlink_segment_files

log = logging.getLogger(__name__)

DAY_90K = 86_400 * 90_000
_PAGE = 2000  # segments read per query while looking for candidates
_MIN_HEADROOM = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CameraRule:
    camera_id: str
    retain_days: float | None = None
    retain_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Floor:
    """Free space to keep: the larger of a byte count and a share of the filesystem."""

    min_free_bytes: int = 0
    min_free_percent: float = 0.0

    def bytes_for(self, total_bytes: int) -> int:
        return max(self.min_free_bytes, int(total_bytes * self.min_free_percent / 100))


def headroom_bytes(floor_bytes: int) -> int:
    """Margin above the floor: deletion starts under floor + headroom and stops at floor +
    2 x headroom, so the writers' few seconds between checks never reach the floor."""
    return max(floor_bytes // 10, _MIN_HEADROOM)


@dataclass(frozen=True, slots=True)
class DiskSpace:
    free_bytes: int  # available to this (unprivileged) process
    total_bytes: int


def disk_space(root: Path) -> DiskSpace:
    st = os.statvfs(root)
    return DiskSpace(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


class Protected:
    """What a pass must not delete: held ranges per camera, and leased readers."""

    def __init__(self, held: Iterable[tuple[str, int, int]], leases: ReaderLeases) -> None:
        self._held: dict[str, list[tuple[int, int]]] = {}
        for camera_id, start, end in held:
            self._held.setdefault(camera_id, []).append((start, end))
        self._leases = leases

    def why(self, seg: SegmentRow) -> str | None:
        """'held', 'leased' or None (deletable)."""
        end = seg.end_90k if seg.end_90k is not None else seg.start_90k + 1
        for start, stop in self._held.get(seg.camera_id, ()):
            if start < end and stop > seg.start_90k:
                return "held"
        if self._leases.in_use(seg.id) or self._leases.range_in_use(
            seg.camera_id, seg.start_90k, end
        ):
            return "leased"
        return None


def over_rules(
    oldest_first: Sequence[SegmentRow],
    rule: CameraRule,
    camera_bytes: int,
    now_90k: int,
    protected: Protected,
) -> list[SegmentRow]:
    """The segments ``rule`` deletes, oldest first (sans-IO)."""
    out: list[SegmentRow] = []
    cutoff = now_90k - int(rule.retain_days * DAY_90K) if rule.retain_days else None
    excess = camera_bytes - rule.retain_bytes if rule.retain_bytes is not None else 0
    for seg in oldest_first:
        too_old = cutoff is not None and (seg.end_90k or seg.start_90k) <= cutoff
        if not too_old and excess <= 0:
            break  # oldest first: nothing later is older, and the camera is within its size
        if protected.why(seg) is not None:
            continue
        out.append(seg)
        if seg.state is SegmentState.CLOSED:
            excess -= seg.size_bytes or 0
    return out


@dataclass(slots=True)
class PassReport:
    kind: str  # "rules" or "space"
    deleted: int = 0
    freed_bytes: int = 0
    skipped_held: int = 0
    skipped_leased: int = 0
    free_bytes: int | None = None
    floor_bytes: int | None = None


class StorageGate:
    """Open while there is room to record. Cameras wait on it; retention opens and closes it."""

    def __init__(self) -> None:
        self._ok = asyncio.Event()
        self._ok.set()
        self._full = asyncio.Event()
        self._kick = asyncio.Event()
        self.closed_count = 0  # times recording was stopped for lack of space

    @property
    def ok(self) -> bool:
        return self._ok.is_set()

    def close(self) -> None:
        if self.ok:
            self.closed_count += 1
        self._ok.clear()
        self._full.set()

    def open(self) -> None:
        self._full.clear()
        self._ok.set()

    async def wait_ok(self) -> None:
        await self._ok.wait()

    async def wait_full(self) -> None:
        await self._full.wait()

    def report_full(self) -> None:
        """A writer hit ENOSPC: run a space pass now."""
        self._kick.set()

    async def wait_kick(self) -> None:
        await self._kick.wait()
        self._kick.clear()


@dataclass
class Retention:
    index: Index
    root: Path
    leases: ReaderLeases
    clock: Clock
    rules: Sequence[CameraRule]
    floor: Floor
    gate: StorageGate = field(default_factory=StorageGate)
    interval_s: float = 60.0
    space_check_s: float = 1.0
    space: Callable[[], DiskSpace] | None = None  # for tests; default: statvfs of the root
    deleted_total: int = 0
    freed_total: int = 0

    def _space(self) -> DiskSpace:
        return self.space() if self.space is not None else disk_space(self.root)

    async def run_forever(self) -> None:
        """Space checks every ``space_check_s`` (or at once when kicked), rules on a timer."""
        since_rules_s = self.interval_s  # a rules pass soon after start
        while True:
            try:
                await self.space_pass()
                if since_rules_s >= self.interval_s:
                    since_rules_s = 0.0
                    await self.rules_pass()
            except Exception:
                log.exception("retention pass failed; trying again in %.0f s", self.space_check_s)
            kick = asyncio.ensure_future(self.gate.wait_kick())
            nap = asyncio.ensure_future(self.clock.sleep(self.space_check_s))
            try:
                await asyncio.wait({kick, nap}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (kick, nap):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            since_rules_s += self.space_check_s

    async def _protected(self) -> Protected:
        return Protected(await self.index.held_ranges(), self.leases)

    async def rules_pass(self) -> PassReport:
        report = PassReport("rules")
        now_90k = ns_to_90k(self.clock.wall_ns())
        protected = await self._protected()
        for rule in self.rules:
            if rule.retain_days is None and rule.retain_bytes is None:
                continue
            usage = 0
            if rule.retain_bytes is not None:
                usage = await self.index.closed_bytes(rule.camera_id)
            if rule.retain_days is not None:  # rows of lost files age out too
                cutoff = now_90k - int(rule.retain_days * DAY_90K)
                lost = await self.index.old_missing_segments(rule.camera_id, cutoff)
                await self._delete([s for s in lost if (s.end_90k or s.start_90k) <= cutoff],
                                   report)  # fmt: skip
            after: tuple[int, int] | None = None
            while True:
                page = await self.index.oldest_segments(rule.camera_id, limit=_PAGE, after=after)
                if not page:
                    break
                doomed = over_rules(page, rule, usage, now_90k, protected)
                await self._delete(doomed, report)
                usage -= sum(s.size_bytes or 0 for s in doomed)
                if len(page) < _PAGE or len(doomed) < len(page):
                    break
                after = (page[-1].start_90k, page[-1].id)
        if report.deleted:
            log.info("retention: deleted %d segments (%.1f MB) by the age and size rules",
                     report.deleted, report.freed_bytes / 1e6)  # fmt: skip
        return report

    async def space_pass(self) -> PassReport:
        """Keep free space above the floor; close or open the gate."""
        space = await asyncio.to_thread(self._space)
        floor = self.floor.bytes_for(space.total_bytes)
        margin = headroom_bytes(floor)
        report = PassReport("space", free_bytes=space.free_bytes, floor_bytes=floor)
        if space.free_bytes >= floor + margin:
            if not self.gate.ok:
                log.warning("storage: %.1f MB free again (floor %.1f MB); recording resumes",
                            space.free_bytes / 1e6, floor / 1e6)  # fmt: skip
                self.gate.open()
            return report
        need = floor + 2 * margin - space.free_bytes
        protected = await self._protected()
        after: tuple[int, int] | None = None
        while need > 0:
            page = await self.index.oldest_segments(None, limit=_PAGE, after=after)
            if not page:
                break
            doomed: list[SegmentRow] = []
            for seg in page:
                why = protected.why(seg)
                if why == "held":
                    report.skipped_held += 1
                elif why == "leased":
                    report.skipped_leased += 1
                else:
                    doomed.append(seg)
                    need -= seg.size_bytes or 0
                    if need <= 0:
                        break
            await self._delete(doomed, report)
            after = (page[-1].start_90k, page[-1].id)
        space = await asyncio.to_thread(self._space)
        report.free_bytes = space.free_bytes
        if report.deleted:
            log.warning("storage: %.1f MB free under the floor of %.1f MB: deleted the %d "
                        "oldest segments (%.1f MB)", (space.free_bytes - report.freed_bytes) / 1e6,
                        floor / 1e6, report.deleted, report.freed_bytes / 1e6)  # fmt: skip
        if space.free_bytes < floor and self.gate.ok:
            log.error("STORAGE FULL: %.1f MB free, under the floor of %.1f MB, and only held "
                      "(%d) or in-use (%d) segments are left; recording stops on every camera "
                      "until space returns", space.free_bytes / 1e6, floor / 1e6,
                      report.skipped_held, report.skipped_leased)  # fmt: skip
            self.gate.close()
        elif space.free_bytes >= floor + margin and not self.gate.ok:
            log.warning("storage: %.1f MB free again; recording resumes", space.free_bytes / 1e6)
            self.gate.open()
        return report

    async def _delete(self, doomed: Sequence[SegmentRow], report: PassReport) -> None:
        """I4: rows to ``deleting``, unlink, rows removed. Leases are checked again between."""
        if not doomed:
            return
        marked = await self.index.begin_deleting([s.id for s in doomed])
        # A reader may have leased one of them while the rows were being marked (it planned
        # from the index before the mark): give those back.
        was_closed = {s.id for s in doomed if s.state is SegmentState.CLOSED}
        leased = [s for s in marked if s.id in was_closed and s.end_90k is not None and (
            self.leases.in_use(s.id)
            or self.leases.range_in_use(s.camera_id, s.start_90k, s.end_90k))]  # fmt: skip
        if leased:
            await self.index.cancel_deleting([s.id for s in leased])
            report.skipped_leased += len(leased)
            marked = [s for s in marked if s not in leased]
        failed = set(await asyncio.to_thread(unlink_segment_files, self.root,
                                             [s.path for s in marked]))  # fmt: skip
        done = [s for s in marked if s.path not in failed]
        await self.index.finish_deleting([s.id for s in done])
        freed = sum(s.size_bytes or 0 for s in done)
        report.deleted += len(done)
        report.freed_bytes += freed
        self.deleted_total += len(done)
        self.freed_total += freed
