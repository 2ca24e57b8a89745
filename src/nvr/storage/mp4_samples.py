"""Sample-level reading of our segment files (sans-IO): what a clip is assembled from.

``mp4box`` reads a fragment as a whole (its duration, its first sample's sync flag); a clip
needs every sample: where its bytes are in the file, how long it lasts and whether it is a
sync sample. This module parses the ``moov`` of a segment into its tracks (with each
track's sample entry, copied byte for byte into the clip's ``stsd``) and a ``moof`` into
per-track sample lists. Layouts per ISO/IEC 14496-12 §8.8.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nvr.storage.mp4box import (
    _SAMPLE_NON_SYNC,
    _TRUN_CTS,
    _TRUN_DURATION,
    _TRUN_FLAGS,
    _TRUN_SIZE,
    Mp4FormatError,
    _children,
    _full_box,
    _need,
    parse_tfhd,
    parse_trun,
)


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


@dataclass(frozen=True, slots=True)
class Sample:
    offset: int  # absolute offset of the sample's first byte in the file
    size: int
    duration: int  # in the track's timescale
    sync: bool


@dataclass(frozen=True, slots=True)
class TrackFragment:
    """One track's samples in one fragment."""

    track_id: int
    decode_time: int  # tfdt: the first sample's decode time, track timescale
    samples: tuple[Sample, ...]


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


def parse_fragment(
    moof_payload: bytes, moof_offset: int, tracks: tuple[Track, ...]
) -> tuple[TrackFragment, ...]:
    """Per-track samples of one ``moof`` whose box starts at ``moof_offset`` in the file."""
    by_id = {t.track_id: t for t in tracks}
    out = []
    for box_type, body in _children(moof_payload, "moof"):
        if box_type == b"traf":
            out.append(_parse_traf(body, moof_offset, by_id))
    return tuple(out)


def _parse_traf(body: bytes, moof_offset: int, tracks: dict[int, Track]) -> TrackFragment:
    children = _children(body, "traf")
    head = parse_tfhd(children, moof_offset)
    track_id, base = head.track_id, head.base_offset
    track = tracks.get(track_id)
    if track is None:
        raise Mp4FormatError(f"traf for track {track_id} not declared in moov")
    defaults: dict[int, int | None] = {
        _TRUN_DURATION: head.default_duration if head.default_duration is not None
        else track.default_duration,
        _TRUN_SIZE: head.default_size,
        _TRUN_FLAGS: head.default_flags if head.default_flags is not None
        else track.default_flags,
    }  # fmt: skip
    if base is None:
        raise Mp4FormatError(f"track {track_id} fragment at {moof_offset}: no data base offset")
    decode_time = 0
    samples: list[Sample] = []
    for box_type, box in children:
        if box_type == b"tfdt":
            version, _ = _full_box(box, "tfdt")
            _need(box, 12 if version == 1 else 8, "tfdt")
            (decode_time,) = struct.unpack_from(">Q" if version == 1 else ">I", box, 4)
        elif box_type == b"trun":
            samples += _parse_trun(box, base, defaults, moof_offset)
    return TrackFragment(track_id, decode_time, tuple(samples))


def _parse_trun(
    box: bytes, base: int, defaults: dict[int, int | None], moof_offset: int
) -> list[Sample]:
    t = parse_trun(box)
    count, columns, first_flags = t.count, t.columns, t.first_flags
    data_offset = t.data_offset or 0
    if any(columns.get(_TRUN_CTS, ())):
        raise Mp4FormatError(f"fragment at {moof_offset}: composition offsets (B-frames)")

    def column(field: int) -> list[int]:
        if field in columns:
            return columns[field]
        default = defaults[field]
        if default is None:
            raise Mp4FormatError(f"fragment at {moof_offset}: a sample without size or duration")
        return [default] * count

    durations, sizes, sample_flags = column(_TRUN_DURATION), column(_TRUN_SIZE), column(_TRUN_FLAGS)
    if count and first_flags is not None:
        sample_flags[0] = first_flags
    at = base + data_offset
    samples = []
    for size, duration, f in zip(sizes, durations, sample_flags, strict=True):
        samples.append(Sample(at, size, duration, not f & _SAMPLE_NON_SYNC))
        at += size
    return samples
