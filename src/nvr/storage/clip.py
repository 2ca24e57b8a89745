"""Any range of a camera's recording as one MP4, assembled from the segments without re-muxing.

``plan_clip`` reads the index (segments, fragment maps, gaps) and, in a thread, each chosen
fragment's ``moof``; it returns a ``Clip``: a small header made in memory (``mp4_write``)
and the list of byte ranges of the segment files that form the ``mdat`` payload. Serving a
byte range of the clip reads just those bytes, so HTTP ``Range`` requests and exports share
one code path, and every video sample in the clip is the recorded sample byte for byte.

The clip starts at the keyframe at or before the asked start (fragments are cut at every
keyframe, so the fragment map finds it) and an edit list hides the frames before the start;
the last frame is cut at the asked end by the same edit list. Gaps (between runs, or a
segment that is missing) are skipped: the samples after a gap follow the samples before it,
and the gaps are reported, in wall time, on the ``Clip`` and in the file's metadata.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from nvr.errors import StorageError
from nvr.storage.index import Index
from nvr.storage.index_rows import SegmentRow
from nvr.storage.model import Fragment, SegmentState
from nvr.storage.mp4_samples import (
    BOX_HEAD,
    Track,
    TrackFragment,
    parse_fragment,
    parse_tracks,
)
from nvr.storage.mp4_write import Chunk, Edit, TrackLayout, clip_header
from nvr.storage.mp4box import parse_box_header

_SEAM_SLACK_90K = 900  # 10 ms: less than any frame, more than a seam's rounding
# The first read at a moof: a few hundred bytes hold a short fragment's moof (video at 25 fps
# and 0.5 s: 160 bytes). Small reads, one per fragment, are what an hour's clip waits on:
# 16 KiB reads took 4 times as long as 512-byte ones (from the page cache), 2 KiB 1.25 times.
# A file whose moofs are larger is read in larger reads after its first.
_MOOF_READ_BYTES = 512
_MOOF_READ_MAX = 64 * 1024


class NoRecordingError(StorageError):
    """Nothing playable was recorded in the asked range."""


@dataclass(frozen=True, slots=True)
class ClipGap:
    start_90k: int
    end_90k: int
    reason: str  # a run end reason, "missing" (a lost segment file) or "not_recorded"
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ClipSource:
    """A segment the clip takes samples from."""

    segment_id: int
    path: str  # relative to the storage root
    sha256: str
    size_bytes: int
    start_90k: int
    end_90k: int
    run_id: int


@dataclass(frozen=True, slots=True)
class Piece:
    path: Path
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Clip:
    camera_id: str
    asked_start_90k: int
    asked_end_90k: int
    first_frame_90k: int  # wall time of the keyframe the file's samples start with
    delivered_start_90k: int  # start of the first frame shown (at or up to a frame before the
    # asked start, or later when the range begins in a gap)
    delivered_end_90k: int  # just past the last instant shown
    shown_90k: int  # what a player shows: the delivered span minus the gaps inside it
    video_frames: int
    has_audio: bool
    gaps: tuple[ClipGap, ...]
    sources: tuple[ClipSource, ...]
    header: bytes
    pieces: tuple[Piece, ...]  # the mdat payload, in order
    size_bytes: int
    _starts: tuple[int, ...] = field(repr=False, compare=False, default=())

    def read(self, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of the clip (blocking: file reads)."""
        end = min(offset + size, self.size_bytes)
        out = bytearray()
        if offset < len(self.header):
            out += self.header[offset:end]
            offset = min(end, len(self.header))
        i = bisect.bisect_right(self._starts, offset) - 1
        while offset < end and 0 <= i < len(self.pieces):
            piece, piece_at = self.pieces[i], self._starts[i]
            skip = offset - piece_at
            n = min(piece.size - skip, end - offset)
            out += _pread(piece.path, piece.offset + skip, n)
            offset += n
            i += 1
        return bytes(out)

    def chunks(
        self, start: int = 0, end: int | None = None, size: int = 1 << 20
    ) -> Iterator[bytes]:
        """The clip's bytes from ``start`` to ``end`` in reads of at most ``size`` (blocking)."""
        stop = self.size_bytes if end is None else min(end, self.size_bytes)
        while start < stop:
            data = self.read(start, min(size, stop - start))
            yield data
            start += len(data)


def _pread(path: Path, offset: int, size: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"segment {path} cannot be read: {exc.strerror}") from exc
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    if len(data) != size:
        raise StorageError(f"segment {path} is shorter than its index says (at byte {offset})")
    return data


# --- reading the chosen fragments of one segment (blocking) --------------------------------


@dataclass(frozen=True, slots=True)
class _SegmentRead:
    row: SegmentRow
    tracks: tuple[Track, ...]
    fragments: list[list[TrackFragment]]


def _read_segment(root: Path, row: SegmentRow, frags: Sequence[Fragment]) -> _SegmentRead:
    path = root / row.path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"segment {row.path} cannot be read: {exc.strerror}") from exc
    try:
        init = os.pread(fd, frags[0].byte_offset, 0)
        pos, moov = 0, None
        while (head := parse_box_header(init, pos)) is not None and head.size:
            if head.box_type == b"moov":
                moov = init[pos + head.header_size : pos + head.size]
            pos += head.size
        if moov is None:
            raise StorageError(f"segment {row.path}: no moov before the first fragment")
        tracks = parse_tracks(moov)
        by_id = {t.track_id: t for t in tracks}
        parsed = []
        want = _MOOF_READ_BYTES
        for frag in frags:
            offset = frag.byte_offset
            data = os.pread(fd, min(want, frag.size_bytes), offset)
            size, box_type = BOX_HEAD.unpack_from(data) if len(data) >= 8 else (0, b"")
            if box_type == b"moof" and 8 <= size <= len(data):  # the common case, inline
                moof = data[8:size]
            else:
                moof = _moof_payload(fd, data, offset, row.path)
                # The moofs of one file are much alike: read the next ones whole at once.
                want = max(want, min(len(moof) + 8 + _MOOF_READ_BYTES, _MOOF_READ_MAX))
            parsed.append(parse_fragment(moof, offset, by_id))
    finally:
        os.close(fd)
    return _SegmentRead(row, tracks, parsed)


def _moof_payload(fd: int, data: bytes, offset: int, where: str) -> bytes:
    """The payload of the moof box at ``offset``, given the first bytes read there (``data``);
    its header read as ``mp4box.parse_box_header`` reads it."""
    head = parse_box_header(data)
    if head is None or head.box_type != b"moof":
        raise StorageError(f"segment {where}: no moof at byte {offset}")
    if head.size > len(data):
        data = os.pread(fd, head.size, offset)
    return data[head.header_size : head.size]


def _chosen(frags: Sequence[Fragment], rel_start_90k: int, rel_end_90k: int) -> slice:
    """Fragments from the keyframe at or before ``rel_start`` to the last starting before end."""
    first = 0
    for i, f in enumerate(frags):
        if f.media_start_90k > rel_start_90k:
            break
        if f.keyframe:
            first = i
    last = first
    for i in range(first, len(frags)):
        if frags[i].media_start_90k < rel_end_90k:
            last = i
    return slice(first, last + 1)


# --- assembling -----------------------------------------------------------------------------


@dataclass(slots=True)
class _TrackBuild:
    handler: bytes
    timescale: int
    track_id: int
    width: int = 0
    height: int = 0
    entries: list[bytes] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    sync: list[int] = field(default_factory=list)  # 1-based numbers of the sync samples
    chunks: list[Chunk] = field(default_factory=list)
    first_time: int | None = None  # clip time of the first and last sample, track timescale
    last_time: int | None = None

    def entry_index(self, entry: bytes) -> int:
        if entry not in self.entries:
            self.entries.append(entry)
        return self.entries.index(entry) + 1


def _scale(value: int, from_ts: int, to_ts: int) -> int:
    return value if from_ts == to_ts else value * to_ts // from_ts


def _track_fragment(frag: list[TrackFragment], track_id: int) -> TrackFragment | None:
    for f in frag:
        if f.track_id == track_id:
            return f
    return None


def _times(frag: TrackFragment, first: int) -> list[int]:
    """Each sample's start, counting ``first`` for the first one (track timescale)."""
    return list(accumulate(frag.durations[:-1], initial=first)) if frag.durations else []


def _extents(frag: TrackFragment, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """(file offset, size) of samples ``lo`` to ``hi`` of a fragment, one per trun they span."""
    runs = frag.runs
    for k, (first, at) in enumerate(runs):
        run_end = runs[k + 1][0] if k + 1 < len(runs) else len(frag.sizes)
        s, e = max(lo, first), min(hi, run_end)
        if s < e:
            yield at + sum(frag.sizes[first:s]), sum(frag.sizes[s:e])


class _Assembler:
    """Walks the chosen samples in order and lays out tracks, chunks and pieces."""

    def __init__(self, root: Path, start_90k: int, end_90k: int) -> None:
        self.root = root
        self.start_90k = start_90k
        self.end_90k = end_90k
        self.video = _TrackBuild(b"vide", 90_000, 1)
        self.audio: _TrackBuild | None = None
        self.order: list[tuple[int, int]] = []
        self.pieces: list[tuple[Path, int, int]] = []  # path, offset, size
        self.clip_90k = 0  # clip video time so far
        self.first_frame_90k: int | None = None
        self.start_frame_90k: int | None = None
        self.last_wall_end_90k: int | None = None
        self.spans: list[tuple[int, int]] = []  # wall spans of the samples taken, per segment

    def _piece(self, path: Path, offset: int, size: int) -> None:
        if self.pieces:
            last_path, last_offset, last_size = self.pieces[-1]
            if (last_path is path or last_path == path) and last_offset + last_size == offset:
                self.pieces[-1] = (path, last_offset, last_size + size)
                return
        self.pieces.append((path, offset, size))

    def _edge(self, frag: TrackFragment, walls: list[int]) -> tuple[int, int]:
        """The samples to take, ``[lo, hi)``, of a fragment at an edge of the range, where
        the range's start or end (or the first keyframe) falls; notes the frames found."""
        hi = bisect.bisect_left(walls, self.end_90k)
        lo = 0
        if self.first_frame_90k is None:
            sync = frag.sync
            lo = sync[0] if sync and sync[0] < hi else hi  # only from a keyframe
            if lo < hi:
                self.first_frame_90k = walls[lo]
        if lo < hi:
            on_screen = bisect.bisect_right(walls, self.start_90k, lo, hi) - 1
            if on_screen >= lo:
                self.start_frame_90k = walls[on_screen]  # the frame shown at the start
        return lo, hi

    def add_segment(self, seg: _SegmentRead) -> None:
        path = self.root / seg.row.path
        vtrack = next((t for t in seg.tracks if t.handler == b"vide"), None)
        if vtrack is None:
            raise StorageError(f"segment {seg.row.path} has no video track")
        atrack = next((t for t in seg.tracks if t.handler == b"soun"), None)
        v = self.video
        if not v.width:
            v.width, v.height = vtrack.width, vtrack.height
        v_entry = v.entry_index(vtrack.sample_entry)
        ts, row_start = vtrack.timescale, seg.row.start_90k
        seg_offset_90k: int | None = None  # clip time of the segment's media time 0
        span_start: int | None = None
        for frag in seg.fragments:
            vfrag = _track_fragment(frag, vtrack.track_id)
            if vfrag is None or not vfrag.sizes:
                continue
            sizes, ticks = vfrag.sizes, vfrag.durations
            durations = ticks if ts == 90_000 else [_scale(d, ts, 90_000) for d in ticks]
            # Wall starts of the first and last samples: a fragment inside the range is taken
            # whole, and only a fragment at an edge needs every sample's wall time.
            lo_wall = row_start + _scale(vfrag.decode_time, ts, 90_000)
            hi_wall = row_start + _scale(vfrag.decode_time + sum(ticks) - ticks[-1], ts, 90_000)
            first_number = len(v.sizes) + 1  # of the fragment's first sample in the clip
            if (self.first_frame_90k is not None and self.start_90k < lo_wall
                    and hi_wall < self.end_90k):  # fmt: skip
                lo = 0
                v.sync += map(first_number.__add__, vfrag.sync)
            else:
                starts = _times(vfrag, vfrag.decode_time)
                walls = [row_start + _scale(t, ts, 90_000) for t in starts]
                lo, hi = self._edge(vfrag, walls)
                if lo >= hi:
                    continue
                lo_wall, hi_wall = walls[lo], walls[hi - 1]
                v.sync += [first_number + i - lo for i in vfrag.sync if lo <= i < hi]
                sizes, durations = sizes[lo:hi], durations[lo:hi]
            if seg_offset_90k is None:
                seg_offset_90k = self.clip_90k - (lo_wall - row_start)
                span_start = lo_wall
            size = sum(sizes)
            v.sizes += sizes
            v.durations += durations
            # A trun's samples are contiguous in the file: one piece for all of them.
            self._piece(path, vfrag.offset_of(lo), size)
            self.clip_90k += sum(durations)
            self.last_wall_end_90k = hi_wall + durations[-1]
            self.order.append((0, len(v.chunks)))
            v.chunks.append(Chunk(len(sizes), v_entry, size))
            if atrack is not None:
                self._add_audio(path, atrack, frag, seg_offset_90k, self.clip_90k)
        if span_start is not None and self.last_wall_end_90k is not None:
            self.spans.append((span_start, self.last_wall_end_90k))

    def _add_audio(
        self,
        path: Path,
        track: Track,
        frag: list[TrackFragment],
        seg_offset_90k: int,
        clip_end_90k: int,
    ) -> None:
        afrag = _track_fragment(frag, track.track_id)
        if afrag is None or not afrag.sizes:
            return
        a = self.audio
        if a is None:
            a = self.audio = _TrackBuild(b"soun", track.timescale, 2)
        if a.timescale != track.timescale:
            return  # a different sample rate mid-clip: keep the first rate's audio only
        entry = a.entry_index(track.sample_entry)
        ts = a.timescale
        times = _times(afrag, afrag.decode_time + _scale(seg_offset_90k, 90_000, ts))
        stop = _scale(clip_end_90k, 90_000, ts)
        count = size = 0
        for lo, hi in _audio_kept(times, min(afrag.durations), stop, a.last_time):
            # A sample taken before: this one's start ends it (a gap in the audio stretches it).
            if a.last_time is not None:
                a.durations[-1] = times[lo] - a.last_time
            else:
                a.first_time = times[lo]
            a.last_time = times[hi - 1]
            a.sizes += afrag.sizes[lo:hi]
            a.durations += afrag.durations[lo:hi]
            for offset, extent in _extents(afrag, lo, hi):
                self._piece(path, offset, extent)
                size += extent
            count += hi - lo
        if count:
            self.order.append((1, len(a.chunks)))
            a.chunks.append(Chunk(count, entry, size))


def _audio_kept(
    times: list[int], shortest: int, stop: int, last: int | None
) -> list[tuple[int, int]]:
    """Stretches ``[lo, hi)`` of a fragment's audio samples to keep: those starting at or after
    clip time 0 and before ``stop`` (the clip's video end) that do not overlap the sample
    taken last (starting at ``last``), nor the one kept before them."""
    if shortest > 0:
        # The starts strictly rise, so the samples kept are one stretch.
        lo = bisect.bisect_left(times, 0 if last is None else max(0, last + 1))
        hi = bisect.bisect_left(times, stop)
        return [(lo, hi)] if lo < hi else []
    out: list[tuple[int, int]] = []
    for i, at in enumerate(times):
        if at < 0 or at >= stop or (last is not None and at <= last):
            continue
        last = at
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _gaps(
    spans: list[tuple[int, int]], start_90k: int, end_90k: int, known: Sequence[ClipGap]
) -> tuple[ClipGap, ...]:
    """The stretches of [start, end) no taken sample covers, with the reasons the index knows."""
    holes = []
    at = start_90k
    for s, e in spans:
        if s > at:
            holes.append((at, s))
        at = max(at, e)
    if at < end_90k:
        holes.append((at, end_90k))
    out = []
    for s, e in holes:
        why = next((g for g in known if g.start_90k < e and g.end_90k > s), None)
        if why is None and e - s < _SEAM_SLACK_90K:
            continue  # segments of one run that meet to within rounding: no gap

        reason, detail = (why.reason, why.detail) if why else ("not_recorded", None)
        out.append(ClipGap(s, e, reason, detail))
    return tuple(out)


class ClipCache:
    """The last few clips planned, for the run of ``Range`` requests a player makes while it
    seeks in one URL. A hit needs the same range over the same closed segments (checked
    against the index on every request), and closed segments never change, so a hit is
    always the bytes a fresh plan would give."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._clips: OrderedDict[tuple[object, ...], Clip] = OrderedDict()

    def get(self, key: tuple[object, ...]) -> Clip | None:
        clip = self._clips.get(key)
        if clip is not None:
            self._clips.move_to_end(key)
        return clip

    def put(self, key: tuple[object, ...], clip: Clip) -> None:
        self._clips[key] = clip
        self._clips.move_to_end(key)
        while len(self._clips) > self._size:
            self._clips.popitem(last=False)


async def plan_clip(
    index: Index,
    root: Path,
    camera_id: str,
    start_90k: int,
    end_90k: int,
    *,
    cache: ClipCache | None = None,
) -> Clip:
    """Plan the MP4 of ``[start_90k, end_90k)``; raises ``NoRecordingError`` when empty."""
    rows = await index.segments(camera_id, start_90k, end_90k)
    known = [ClipGap(g.start_90k, g.end_90k, g.reason.value, g.detail)
             for g in await index.gaps(camera_id, start_90k, end_90k)]  # fmt: skip
    for r in rows:
        if r.state is SegmentState.MISSING and r.end_90k is not None:
            known.append(ClipGap(r.start_90k, r.end_90k, "missing", f"segment {r.path} is lost"))
    closed = [
        r for r in rows
        if r.state is SegmentState.CLOSED and r.end_90k is not None and r.end_90k > start_90k
    ]  # fmt: skip
    maps = await index.segments_fragments([r.id for r in closed])  # one query, not one each
    chosen: list[tuple[SegmentRow, list[Fragment]]] = []
    for r in closed:
        frags = maps.get(r.id)
        if frags is None:  # deleted since the query above
            raise StorageError(f"index: segment_fragments(segment {r.id}): no such segment")
        if frags:
            cut = _chosen(frags, start_90k - r.start_90k, end_90k - r.start_90k)
            chosen.append((r, list(frags[cut])))
    if not chosen:
        raise NoRecordingError(f"camera {camera_id}: nothing was recorded in the asked range")
    key = (camera_id, start_90k, end_90k, tuple((r.id, r.sha256) for r, _ in chosen),
           tuple(known))  # fmt: skip
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    clip = await asyncio.to_thread(_assemble, root, camera_id, start_90k, end_90k, chosen, known)
    if cache is not None:
        cache.put(key, clip)
    return clip


def _assemble(  # noqa: PLR0917  (one private call site)
    root: Path,
    camera_id: str,
    start_90k: int,
    end_90k: int,
    chosen: list[tuple[SegmentRow, list[Fragment]]],
    known: Sequence[ClipGap],
) -> Clip:
    asm = _Assembler(root, start_90k, end_90k)
    sources = []
    for row, frags in chosen:
        before = len(asm.video.sizes)
        asm.add_segment(_read_segment(root, row, frags))
        if len(asm.video.sizes) > before:
            assert row.sha256 is not None and row.size_bytes is not None and row.end_90k
            sources.append(ClipSource(row.id, row.path, row.sha256, row.size_bytes,
                                      row.start_90k, row.end_90k, row.run_id))  # fmt: skip
    first = asm.first_frame_90k
    last_end = asm.last_wall_end_90k
    if first is None or last_end is None:
        raise NoRecordingError(f"camera {camera_id}: nothing was recorded in the asked range")
    v = asm.video
    # The edit list starts the picture at the frame on screen at the asked start (players drop
    # a frame that begins before the edit, so starting mid-frame would skip that frame).
    shown_from = asm.start_frame_90k if asm.start_frame_90k is not None else first
    skip_90k = shown_from - first  # frames before it, decoded but hidden
    trim_90k = max(0, last_end - end_90k)  # the last frame's overhang past the asked end
    shown_90k = asm.clip_90k - skip_90k - trim_90k
    gaps = _gaps(asm.spans, shown_from, end_90k, known)
    delivered_start = shown_from
    delivered_end = min(end_90k, last_end)
    meta = {
        "camera": camera_id,
        "asked": [start_90k, end_90k],
        "delivered": [delivered_start, delivered_end],
        "gaps": [[g.start_90k, g.end_90k, g.reason] for g in gaps],
        "segments": [[s.segment_id, s.sha256] for s in sources],
        "time_unit": "1/90000 s since 1970-01-01T00:00:00Z",
    }
    tracks = [TrackLayout(1, b"vide", 90_000, tuple(v.entries), v.sizes, v.durations, v.sync,
                          v.chunks, (Edit(shown_90k, skip_90k),), v.width, v.height)]  # fmt: skip
    a = asm.audio
    if a is not None and a.first_time is not None:
        ts = a.timescale
        show_at = _scale(skip_90k, 90_000, ts)  # clip audio time of the first shown instant
        edits: tuple[Edit, ...]
        if a.first_time <= show_at:
            edits = (Edit(shown_90k, show_at - a.first_time),)
        else:
            lead_90k = min(shown_90k, _scale(a.first_time - show_at, ts, 90_000))
            edits = (Edit(lead_90k, -1), Edit(shown_90k - lead_90k, 0))
        tracks.append(TrackLayout(2, b"soun", ts, tuple(a.entries), a.sizes, a.durations, None,
                                  a.chunks, edits))  # fmt: skip
    else:
        asm.order = [o for o in asm.order if o[0] == 0]
    header, payload = clip_header(
        tracks, asm.order, created_unix_s=delivered_start // 90_000,
        tags=[(b"\xa9nam", f"{camera_id} {delivered_start // 90_000}"),
              (b"\xa9cmt", json.dumps(meta, separators=(",", ":")))],
    )  # fmt: skip
    pieces = tuple(Piece(path, offset, size) for path, offset, size in asm.pieces)
    starts, at = [], len(header)
    for p in pieces:
        starts.append(at)
        at += p.size
    if at != len(header) + payload:
        raise StorageError("clip layout: pieces and chunks disagree")  # a bug, not bad input
    return Clip(
        camera_id, start_90k, end_90k, first, delivered_start, delivered_end, shown_90k,
        len(v.sizes), len(tracks) > 1, gaps, tuple(sources), header, pieces, at,
        tuple(starts),
    )  # fmt: skip
