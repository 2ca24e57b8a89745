"""What the index's queries return: run, segment, gap, token and export rows, and how gaps are
derived.

Pure: the row types, the column lists the queries select, the tuple-to-row conversions, and
``derive_gaps`` over a snapshot of runs. ``index.Index`` runs the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nvr.storage.model import RunEndReason, SegmentState


@dataclass(frozen=True, slots=True)
class CameraRow:
    id: str
    name: str
    source: str  # the stream URL without its password, or a file path
    onvif_serial: str | None  # the ONVIF identity, once read
    onvif_mac: str | None
    onvif_manufacturer: str | None
    onvif_model: str | None


@dataclass(frozen=True, slots=True)
class HoldRow:
    id: str  # 16 lower-case hex digits
    case_ref: str
    reason: str
    start_90k: int
    end_90k: int  # exclusive
    until_90k: int | None  # lapses then; None: until released
    created_90k: int
    created_by: str
    released_90k: int | None  # None while it holds
    released_by: str | None
    export_id: str | None  # the export that placed it
    cameras: tuple[str, ...] = ()

    def active(self, now_90k: int) -> bool:
        return self.released_90k is None and (self.until_90k is None or self.until_90k > now_90k)


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


@dataclass(frozen=True, slots=True)
class TokenRow:
    """An API token, without its hash (that never leaves the index)."""

    id: int
    name: str
    role: str  # 'viewer', 'operator' or 'admin'
    created_90k: int
    last_used_90k: int | None  # None until first used; refreshed at most once a minute
    revoked_90k: int | None  # None while valid


class ExportState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ExportRow:
    id: str  # 16 lower-case hex digits
    camera_id: str
    start_90k: int
    end_90k: int  # exclusive
    reason: str
    requested_by: str
    token_name: str | None  # the API token that asked; None from the CLI
    hold: bool  # keep the covered recording from retention
    state: ExportState
    error: str | None  # set exactly when failed
    size_bytes: int | None  # set exactly when done
    sha256: str | None  # set exactly when done
    file_name: str  # relative to the storage root, '/'-separated
    created_90k: int
    started_90k: int | None
    finished_90k: int | None  # set once done or failed


CAMERA_COLUMNS = (
    "id, name, source, onvif_serial, onvif_mac, onvif_manufacturer, onvif_model"
)
RUN_COLUMNS = (
    "id, camera_id, start_90k, end_90k, end_reason, end_detail, clock_offset_ns, "
    "video_codec, width, height, audio_codec"
)
SEGMENT_COLUMNS = (
    "id, run_id, camera_id, path, state, start_90k, end_90k, media_duration_90k, bytes, "
    "video_frames, sha256, created_90k, closed_90k"
)

TOKEN_COLUMNS = "id, name, role, created_90k, last_used_90k, revoked_90k"
EXPORT_COLUMNS = (
    "id, camera_id, start_90k, end_90k, reason, requested_by, token_name, hold, state, error, "
    "size_bytes, sha256, file_name, created_90k, started_90k, finished_90k"
)


def run_row(r: Any) -> RunRow:
    reason = None if r[4] is None else RunEndReason(r[4])
    return RunRow(r[0], r[1], r[2], r[3], reason, r[5], r[6], r[7], r[8], r[9], r[10])


def segment_row(r: Any) -> SegmentRow:
    return SegmentRow(
        r[0], r[1], r[2], r[3], SegmentState(r[4]), r[5], r[6], r[7], r[8], r[9], r[10], r[11],
        r[12],
    )


def token_row(r: Any) -> TokenRow:
    return TokenRow(r[0], r[1], r[2], r[3], r[4], r[5])


def export_row(r: Any) -> ExportRow:
    return ExportRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), ExportState(r[8]), r[9], r[10],
        r[11], r[12], r[13], r[14], r[15],
    )  # fmt: skip


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
