"""Writes the header of a progressive (non-fragmented) MP4 whose samples live elsewhere (sans-IO).

A clip is ``ftyp`` + ``moov`` + one ``mdat`` whose payload is a list of byte ranges of the
segment files, in order. Only the header is made here, in memory; the payload is never
copied or re-muxed. ``moov`` comes first so a player can seek as soon as it has the header,
and every chunk offset is 64-bit (``co64``) so the header's size does not depend on the
offsets. Layouts per ISO/IEC 14496-12 §8; metadata in ``udta/meta/ilst`` as players read it.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

MOVIE_TIMESCALE = 90_000
MDAT_HEADER_BYTES = 16  # size 1, "mdat", 64-bit largesize
_MP4_EPOCH_OFFSET_S = 2_082_844_800  # 1904-01-01 to 1970-01-01
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


# Not frozen: a clip of an hour has some 7,000 chunks, and a frozen dataclass's __init__ costs
# twice as much. Nothing changes one once it is made.
@dataclass(slots=True)
class Chunk:
    """``count`` consecutive samples stored together, described by sample entry ``entry``."""

    count: int
    entry: int  # 1-based index into the track's sample entries
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Edit:
    duration: int  # movie timescale
    media_time: int  # track timescale; -1 is an empty edit (nothing shown for ``duration``)


@dataclass(frozen=True, slots=True)
class TrackLayout:
    track_id: int
    handler: bytes  # b"vide" or b"soun"
    timescale: int
    sample_entries: tuple[bytes, ...]  # whole stsd entry boxes, copied from the segments
    sizes: Sequence[int]
    durations: Sequence[int]
    sync_samples: Sequence[int] | None  # 1-based numbers, ascending; None: every sample is one
    chunks: Sequence[Chunk]  # in mdat order across all tracks: see ``interleave``
    edits: tuple[Edit, ...]
    width: int = 0
    height: int = 0


def box(box_type: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def full_box(box_type: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return box(box_type, struct.pack(">I", (version << 24) | flags), *parts)


def _be_array(typecode: str, values: Sequence[int]) -> bytes:
    """``values`` as big-endian unsigned integers (``I``: 32-bit, ``Q``: 64-bit), packed in C:
    a table of 90,000 sizes costs a fraction of ``struct.pack(*values)``."""
    packed = array(typecode, values)
    if packed.itemsize != {"I": 4, "Q": 8}[typecode]:
        return struct.pack(f">{len(values)}{typecode}", *values)  # a platform with odd C ints
    if sys.byteorder == "little":
        packed.byteswap()
    return packed.tobytes()


def _stts(durations: Sequence[int]) -> bytes:
    if durations and durations.count(durations[0]) == len(durations):
        table = [len(durations), durations[0]]  # a constant frame rate: one run
    else:
        table = [n for d, run in groupby(durations) for n in (len(list(run)), d)]
    return full_box(b"stts", 0, 0, struct.pack(">I", len(table) // 2), _be_array("I", table))


def _stsc(chunks: Sequence[Chunk]) -> bytes:
    rows: list[int] = []
    count = entry = -1
    for i, c in enumerate(chunks, 1):
        if c.count != count or c.entry != entry:
            count, entry = c.count, c.entry
            rows += (i, count, entry)
    return full_box(b"stsc", 0, 0, struct.pack(">I", len(rows) // 3), _be_array("I", rows))


@dataclass(frozen=True, slots=True)
class _Tables:
    """A track's sample tables but for the chunk offsets, made once per header: the header is
    laid out twice (once to learn its size) and only the chunk offsets differ."""

    head: bytes  # stsd, stts, stss, stsz, stsc
    media_duration: int


def _tables(t: TrackLayout) -> _Tables:
    stsd = full_box(b"stsd", 0, 0, struct.pack(">I", len(t.sample_entries)), *t.sample_entries)
    parts = [stsd, _stts(t.durations)]
    n = len(t.sizes)
    numbers = t.sync_samples
    if numbers is not None and len(numbers) < n:  # all sync: no stss
        parts.append(full_box(b"stss", 0, 0, struct.pack(">I", len(numbers)),
                              _be_array("I", numbers)))  # fmt: skip
    parts.append(full_box(b"stsz", 0, 0, struct.pack(">II", 0, n), _be_array("I", t.sizes)))
    parts.append(_stsc(t.chunks))
    return _Tables(b"".join(parts), sum(t.durations))


def _stbl(tables: _Tables, chunk_offsets: Sequence[int]) -> bytes:
    n = len(chunk_offsets)
    co64 = full_box(b"co64", 0, 0, struct.pack(">I", n), _be_array("Q", chunk_offsets))
    return box(b"stbl", tables.head, co64)


def _trak(t: TrackLayout, tables: _Tables, chunk_offsets: Sequence[int], created_s: int) -> bytes:
    movie_duration = sum(e.duration for e in t.edits)
    media_duration = tables.media_duration
    video = t.handler == b"vide"
    tkhd = full_box(
        b"tkhd", 1, 0x3,  # enabled, in movie
        struct.pack(">QQIIQ", created_s, created_s, t.track_id, 0, movie_duration),
        struct.pack(">IIhhhH", 0, 0, 0, 0, 0 if video else 0x0100, 0),
        _MATRIX,
        struct.pack(">II", t.width << 16, t.height << 16),
    )  # fmt: skip
    elst = full_box(b"elst", 1, 0, struct.pack(">I", len(t.edits)), *(
        struct.pack(">QqhH", e.duration, e.media_time, 1, 0) for e in t.edits))  # fmt: skip
    mdhd = full_box(
        b"mdhd",
        1,
        0,
        struct.pack(">QQIQHH", created_s, created_s, t.timescale, media_duration, 0x55C4, 0),
    )  # "und"; fmt: skip
    name = b"nvr video\0" if video else b"nvr audio\0"
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, t.handler), name)
    header = (full_box(b"vmhd", 0, 1, bytes(8)) if video
              else full_box(b"smhd", 0, 0, bytes(4)))  # fmt: skip
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    minf = box(b"minf", header, dinf, _stbl(tables, chunk_offsets))
    return box(b"trak", tkhd, box(b"edts", elst), box(b"mdia", mdhd, hdlr, minf))


def _ilst_item(key: bytes, text: str) -> bytes:
    return box(key, box(b"data", struct.pack(">II", 1, 0), text.encode()))  # 1: UTF-8


def _udta(tags: Sequence[tuple[bytes, str]]) -> bytes:
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s4s8x", 0, b"mdir", b"appl"), b"\0")
    ilst = box(b"ilst", *(_ilst_item(k, v) for k, v in tags))
    return box(b"udta", full_box(b"meta", 0, 0, hdlr, ilst))


def clip_header(
    tracks: Sequence[TrackLayout],
    chunk_order: Sequence[tuple[int, int]],
    *,
    created_unix_s: int,
    tags: Sequence[tuple[bytes, str]] = (),
) -> tuple[bytes, int]:
    """``ftyp`` + ``moov`` + the ``mdat`` box header, and the mdat payload's size.

    ``chunk_order`` lists (track index, chunk index) in the order the chunks' bytes follow
    in the mdat payload; each track's chunks must appear in their own order.
    """
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2mp41")
    created_s = created_unix_s + _MP4_EPOCH_OFFSET_S
    offsets: list[list[int]] = [[0] * len(t.chunks) for t in tracks]
    payload = sum(c.size_bytes for t in tracks for c in t.chunks)
    tables = [_tables(t) for t in tracks]

    def moov() -> bytes:
        duration = max((sum(e.duration for e in t.edits) for t in tracks), default=0)
        mvhd = full_box(
            b"mvhd", 1, 0,
            struct.pack(">QQIQ", created_s, created_s, MOVIE_TIMESCALE, duration),
            struct.pack(">IH10x", 0x10000, 0x0100), _MATRIX, bytes(24),
            struct.pack(">I", max(t.track_id for t in tracks) + 1),
        )  # fmt: skip
        traks = [_trak(t, tables[i], offsets[i], created_s) for i, t in enumerate(tracks)]
        return box(b"moov", mvhd, *traks, *([_udta(tags)] if tags else []))

    at = len(ftyp) + len(moov()) + MDAT_HEADER_BYTES  # co64: the size does not change below
    seen = [0] * len(tracks)
    for ti, ci in chunk_order:
        if ci != seen[ti]:
            raise ValueError(f"track {ti}: chunk {ci} out of order")
        seen[ti] += 1
        offsets[ti][ci] = at
        at += tracks[ti].chunks[ci].size_bytes
    if seen != [len(t.chunks) for t in tracks]:
        raise ValueError("chunk_order does not list every chunk once")
    header = ftyp + moov() + struct.pack(">I4sQ", 1, b"mdat", MDAT_HEADER_BYTES + payload)
    return header, payload
