"""Values shared by the segmenter, the index and recovery."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RunEndReason(StrEnum):
    """Why a run ended; the gap after it carries this reason."""

    CAMERA_CLOSED = "camera_closed"  # the camera ended the session or dropped the connection
    TIMEOUT = "timeout"  # no frame within stall_timeout_s
    ERROR = "error"  # anything else; the run's end_detail says what
    SHUTDOWN = "shutdown"  # the recorder was stopped
    CRASH = "crash"  # found open at start-up: the recorder died while recording
    CLOCK_JUMP = "clock_jump"  # RTP time stepped backwards or jumped, or wall and media time split
    DISK_FULL = "disk_full"  # storage could not take more
    WRITER_BEHIND = "writer_behind"  # the writer queue was full: disk too slow for the stream
    PARAMETERS_CHANGED = "parameters_changed"  # codec changed in a way one run cannot carry
    PACKET_LOSS = "packet_loss"  # packets lost; video resumes at the next keyframe (a new run)


class SegmentState(StrEnum):
    OPEN = "open"  # being written; see invariant I2
    CLOSED = "closed"  # size and SHA-256 match the file (I1)
    MISSING = "missing"  # the row's file is gone (I3)
    DELETING = "deleting"  # row first, then unlink, then row removal (I4)


@dataclass(frozen=True, slots=True)
class Fragment:
    """One moof+mdat pair of a segment file."""

    media_start_90k: int  # first video sample's decode time, relative to the segment's start
    byte_offset: int  # offset of the moof box in the file
    size_bytes: int  # moof + mdat
    keyframe: bool  # the fragment's first video sample is a sync sample


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """Facts about a closed (or recovered) segment file."""

    size_bytes: int
    sha256: str  # lower-case hex of the whole file
    video_frames: int
    media_duration_90k: int  # sum of the video sample durations in the file
    fragments: tuple[Fragment, ...]
