"""Facts about a segment file from its bytes, and crash recovery of one file.

Both the writer (at close) and start-up recovery derive a segment's frames, duration
and fragment index from the file itself, through the same :class:`Mp4Scanner`, so a
closed segment and a recovered one are described the same way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from nvr.errors import StorageError
from nvr.storage.model import Fragment, SegmentFile
from nvr.storage.mp4box import FragmentInfo, InitInfo, Mp4Scanner

_READ_CHUNK = 1 << 20
_RATE_90K = 90_000


def fragment_facts(
    init: InitInfo, fragments: Iterable[FragmentInfo]
) -> tuple[tuple[Fragment, ...], int, int]:
    """(fragment index, video frames, video duration in 90 kHz) of whole fragments.

    A fragment is indexed by its first video sample. A moof+mdat pair without video
    samples (only audio, which the muxer may emit when audio reaches its duration limit
    just before a video keyframe) is folded into the fragment before it, so the index
    stays a sequence of contiguous byte ranges that each start with video.
    """
    video = init.video
    if video is None:
        raise StorageError("segment file has no video track")
    out: list[Fragment] = []
    frames = duration = 0
    for frag in fragments:
        run = frag.run_for(video.track_id)
        if run is None or run.sample_count == 0:
            if not out:
                raise StorageError(f"first fragment at offset {frag.offset} has no video")
            prev = out[-1]
            out[-1] = Fragment(
                prev.media_start_90k, prev.byte_offset, frag.end - prev.byte_offset, prev.keyframe
            )
            continue
        if run.base_decode_time is None:
            start_90k = _ticks_to_90k(duration, video.timescale)
        else:
            start_90k = _ticks_to_90k(run.base_decode_time, video.timescale)
        out.append(Fragment(start_90k, frag.offset, frag.size, run.first_sample_sync))
        frames += run.sample_count
        duration += run.duration
    return tuple(out), frames, _ticks_to_90k(duration, video.timescale)


def _ticks_to_90k(ticks: int, timescale: int) -> int:
    if timescale == _RATE_90K:
        return ticks
    return ticks * _RATE_90K // timescale


def scan_file(path: Path) -> tuple[Mp4Scanner, int]:
    """Feed a whole file through a scanner; returns it and the file's size."""
    scanner = Mp4Scanner()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_READ_CHUNK):
            size += len(chunk)
            scanner.feed(chunk)
            if scanner.error is not None:
                break
    return scanner, size


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def recover_segment_file(path: Path) -> SegmentFile | None:
    """Cut a segment file left open by a crash back to its last whole fragment.

    Truncates to the end of the last complete moof+mdat pair (a complete fragment is
    never cut), fsyncs, and returns the facts of what is left. Returns None, leaving the
    file untouched, when not even ``ftyp`` and ``moov`` are complete: the caller decides
    what to do with such a file. A file that is already whole is left as it is.
    """
    try:
        scanner, size = scan_file(path)
        whole_end = scanner.whole_end
        if whole_end is None or scanner.init is None:
            return None
        if whole_end < size:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, whole_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        fragments = [f for f in scanner.fragments if f.end <= whole_end]
        index, frames, duration_90k = fragment_facts(scanner.init, fragments)
        return SegmentFile(
            size_bytes=whole_end,
            sha256=sha256_file(path),
            video_frames=frames,
            media_duration_90k=duration_90k,
            fragments=index,
        )
    except OSError as exc:
        raise StorageError(f"cannot recover segment file {path}: {exc}") from exc
