"""What the index's queries return: run, segment and gap rows, and how gaps are derived.

Pure: the row types, the column lists the queries select, the tuple-to-row conversions, and
``derive_gaps`` over a snapshot of runs. ``index.Index`` runs the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nvr.storage.model import RunEndReason, SegmentState


@dataclass(frozen=True, slots=True)
class RunRow:
    id: int
    camera_id: str
    start_90k: int
    end_90k: int | None  # None while recording
    end_reason: RunEndReason | None  # None while recording
    end_detail: str | None
    clock_offset_ns: int | None  # camera clock minus NVR clock
    video_codec: str
    width: int | None
    height: int | None
    audio_codec: str | None


@dataclass(frozen=True, slots=True)
class SegmentRow:
    id: int
    run_id: int
    camera_id: str
    path: str  # relative to the storage root, '/'-separated
    state: SegmentState
    start_90k: int
    end_90k: int | None  # the facts from here to closed_90k are None until closed
    media_duration_90k: int | None
    size_bytes: int | None
    video_frames: int | None
    sha256: str | None
    created_90k: int
    closed_90k: int | None


@dataclass(frozen=True, slots=True)
class Gap:
    """Time in a query range not covered by any run, after a run that ended."""

    camera_id: str
    start_90k: int
    end_90k: int
    reason: RunEndReason  # why the run before the gap ended
    detail: str | None
    prev_run_id: int
    next_run_id: int | None  # the run that ends the gap; None when the gap reaches the range end


RUN_COLUMNS = (
    "id, camera_id, start_90k, end_90k, end_reason, end_detail, clock_offset_ns, "
    "video_codec, width, height, audio_codec"
)
SEGMENT_COLUMNS = (
    "id, run_id, camera_id, path, state, start_90k, end_90k, media_duration_90k, bytes, "
    "video_frames, sha256, created_90k, closed_90k"
)


def run_row(r: Any) -> RunRow:
    reason = None if r[4] is None else RunEndReason(r[4])
    return RunRow(r[0], r[1], r[2], r[3], reason, r[5], r[6], r[7], r[8], r[9], r[10])


def segment_row(r: Any) -> SegmentRow:
    return SegmentRow(
        r[0], r[1], r[2], r[3], SegmentState(r[4]), r[5], r[6], r[7], r[8], r[9], r[10], r[11],
        r[12],
    )


def derive_gaps(camera_id: str, start_90k: int, end_90k: int, runs: list[RunRow]) -> list[Gap]:
    """``runs``: those overlapping the range, plus at most one that ended at or before it."""
    before = [r for r in runs if r.end_90k is not None and r.end_90k <= start_90k]
    inside = sorted((r for r in runs if r not in before), key=lambda r: (r.start_90k, r.id))
    prev = before[0] if before else None  # the run whose end is the latest so far
    covered_to = start_90k  # everything before this is covered by a run or is not a gap
    gaps: list[Gap] = []
    for r in inside:
        if r.start_90k > covered_to and prev is not None:
            gaps.append(_gap(camera_id, covered_to, r.start_90k, prev, r.id))
        if r.end_90k is None:
            return gaps  # still recording: nothing after this is a gap
        if r.end_90k > covered_to:
            covered_to = r.end_90k
            prev = r
    if prev is not None and covered_to < end_90k:
        gaps.append(_gap(camera_id, covered_to, end_90k, prev, None))
    return gaps


def _gap(camera_id: str, start_90k: int, end_90k: int, prev: RunRow, next_id: int | None) -> Gap:
    assert prev.end_reason is not None
    return Gap(camera_id, start_90k, end_90k, prev.end_reason, prev.end_detail, prev.id, next_id)
