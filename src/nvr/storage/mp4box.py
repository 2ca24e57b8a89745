"""Sans-IO reader of fragmented MP4 files as our segmenter writes them.

Two uses share one scanner:

* while a segment is written, every byte the muxer hands to the file is also fed here,
  so the writer knows where each ``moof`` starts and where its ``mdat`` ends;
* after a crash, the file on disk is fed here chunk by chunk to find the end of the
  last whole fragment (see :func:`last_whole_fragment_end`).

Only top-level boxes are framed. ``moov`` and ``moof`` are kept in memory (they are small)
and parsed; ``mdat`` payloads are counted, never buffered. From ``moov`` we take each
track's id, handler and timescale and the ``trex`` defaults; from ``moof`` the video
track's ``tfdt`` decode time, sample count, sample durations and whether the first sample
is a sync sample. That is enough to know a file's frames and duration without a demuxer.

Box layouts follow ISO/IEC 14496-12 (``moov``/``trak``/``mdia``/``mdhd``/``hdlr``,
``mvex``/``trex``, ``moof``/``mfhd``/``traf``/``tfhd``/``tfdt``/``trun``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nvr.errors import StorageError

# Boxes we keep whole in memory; anything else is skipped by size.
_BUFFERED = frozenset({b"ftyp", b"moov", b"moof"})
# A moov or moof larger than this is not one of ours; refuse rather than buffer it.
_MAX_BUFFERED_BOX = 64 * 1024 * 1024

# tfhd flags
_TFHD_BASE_DATA_OFFSET = 0x000001
_TFHD_SAMPLE_DESCRIPTION_INDEX = 0x000002
_TFHD_DEFAULT_DURATION = 0x000008
_TFHD_DEFAULT_SIZE = 0x000010
_TFHD_DEFAULT_FLAGS = 0x000020
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
# trun flags
_TRUN_DATA_OFFSET = 0x000001
_TRUN_FIRST_SAMPLE_FLAGS = 0x000004
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTS = 0x000800
# sample_flags: sample_is_non_sync_sample
_SAMPLE_NON_SYNC = 0x00010000


class Mp4FormatError(StorageError):
    """The bytes are not a fragmented MP4 of the shape we write."""


@dataclass(frozen=True, slots=True)
class BoxHeader:
    """One box's header: where it starts, how long the header is, the whole box's size."""

    box_type: bytes  # four bytes, e.g. b"moof"
    offset: int  # of the box's first byte in the stream
    header_size: int  # 8, or 16 with a 64-bit size
    size: int  # whole box including the header; 0 means "to the end of the file"


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What ``moov`` says about one track."""

    track_id: int
    handler: bytes  # b"vide", b"soun", ...
    timescale: int  # ticks per second of the track's media time
    default_sample_duration: int  # from trex, used when tfhd/trun give none
    default_sample_flags: int  # from trex


@dataclass(frozen=True, slots=True)
class InitInfo:
    """The tracks of a file, from its ``moov``."""

    tracks: tuple[TrackInfo, ...]

    @property
    def video(self) -> TrackInfo | None:
        return next((t for t in self.tracks if t.handler == b"vide"), None)


@dataclass(frozen=True, slots=True)
class TrackRun:
    """One track's samples in one ``moof`` (all of its ``trun`` boxes together)."""

    track_id: int
    base_decode_time: int | None  # tfdt, in the track's timescale; None without tfdt
    sample_count: int
    duration: int  # sum of the sample durations, track timescale
    first_sample_sync: bool  # False also when the run is empty
    data_start: int | None  # absolute file offset of the first sample byte, when known
    data_size: int | None  # sum of sample sizes, when every size is known


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    """One whole ``moof`` + ``mdat`` pair."""

    offset: int  # of the moof box
    size: int  # moof + mdat, bytes
    sequence: int  # mfhd sequence number
    runs: tuple[TrackRun, ...]

    @property
    def end(self) -> int:
        return self.offset + self.size

    def run_for(self, track_id: int) -> TrackRun | None:
        return next((r for r in self.runs if r.track_id == track_id), None)


def parse_box_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> BoxHeader | None:
    """Read the header of the box at ``buf[offset:]``; None when more bytes are needed."""
    avail = len(buf) - offset
    if avail < 8:
        return None
    size32, box_type = struct.unpack_from(">I4s", buf, offset)
    if size32 == 1:
        if avail < 16:
            return None
        (size,) = struct.unpack_from(">Q", buf, offset + 8)
        header_size = 16
    else:
        size, header_size = size32, 8
    if size != 0 and size < header_size:
        raise Mp4FormatError(
            f"box {bytes(box_type)!r} at offset {offset} has size {size} "
            f"smaller than its {header_size}-byte header"
        )
    return BoxHeader(bytes(box_type), offset, header_size, size)


def _children(payload: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """Split a container box's payload into (type, payload) pairs."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(payload):
        head = parse_box_header(payload, pos)
        if head is None:
            raise Mp4FormatError(f"truncated box header inside {where} at +{pos}")
        size = head.size or len(payload) - pos
        if pos + size > len(payload):
            raise Mp4FormatError(
                f"box {head.box_type!r} inside {where} at +{pos} overruns its parent "
                f"({size} > {len(payload) - pos})"
            )
        out.append((head.box_type, payload[pos + head.header_size : pos + size]))
        pos += size
    return out


def _full_box(payload: bytes, where: str) -> tuple[int, int]:
    if len(payload) < 4:
        raise Mp4FormatError(f"{where} is too short for a full box header")
    word: int = struct.unpack_from(">I", payload)[0]
    return word >> 24, word & 0xFFFFFF


def _need(payload: bytes, end: int, where: str) -> None:
    if len(payload) < end:
        raise Mp4FormatError(f"{where} is truncated: {len(payload)} bytes, needs {end}")


def parse_moov(payload: bytes) -> InitInfo:
    """Tracks and their fragment defaults from a ``moov`` payload (without its header)."""
    traks: list[tuple[int, bytes, int]] = []
    trex: dict[int, tuple[int, int]] = {}
    for box_type, body in _children(payload, "moov"):
        if box_type == b"trak":
            traks.append(_parse_trak(body))
        elif box_type == b"mvex":
            for sub_type, sub in _children(body, "mvex"):
                if sub_type == b"trex":
                    _need(sub, 24, "trex")
                    track_id, _desc, duration, _size, flags = struct.unpack_from(">5I", sub, 4)
                    trex[track_id] = (duration, flags)
    tracks = tuple(
        TrackInfo(tid, handler, timescale, *trex.get(tid, (0, 0)))
        for tid, handler, timescale in traks
    )
    return InitInfo(tracks)


def _parse_trak(body: bytes) -> tuple[int, bytes, int]:
    track_id = timescale = 0
    handler = b"\0\0\0\0"
    for box_type, sub in _children(body, "trak"):
        if box_type == b"tkhd":
            version, _ = _full_box(sub, "tkhd")
            at = 20 if version == 1 else 12
            _need(sub, at + 4, "tkhd")
            (track_id,) = struct.unpack_from(">I", sub, at)
        elif box_type == b"mdia":
            for mdia_type, mdia in _children(sub, "mdia"):
                if mdia_type == b"mdhd":
                    version, _ = _full_box(mdia, "mdhd")
                    at = 20 if version == 1 else 12
                    _need(mdia, at + 4, "mdhd")
                    (timescale,) = struct.unpack_from(">I", mdia, at)
                elif mdia_type == b"hdlr":
                    _need(mdia, 12, "hdlr")
                    handler = mdia[8:12]
    if track_id == 0 or timescale == 0:
        raise Mp4FormatError(f"trak without track id or timescale (id {track_id})")
    return track_id, handler, timescale


def parse_moof(payload: bytes, offset: int, init: InitInfo) -> tuple[int, tuple[TrackRun, ...]]:
    """Sequence number and per-track runs from a ``moof`` payload.

    ``offset`` is the file offset of the moof box itself (data offsets are relative to it
    under ``default-base-is-moof``).
    """
    sequence = 0
    runs: list[TrackRun] = []
    by_id = {t.track_id: t for t in init.tracks}
    for box_type, body in _children(payload, "moof"):
        if box_type == b"mfhd":
            _need(body, 8, "mfhd")
            (sequence,) = struct.unpack_from(">I", body, 4)
        elif box_type == b"traf":
            runs.append(_parse_traf(body, offset, by_id))
    return sequence, tuple(runs)


@dataclass(frozen=True, slots=True)
class TrackFragmentHeader:
    """A ``tfhd``: the track, where its sample data is counted from, and the defaults it sets
    (None where it sets none and the ``trex`` default applies)."""

    track_id: int
    base_offset: int | None  # absolute file offset data offsets count from, when known
    default_duration: int | None
    default_size: int | None
    default_flags: int | None


def parse_tfhd(traf_children: list[tuple[bytes, bytes]], moof_offset: int) -> TrackFragmentHeader:
    """The ``tfhd`` among a ``traf``'s children (the ``moof`` box starts at ``moof_offset``)."""
    tfhd = next((b for t, b in traf_children if t == b"tfhd"), None)
    if tfhd is None:
        raise Mp4FormatError(f"traf without tfhd in moof at offset {moof_offset}")
    _, flags = _full_box(tfhd, "tfhd")
    _need(tfhd, 8, "tfhd")
    (track_id,) = struct.unpack_from(">I", tfhd, 4)
    pos = 8
    base = moof_offset if flags & _TFHD_DEFAULT_BASE_IS_MOOF else None
    if flags & _TFHD_BASE_DATA_OFFSET:
        _need(tfhd, pos + 8, "tfhd")
        (base,) = struct.unpack_from(">Q", tfhd, pos)
        pos += 8
    if flags & _TFHD_SAMPLE_DESCRIPTION_INDEX:
        pos += 4
    defaults: list[int | None] = []
    for flag in (_TFHD_DEFAULT_DURATION, _TFHD_DEFAULT_SIZE, _TFHD_DEFAULT_FLAGS):
        value = None
        if flags & flag:
            _need(tfhd, pos + 4, "tfhd")
            (value,) = struct.unpack_from(">I", tfhd, pos)
            pos += 4
        defaults.append(value)
    return TrackFragmentHeader(track_id, base, *defaults)


def _parse_traf(body: bytes, moof_offset: int, tracks: dict[int, TrackInfo]) -> TrackRun:
    children = _children(body, "traf")
    head = parse_tfhd(children, moof_offset)
    track_id = head.track_id
    track = tracks.get(track_id)
    if track is None:
        raise Mp4FormatError(f"traf for track {track_id} not declared in moov")
    base = head.base_offset
    default_duration = (head.default_duration if head.default_duration is not None
                        else track.default_sample_duration)  # fmt: skip
    default_size = head.default_size
    default_flags = (head.default_flags if head.default_flags is not None
                     else track.default_sample_flags)  # fmt: skip

    decode_time: int | None = None
    count = duration = 0
    first_sync: bool | None = None
    data_start: int | None = None
    data_size: int | None = 0
    for box_type, box in children:
        if box_type == b"tfdt":
            version, _ = _full_box(box, "tfdt")
            if version == 1:
                _need(box, 12, "tfdt")
                (decode_time,) = struct.unpack_from(">Q", box, 4)
            else:
                _need(box, 8, "tfdt")
                (decode_time,) = struct.unpack_from(">I", box, 4)
        elif box_type == b"trun":
            run = _parse_trun(box, default_duration, default_size, default_flags)
            n, run_duration, run_first_flags, run_offset, run_size = run
            if first_sync is None and n > 0:
                first_sync = not run_first_flags & _SAMPLE_NON_SYNC
            if data_start is None and run_offset is not None and base is not None and n > 0:
                data_start = base + run_offset
            data_size = None if data_size is None or run_size is None else data_size + run_size
            count += n
            duration += run_duration
    return TrackRun(
        track_id=track_id,
        base_decode_time=decode_time,
        sample_count=count,
        duration=duration,
        first_sample_sync=bool(first_sync),
        data_start=data_start,
        data_size=data_size if count else 0,
    )


@dataclass(frozen=True, slots=True)
class TrunEntries:
    """A ``trun``: its sample count, data offset, first-sample flags, and one column of
    values per field it carries (absent fields take the ``tfhd``/``trex`` defaults)."""

    count: int
    data_offset: int | None
    first_flags: int | None
    columns: dict[int, list[int]]  # _TRUN_DURATION, _TRUN_SIZE, _TRUN_FLAGS, _TRUN_CTS


def parse_trun(box: bytes) -> TrunEntries:
    _, flags = _full_box(box, "trun")
    _need(box, 8, "trun")
    (count,) = struct.unpack_from(">I", box, 4)
    pos = 8
    data_offset: int | None = None
    if flags & _TRUN_DATA_OFFSET:
        _need(box, pos + 4, "trun")
        (data_offset,) = struct.unpack_from(">i", box, pos)
        pos += 4
    first_flags: int | None = None
    if flags & _TRUN_FIRST_SAMPLE_FLAGS:
        _need(box, pos + 4, "trun")
        (first_flags,) = struct.unpack_from(">I", box, pos)
        pos += 4
    fields = [f for f in (_TRUN_DURATION, _TRUN_SIZE, _TRUN_FLAGS, _TRUN_CTS) if flags & f]
    end = pos + 4 * len(fields) * count
    _need(box, end, "trun")
    rows = list(struct.iter_unpack(f">{len(fields)}I", box[pos:end])) if fields else []
    columns = {f: [r[i] for r in rows] for i, f in enumerate(fields)}
    return TrunEntries(count, data_offset, first_flags, columns)


def _parse_trun(
    box: bytes, default_duration: int, default_size: int | None, default_flags: int
) -> tuple[int, int, int, int | None, int | None]:
    """(sample count, total duration, first sample's flags, data offset, total size)."""
    t = parse_trun(box)
    durations = t.columns.get(_TRUN_DURATION)
    duration = sum(durations) if durations is not None else default_duration * t.count
    sizes = t.columns.get(_TRUN_SIZE)
    size = sum(sizes) if sizes is not None else (
        default_size * t.count if default_size is not None else None)  # fmt: skip
    first = t.first_flags
    if first is None:
        flags = t.columns.get(_TRUN_FLAGS)
        first = flags[0] if flags else default_flags
    return t.count, duration, first, t.data_offset, size


class Mp4Scanner:
    """Push bytes in file order; completed fragments come out.

    The scanner never looks back: feed it everything from offset 0, in order, in chunks
    of any size. After a format error it stays broken (``error`` is set) and keeps its
    last good ``whole_end``, which is what crash recovery needs.
    """

    def __init__(self) -> None:
        self.position = 0  # bytes consumed so far
        self.init: InitInfo | None = None
        self.init_end: int | None = None  # offset just past moov
        self.fragments: list[FragmentInfo] = []
        self.error: Mp4FormatError | None = None
        self._whole_end: int | None = None
        self._buf = bytearray()  # unconsumed bytes of the current box (header or payload)
        self._box: BoxHeader | None = None
        self._skip_left = 0  # payload bytes of a skipped box still to come
        self._pending_moof: tuple[int, int, tuple[TrackRun, ...], int] | None = None
        self._saw_ftyp = False

    @property
    def whole_end(self) -> int | None:
        """End of the last complete unit: ftyp+moov, then whole moof+mdat pairs.

        None until both ``ftyp`` and ``moov`` are complete. Any other complete top-level
        box after them (``free``, ``mfra``, ...) extends it; a ``moof`` only counts once
        its ``mdat`` is complete.
        """
        return self._whole_end

    def feed(self, data: bytes | bytearray | memoryview) -> list[FragmentInfo]:
        """Consume ``data``; return the fragments it completed."""
        done: list[FragmentInfo] = []
        if self.error is not None:
            return done
        view = memoryview(data)
        try:
            while view:
                view = self._step(view, done)
        except Mp4FormatError as exc:
            self.error = exc
        return done

    def _step(self, view: memoryview, done: list[FragmentInfo]) -> memoryview:
        if self._skip_left:
            n = min(self._skip_left, len(view))
            self._skip_left -= n
            self.position += n
            if self._skip_left == 0:
                box, self._box = self._box, None
                assert box is not None
                self._finish(box, b"", done)
            return view[n:]
        if self._box is None:
            need = 16 - len(self._buf)
            take = view[:need]
            self._buf += take
            head = parse_box_header(self._buf)
            if head is None:
                self.position += len(take)
                return view[len(take) :]
            # Give back what we took beyond the header.
            extra = len(self._buf) - head.header_size
            used = len(take) - extra
            del self._buf[:]
            self.position += used
            head = BoxHeader(
                head.box_type, self.position - head.header_size, head.header_size, head.size
            )
            self._start(head)
            if self._box is not None and self._box.size == head.header_size:
                # Empty payload: finished right away.
                self._box = None
                self._finish(head, b"", done)
            return view[used:]
        box = self._box
        need = box.size - box.header_size - len(self._buf)
        take = view[:need]
        self._buf += take
        self.position += len(take)
        if len(self._buf) == box.size - box.header_size:
            payload = bytes(self._buf)
            del self._buf[:]
            self._box = None
            self._finish(box, payload, done)
        return view[len(take) :]

    def _start(self, head: BoxHeader) -> None:
        if head.size == 0:
            # "Extends to the end of the file": we can never know it is whole.
            raise Mp4FormatError(f"box {head.box_type!r} at {head.offset} has open-ended size 0")
        self._box = head
        if not self._saw_ftyp and head.box_type != b"ftyp":
            raise Mp4FormatError(f"file starts with {head.box_type!r}, not ftyp")
        if self._pending_moof is not None and head.box_type != b"mdat":
            raise Mp4FormatError(f"moof at {self._pending_moof[0]} not followed by mdat")
        if head.box_type in _BUFFERED:
            if head.size > _MAX_BUFFERED_BOX:
                raise Mp4FormatError(f"{head.box_type!r} at {head.offset} is {head.size} bytes")
        else:
            self._skip_left = head.size - head.header_size

    def _finish(self, box: BoxHeader, payload: bytes, done: list[FragmentInfo]) -> None:
        end = box.offset + box.size
        if box.box_type == b"ftyp":
            self._saw_ftyp = True
        elif box.box_type == b"moov":
            if self.init is not None:
                raise Mp4FormatError(f"second moov at {box.offset}")
            self.init = parse_moov(payload)
            self.init_end = end
            self._whole_end = end
        elif box.box_type == b"moof":
            if self.init is None:
                raise Mp4FormatError(f"moof at {box.offset} before moov")
            sequence, runs = parse_moof(payload, box.offset, self.init)
            self._pending_moof = (box.offset, sequence, runs, end)
        elif box.box_type == b"mdat" and self._pending_moof is not None:
            moof_offset, sequence, runs, moof_end = self._pending_moof
            self._pending_moof = None
            for run in runs:
                if (
                    run.data_start is not None
                    and run.data_size is not None
                    and not (
                        moof_end + box.header_size <= run.data_start
                        and run.data_start + run.data_size <= end
                    )
                ):
                    raise Mp4FormatError(
                        f"track {run.track_id} samples of moof at {moof_offset} lie outside "
                        f"its mdat ({run.data_start}+{run.data_size} vs mdat ending at {end})"
                    )
            frag = FragmentInfo(moof_offset, end - moof_offset, sequence, runs)
            self.fragments.append(frag)
            done.append(frag)
            self._whole_end = end
        elif self._whole_end is not None:
            self._whole_end = end


def scan(data: bytes | bytearray | memoryview) -> Mp4Scanner:
    """Scan a whole byte string (a file's contents) in one go."""
    scanner = Mp4Scanner()
    scanner.feed(data)
    return scanner


def last_whole_fragment_end(data: bytes | bytearray | memoryview) -> int | None:
    """Where a crashed file's bytes should be cut: the end of its last whole fragment.

    Returns None when ``ftyp`` and ``moov`` are not both complete (nothing playable).
    A complete fragment is never cut; an incomplete one, and anything after a part the
    scanner cannot read, is.
    """
    return scan(data).whole_end


# --- whole-file lookups -----------------------------------------------------------------


def top_level_box(data: bytes, box_type: bytes) -> bytes:
    """Payload of the first top-level box of ``box_type`` in a whole byte string."""
    pos = 0
    while True:
        head = parse_box_header(data, pos)
        if head is None or head.size == 0 or pos + head.size > len(data):
            raise Mp4FormatError(f"no complete {box_type!r} box at the top level")
        if head.box_type == box_type:
            return data[pos + head.header_size : pos + head.size]
        pos += head.size


# Bytes of a VisualSampleEntry before its child boxes (SampleEntry 8 + visual fields 70).
_VISUAL_SAMPLE_ENTRY_FIELDS = 78


def video_sample_entry(moov_payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(sample entry type, config box type, config payload) of the first video track.

    E.g. ``(b"hvc1", b"hvcC", <HEVCDecoderConfigurationRecord>)``.
    """
    for box_type, trak in _children(moov_payload, "moov"):
        if box_type != b"trak":
            continue
        path = [trak]
        for name in (b"mdia", b"minf", b"stbl", b"stsd"):
            found = [body for t, body in _children(path[-1], name.decode()) if t == name]
            if not found:
                break
            path.append(found[0])
        else:
            stsd = path[-1]
            entries = _children(stsd[8:], "stsd")  # full box header + entry count
            if not entries:
                continue
            entry_type, entry = entries[0]
            if len(entry) < _VISUAL_SAMPLE_ENTRY_FIELDS:
                continue
            for child_type, child in _children(entry[_VISUAL_SAMPLE_ENTRY_FIELDS:], "entry"):
                if child_type in (b"avcC", b"hvcC"):
                    return entry_type, child_type, child
    raise Mp4FormatError("no avcC/hvcC video sample entry in moov")
