"""Sample-level reading of our segment files (sans-IO): what a clip is assembled from.

``mp4box`` reads a fragment as a whole (its duration, its first sample's sync flag); a clip
needs every sample: where its bytes are in the file, how long it lasts and whether it is a
sync sample. This module parses the ``moov`` of a segment into its tracks (with each
track's sample entry, copied byte for byte into the clip's ``stsd``) and a ``moof`` into
per-track sample columns. Layouts per ISO/IEC 14496-12 §8.8.

A clip of an hour reads some 7,000 ``moof`` boxes and 90,000 video samples before its
first byte can be sent, so the ``moof`` walk here is specialised: it visits only the boxes
a fragment of ours has (``traf`` → ``tfhd``, ``tfdt``, ``trun``) by offset into one buffer,
keeps samples as columns (lists of sizes, durations, sync sample indices) rather than one
object each, and still refuses a malformed box with ``Mp4FormatError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from nvr.storage.mp4box import (
    _SAMPLE_NON_SYNC,
    _TFHD_BASE_DATA_OFFSET,
    _TFHD_DEFAULT_BASE_IS_MOOF,
    _TFHD_DEFAULT_DURATION,
    _TFHD_DEFAULT_FLAGS,
    _TFHD_DEFAULT_SIZE,
    _TFHD_SAMPLE_DESCRIPTION_INDEX,
    _TRUN_CTS,
    _TRUN_DATA_OFFSET,
    _TRUN_DURATION,
    _TRUN_FIRST_SAMPLE_FLAGS,
    _TRUN_FLAGS,
    _TRUN_SIZE,
    Mp4FormatError,
    _children,
    _full_box,
    _need,
)

BOX_HEAD = struct.Struct(">I4s")  # box size, type
# Far beyond any fragment we write (a second or two of frames): a corrupt count is refused
# instead of becoming a table of billions of defaults.
_MAX_TRUN_SAMPLES = 1 << 20
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I32 = struct.Struct(">i")
_WORD_U32 = struct.Struct(">II")  # full box version+flags, then one u32
_TFHD_DEFAULTS = (_TFHD_DEFAULT_DURATION, _TFHD_DEFAULT_SIZE, _TFHD_DEFAULT_FLAGS)
_TRUN_FIELDS = (_TRUN_DURATION, _TRUN_SIZE, _TRUN_FLAGS, _TRUN_CTS)  # their order in a row
_MFHD_TRAF = struct.Struct(">I4s8xI4s")  # an mfhd box's header, then the next box's header
# What our segmenter (FFmpeg's mov muxer) writes at the start of every traf: a tfhd with
# default-base-is-moof and the three defaults, a version 1 tfdt, then the trun's header.
_OUR_TRAF = struct.Struct(">I4sIIIII I4sIQ I4sII")  # tfhd, tfdt, trun (struct skips spaces)


def _row_layout(flags: int) -> tuple[int, int, int, int, int]:
    """(values per sample, then the place in a sample's row of its duration, size, flags and
    composition offset; -1 for each the trun does not carry)."""
    fields = [f for f in _TRUN_FIELDS if flags & f]
    places = [fields.index(f) if f in fields else -1 for f in _TRUN_FIELDS]
    return len(fields), places[0], places[1], places[2], places[3]


_TRUN_ROWS = {m: _row_layout(m) for m in range(0, 0x1000, 0x100)}  # by flags & 0xF00


@dataclass(frozen=True, slots=True)
class Track:
    """One track of a segment file, as its ``moov`` declares it."""

    track_id: int
    handler: bytes  # b"vide" or b"soun"
    timescale: int
    sample_entry: bytes  # the first stsd entry, a whole box (header included)
    default_duration: int  # trex
    default_flags: int  # trex
    width: int = 0  # video: from the visual sample entry
    height: int = 0


# Not frozen: there is one per fragment and track, and a frozen dataclass's __init__ costs
# four times as much. Nothing changes one after ``parse_fragment`` returns it.
@dataclass(slots=True)
class TrackFragment:
    """One track's samples in one fragment, as columns (index i is the i-th sample)."""

    track_id: int
    decode_time: int  # tfdt: the first sample's decode time, track timescale
    sizes: Sequence[int]
    durations: Sequence[int]  # track timescale
    sync: Sequence[int]  # indices of the sync samples, ascending
    # One (first sample index, file offset of that sample's first byte) per trun: a trun's
    # samples are contiguous in the file, so the others' offsets follow from the sizes.
    runs: tuple[tuple[int, int], ...]

    def offset_of(self, i: int) -> int:
        """File offset of sample ``i``'s first byte."""
        runs = self.runs
        first, at = runs[0] if len(runs) == 1 else next(r for r in reversed(runs) if r[0] <= i)
        return at + sum(self.sizes[first:i]) if i > first else at


def _box_bytes(parent: bytes, wanted: bytes) -> bytes | None:
    """The first child box of ``wanted`` type, whole (header included)."""
    pos = 0
    while pos + 8 <= len(parent):
        size, box_type = struct.unpack_from(">I4s", parent, pos)
        if size < 8 or pos + size > len(parent):
            raise Mp4FormatError(f"bad box size {size} inside stsd")
        if wanted in (box_type, b"*"):
            return parent[pos : pos + size]
        pos += size
    return None


def _child(body: bytes, name: bytes, where: str) -> bytes:
    found = [b for t, b in _children(body, where) if t == name]
    if not found:
        raise Mp4FormatError(f"{where} has no {name.decode()} box")
    return found[0]


def parse_tracks(moov_payload: bytes) -> tuple[Track, ...]:
    """Every track of a segment's ``moov`` with its sample entry and ``trex`` defaults."""
    trex: dict[int, tuple[int, int]] = {}
    traks: list[bytes] = []
    for box_type, body in _children(moov_payload, "moov"):
        if box_type == b"trak":
            traks.append(body)
        elif box_type == b"mvex":
            for t, b in _children(body, "mvex"):
                if t == b"trex":
                    _need(b, 24, "trex")
                    tid, _, duration, _, flags = struct.unpack_from(">IIIII", b, 4)
                    trex[tid] = (duration, flags)
    tracks = []
    for trak in traks:
        tkhd = _child(trak, b"tkhd", "trak")
        version, _ = _full_box(tkhd, "tkhd")
        id_at = 20 if version == 1 else 12
        _need(tkhd, id_at + 4, "tkhd")
        (track_id,) = struct.unpack_from(">I", tkhd, id_at)
        mdia = _child(trak, b"mdia", "trak")
        mdhd = _child(mdia, b"mdhd", "mdia")
        version, _ = _full_box(mdhd, "mdhd")
        scale_at = 20 if version == 1 else 12
        _need(mdhd, scale_at + 4, "mdhd")
        (timescale,) = struct.unpack_from(">I", mdhd, scale_at)
        hdlr = _child(mdia, b"hdlr", "mdia")
        _need(hdlr, 12, "hdlr")
        handler = hdlr[8:12]
        stbl = _child(_child(mdia, b"minf", "mdia"), b"stbl", "minf")
        stsd = _child(stbl, b"stsd", "stbl")
        entry = _box_bytes(stsd[8:], b"*")  # full box header + entry count precede entries
        if entry is None or timescale <= 0:
            raise Mp4FormatError(f"track {track_id} has no sample entry or no timescale")
        width = height = 0
        if handler == b"vide":
            _need(entry, 8 + 28, "visual sample entry")
            width, height = struct.unpack_from(">HH", entry, 8 + 24)
        duration, flags = trex.get(track_id, (0, 0))
        tracks.append(Track(track_id, handler, timescale, entry, duration, flags, width, height))
    return tuple(tracks)


def _boxes(buf: bytes, pos: int, end: int, where: str) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in ``buf[pos:end]``, checked as
    ``mp4box._children`` checks them; offsets stay in ``buf`` (no copies)."""
    out = []
    while pos < end:
        if end - pos < 8:
            raise Mp4FormatError(f"truncated box header inside {where} at {pos}")
        size, box_type = BOX_HEAD.unpack_from(buf, pos)
        header = 8
        if size < 8:
            size, header = _odd_size(buf, pos, end, where)
        if pos + size > end:
            raise Mp4FormatError(
                f"box {box_type!r} inside {where} at {pos} overruns its parent "
                f"({size} > {end - pos})"
            )
        out.append((box_type, pos + header, pos + size))
        pos += size
    return out


def _odd_size(buf: bytes, pos: int, end: int, where: str) -> tuple[int, int]:
    """(size, header size) of the box at ``pos`` whose 32-bit size is 0 (to the end of its
    parent), 1 (a 64-bit size follows) or too small."""
    size, box_type = BOX_HEAD.unpack_from(buf, pos)
    if size == 0:
        return end - pos, 8
    if size == 1:
        if end - pos < 16:
            raise Mp4FormatError(f"truncated box header inside {where} at {pos}")
        (size,) = _U64.unpack_from(buf, pos + 8)
        if size == 0:
            return end - pos, 16
        if size >= 16:
            return size, 16
    header = 16 if size == 1 else 8
    raise Mp4FormatError(
        f"box {box_type!r} inside {where} at {pos} has size {size} "
        f"smaller than its {header}-byte header"
    )


def _short(what: str, have: int, need: int) -> Mp4FormatError:
    return Mp4FormatError(f"{what} is truncated: {have} bytes, needs {need}")


def parse_fragment(
    moof_payload: bytes, moof_offset: int, tracks: dict[int, Track]
) -> list[TrackFragment]:
    """Per-track samples of one ``moof`` whose box starts at ``moof_offset`` in the file.

    ``tracks`` maps track ids to the segment's tracks (``parse_tracks``)."""
    end = len(moof_payload)
    if end >= 24:
        # A video-only fragment of ours: mfhd, then one traf to the end.
        mfhd_size, mfhd_type, traf_size, traf_type = _MFHD_TRAF.unpack_from(moof_payload)
        mfhd = mfhd_size == 16 and mfhd_type == b"mfhd"
        if mfhd and traf_size == end - 16 and traf_type == b"traf":
            return [_parse_traf(moof_payload, 24, end, moof_offset, tracks)]
    out = []
    for box_type, start, stop in _boxes(moof_payload, 0, end, "moof"):
        if box_type == b"traf":
            out.append(_parse_traf(moof_payload, start, stop, moof_offset, tracks))
    return out


def _parse_traf(
    buf: bytes, start: int, end: int, moof_offset: int, tracks: dict[int, Track]
) -> TrackFragment:
    if end - start >= _OUR_TRAF.size:
        # Our own layout, read in one go (the general walk below reads the same values, box by
        # box, at three times the cost); anything else takes the general walk.
        (tfhd_size, tfhd_type, tfhd_word, track_id, duration, size, flags,
         tfdt_size, tfdt_type, tfdt_word, decode_time,
         trun_size, trun_type, _, _) = _OUR_TRAF.unpack_from(buf, start)  # fmt: skip
        trun_at = start + tfhd_size + tfdt_size
        track = tracks.get(track_id)
        if (
            tfhd_size == 28  # version+flags, track id, three defaults
            and tfhd_word == _TFHD_DEFAULT_BASE_IS_MOOF | 0x38  # version 0; 0x38: the defaults
            and tfdt_size == 20  # version+flags, 64-bit decode time
            and tfdt_word >> 24 == 1
            and trun_at + trun_size == end  # so trun_size >= 16: the unpack stayed inside
            and tfhd_type == b"tfhd"
            and tfdt_type == b"tfdt"
            and trun_type == b"trun"
            and track is not None
        ):
            sizes, durations, sync, at = _parse_trun(
                buf, trun_at + 8, end, moof_offset, duration, size, flags, moof_offset
            )
            return TrackFragment(track_id, decode_time, sizes, durations, sync, ((0, at),))
    tfhd = tfdt = None
    truns = []
    for box_type, s, e in _boxes(buf, start, end, "traf"):
        if box_type == b"trun":
            truns.append((s, e))
        elif box_type == b"tfhd":
            tfhd = tfhd or (s, e)  # the first one counts
        elif box_type == b"tfdt":
            tfdt = (s, e)  # the last one counts
    if tfhd is None:
        raise Mp4FormatError(f"traf without tfhd in moof at offset {moof_offset}")
    track_id, base, duration, size, flags = _parse_tfhd(buf, *tfhd, moof_offset)
    track = tracks.get(track_id)
    if track is None:
        raise Mp4FormatError(f"traf for track {track_id} not declared in moov")
    if duration is None:
        duration = track.default_duration
    if flags is None:
        flags = track.default_flags
    if base is None:
        raise Mp4FormatError(f"track {track_id} fragment at {moof_offset}: no data base offset")
    decode_time = 0
    if tfdt is not None:
        s, e = tfdt
        version = buf[s] if e > s else -1
        if e - s < (12 if version == 1 else 8):
            raise _short("tfdt", e - s, 12 if version == 1 else 8)
        (decode_time,) = (_U64 if version == 1 else _U32).unpack_from(buf, s + 4)
    runs = [_parse_trun(buf, s, e, base, duration, size, flags, moof_offset) for s, e in truns]
    if len(runs) == 1:
        sizes, durations, sync, at = runs[0]
        return TrackFragment(track_id, decode_time, sizes, durations, sync, ((0, at),))
    return _joined(track_id, decode_time, runs)


def _parse_tfhd(
    buf: bytes, start: int, end: int, moof_offset: int
) -> tuple[int, int | None, int | None, int | None, int | None]:
    """(track id, base offset, default duration, size and flags) of a tfhd; None where it
    sets none (the base offset is known without one under default-base-is-moof)."""
    if end - start < 8:
        raise _short("tfhd", end - start, 8)
    word, track_id = _WORD_U32.unpack_from(buf, start)
    flags = word & 0xFFFFFF
    pos = start + 8
    base = moof_offset if flags & _TFHD_DEFAULT_BASE_IS_MOOF else None
    if flags & _TFHD_BASE_DATA_OFFSET:
        if end - pos < 8:
            raise _short("tfhd", end - start, pos + 8 - start)
        (base,) = _U64.unpack_from(buf, pos)
        pos += 8
    if flags & _TFHD_SAMPLE_DESCRIPTION_INDEX:
        pos += 4
    values: list[int | None] = [None, None, None]
    for i, flag in enumerate(_TFHD_DEFAULTS):
        if flags & flag:
            if end - pos < 4:
                raise _short("tfhd", end - start, pos + 4 - start)
            (values[i],) = _U32.unpack_from(buf, pos)
            pos += 4
    return track_id, base, values[0], values[1], values[2]


_Run = tuple[Sequence[int], Sequence[int], list[int], int]  # sizes, durations, sync, data start


def _parse_trun(  # noqa: PLR0917  (private; the tfhd's values, flattened for speed)
    buf: bytes,
    start: int,
    end: int,
    base: int,
    default_duration: int,
    default_size: int | None,
    default_flags: int,
    moof_offset: int,
) -> _Run:
    if end - start < 8:
        raise _short("trun", end - start, 8)
    word, count = _WORD_U32.unpack_from(buf, start)
    if count > _MAX_TRUN_SAMPLES:  # a trun without per-sample fields is not bounded by its size
        raise Mp4FormatError(f"fragment at {moof_offset}: a trun of {count} samples")
    flags = word & 0xFFFFFF
    pos = start + 8
    data_offset = 0
    if flags & _TRUN_DATA_OFFSET:
        if end - pos < 4:
            raise _short("trun", end - start, pos + 4 - start)
        (data_offset,) = _I32.unpack_from(buf, pos)
        pos += 4
    first_flags = None
    if flags & _TRUN_FIRST_SAMPLE_FLAGS:
        if end - pos < 4:
            raise _short("trun", end - start, pos + 4 - start)
        (first_flags,) = _U32.unpack_from(buf, pos)
        pos += 4
    width, at_duration, at_size, at_flags, at_cts = _TRUN_ROWS[flags & 0xF00]
    if end - pos < 4 * width * count:
        raise _short("trun", end - start, pos + 4 * width * count - start)
    # One unpack for the whole table; a field's column is every width-th value from its place.
    table = struct.unpack_from(f">{width * count}I", buf, pos) if width else ()
    if at_cts >= 0 and any(table[at_cts::width]):
        raise Mp4FormatError(f"fragment at {moof_offset}: composition offsets (B-frames)")
    if at_size >= 0:
        sizes = table if width == 1 else table[at_size::width]
    elif default_size is None:
        raise Mp4FormatError(f"fragment at {moof_offset}: a sample without size or duration")
    else:
        sizes = (default_size,) * count
    durations = table[at_duration::width] if at_duration >= 0 else (default_duration,) * count
    sample_flags = table[at_flags::width] if at_flags >= 0 else None
    sync = _sync(sample_flags, first_flags, default_flags, count)
    return sizes, durations, sync, base + data_offset


def _sync(column: Sequence[int] | None, first: int | None, default: int, count: int) -> list[int]:
    """Indices of the sync samples of a trun."""
    if not count:
        return []
    if column is None:
        # Every sample but perhaps the first has the default flags: no per-sample work.
        first_sync = not (default if first is None else first) & _SAMPLE_NON_SYNC
        if default & _SAMPLE_NON_SYNC:
            return [0] if first_sync else []
        return list(range(0 if first_sync else 1, count))
    out = [i for i, f in enumerate(column) if not f & _SAMPLE_NON_SYNC]
    if first is not None:
        first_sync = not first & _SAMPLE_NON_SYNC
        if first_sync and (not out or out[0] != 0):
            out.insert(0, 0)
        elif not first_sync and out and out[0] == 0:
            del out[0]
    return out


def _joined(track_id: int, decode_time: int, runs: list[_Run]) -> TrackFragment:
    """The samples of several truns of one traf (or none), one after the other."""
    sizes: list[int] = []
    durations: list[int] = []
    sync: list[int] = []
    starts = []
    for run_sizes, run_durations, run_sync, at in runs:
        starts.append((len(sizes), at))
        sync += [len(sizes) + i for i in run_sync]
        sizes += run_sizes
        durations += run_durations
    return TrackFragment(track_id, decode_time, sizes, durations, sync, tuple(starts))
