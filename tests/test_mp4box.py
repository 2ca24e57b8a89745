"""The sans-IO box scanner: hand-built MP4 bytes in, facts out."""

from __future__ import annotations

import struct

import pytest

from nvr.storage.mp4box import (
    Mp4FormatError,
    Mp4Scanner,
    last_whole_fragment_end,
    parse_box_header,
    scan,
    top_level_box,
)

NON_SYNC = 0x00010000
SYNC = 0x02000000  # sample_depends_on = 2 (I-frame), sync


def box(box_type: bytes, payload: bytes, large: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, box_type, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def full(box_type: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return box(box_type, struct.pack(">I", version << 24 | flags) + payload)


def trak(track_id: int, handler: bytes, timescale: int) -> bytes:
    tkhd = full(b"tkhd", 0, 3, struct.pack(">III", 0, 0, track_id) + bytes(68))
    mdhd = full(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, 0) + bytes(4))
    hdlr = full(b"hdlr", 0, 0, bytes(4) + handler + bytes(12) + b"x\0")
    return box(b"trak", tkhd + box(b"mdia", mdhd + hdlr))


def moov(trex_duration: int = 3600, trex_flags: int = NON_SYNC) -> bytes:
    trex_v = full(b"trex", 0, 0, struct.pack(">5I", 1, 1, trex_duration, 0, trex_flags))
    trex_a = full(b"trex", 0, 0, struct.pack(">5I", 2, 1, 1024, 0, 0))
    mvhd = full(b"mvhd", 0, 0, bytes(96))
    return box(
        b"moov",
        mvhd + trak(1, b"vide", 90000) + trak(2, b"soun", 8000) + box(b"mvex", trex_v + trex_a),
    )


FTYP = box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso6mp41")


def fragment(
    offset: int,
    seq: int,
    decode_time: int,
    sizes: list[int],
    durations: list[int] | None = None,
    first_flags: int | None = SYNC,
    tfhd_flags: int | None = None,
    tfdt_v1: bool = False,
    large_mdat: bool = False,
    audio: bool = False,
) -> bytes:
    """A moof+mdat pair at file ``offset`` (default-base-is-moof, one video trun)."""

    def build(data_offset: int) -> bytes:
        tf_flags = 0x020000 | (0x20 if tfhd_flags is not None else 0)
        tfhd_payload = struct.pack(">I", 1)
        if tfhd_flags is not None:
            tfhd_payload += struct.pack(">I", tfhd_flags)
        tfhd = full(b"tfhd", 0, tf_flags, tfhd_payload)
        if tfdt_v1:
            tfdt = full(b"tfdt", 1, 0, struct.pack(">Q", decode_time))
        else:
            tfdt = full(b"tfdt", 0, 0, struct.pack(">I", decode_time))
        flags = 0x001 | 0x200 | (0x004 if first_flags is not None else 0)
        flags |= 0x100 if durations is not None else 0
        body = struct.pack(">Ii", len(sizes), data_offset)
        if first_flags is not None:
            body += struct.pack(">I", first_flags)
        for i, size in enumerate(sizes):
            if durations is not None:
                body += struct.pack(">I", durations[i])
            body += struct.pack(">I", size)
        trun = full(b"trun", 0, flags, body)
        trafs = box(b"traf", tfhd + tfdt + trun)
        if audio:
            a_tfhd = full(b"tfhd", 0, 0x020000, struct.pack(">I", 2))
            a_trun = full(b"trun", 0, 0x001 | 0x200, struct.pack(">IiI", 1, data_offset, 0))
            trafs += box(b"traf", a_tfhd + a_trun)
        return box(b"moof", full(b"mfhd", 0, 0, struct.pack(">I", seq)) + trafs)

    header = 16 if large_mdat else 8
    moof = build(0)
    moof = build(len(moof) + header)
    return moof + box(b"mdat", bytes(sum(sizes)), large=large_mdat)


def small_file() -> tuple[bytes, list[int]]:
    """ftyp, moov and three fragments; also returns each fragment's end offset."""
    data = FTYP + moov()
    ends = [len(data)]
    data += fragment(len(data), 1, 0, [40, 7, 9], durations=[3600, 3600, 3000])
    ends.append(len(data))
    data += fragment(len(data), 2, 10200, [5, 6], first_flags=NON_SYNC, large_mdat=True)
    ends.append(len(data))
    data += fragment(len(data), 3, 17400, [30, 4], tfdt_v1=True, audio=True)
    ends.append(len(data))
    return data, ends


def test_whole_file_facts() -> None:
    data, ends = small_file()
    scanner = scan(data)
    assert scanner.error is None
    assert scanner.init is not None
    video = scanner.init.video
    assert video is not None and (video.track_id, video.timescale) == (1, 90000)
    assert scanner.init_end == ends[0]
    assert scanner.whole_end == len(data)
    facts = [
        (
            f.offset,
            f.end,
            f.sequence,
            r.base_decode_time,
            r.sample_count,
            r.duration,
            r.first_sample_sync,
        )
        for f in scanner.fragments
        for r in [f.run_for(1)]
        if r is not None
    ]
    assert facts == [
        (ends[0], ends[1], 1, 0, 3, 10200, True),
        (ends[1], ends[2], 2, 10200, 2, 7200, False),  # durations from trex, 64-bit mdat
        (ends[2], ends[3], 3, 17400, 2, 7200, True),  # 64-bit tfdt
    ]


def test_split_at_every_byte_gives_the_same_facts() -> None:
    data, _ = small_file()
    expected = scan(data).fragments
    for cut in range(len(data) + 1):
        scanner = Mp4Scanner()
        got = scanner.feed(data[:cut]) + scanner.feed(data[cut:])
        assert got == expected, cut
        assert scanner.whole_end == len(data)
        assert scanner.position == len(data)


def test_byte_by_byte_reports_each_fragment_when_its_mdat_ends() -> None:
    data, ends = small_file()
    scanner = Mp4Scanner()
    completed_at = []
    for i in range(len(data)):
        if scanner.feed(data[i : i + 1]):
            completed_at.append(i + 1)
    assert completed_at == ends[1:]


def test_whole_end_of_every_prefix() -> None:
    data, ends = small_file()
    for cut in range(len(data) + 1):
        whole = [e for e in ends if e <= cut]
        assert last_whole_fragment_end(data[:cut]) == (whole[-1] if whole else None), cut


def test_sample_flags_fall_back_to_tfhd_then_trex() -> None:
    base = FTYP + moov(trex_flags=NON_SYNC)
    # No first_sample_flags, no per-sample flags: tfhd default says sync.
    data = base + fragment(len(base), 1, 0, [3], first_flags=None, tfhd_flags=SYNC)
    assert scan(data).fragments[0].runs[0].first_sample_sync is True
    # Nothing in the moof: trex says non-sync.
    data = base + fragment(len(base), 1, 0, [3], first_flags=None)
    assert scan(data).fragments[0].runs[0].first_sample_sync is False


def test_garbage_after_fragments_stops_at_last_whole_fragment() -> None:
    data, ends = small_file()
    broken = data[: ends[2]] + struct.pack(">I4s", 3, b"moof") + bytes(50)
    scanner = scan(broken)
    assert isinstance(scanner.error, Mp4FormatError)
    assert "smaller than its 8-byte header" in str(scanner.error)
    assert scanner.whole_end == ends[2]


def test_samples_outside_the_mdat_are_refused() -> None:
    base = FTYP + moov()
    frag = bytearray(fragment(len(base), 1, 0, [10]))
    # Shrink the mdat by 4 bytes: the trun's samples now overrun it.
    mdat_at = len(frag) - 18
    assert frag[mdat_at + 4 : mdat_at + 8] == b"mdat"
    struct.pack_into(">I", frag, mdat_at, 14)
    scanner = scan(base + bytes(frag[:-4]))
    assert scanner.error is not None and "outside its mdat" in str(scanner.error)
    assert scanner.whole_end == len(base)


def test_moof_without_mdat_and_file_without_ftyp() -> None:
    base = FTYP + moov()
    frag = fragment(len(base), 1, 0, [2])
    moof_len = struct.unpack_from(">I", frag)[0]
    scanner = scan(base + frag[:moof_len] + box(b"free", b""))
    assert scanner.error is not None and "not followed by mdat" in str(scanner.error)
    assert scanner.whole_end == len(base)
    assert scan(moov()).whole_end is None


def test_box_header() -> None:
    assert parse_box_header(b"\0\0\0\x10moov") is not None
    assert parse_box_header(b"\0\0\0\x01mdat\0\0\0\0") is None  # 64-bit size not all here
    head = parse_box_header(b"\0\0\0\x01mdat" + struct.pack(">Q", 1 << 33))
    assert head is not None and (head.header_size, head.size) == (16, 1 << 33)
    with pytest.raises(Mp4FormatError, match="size 4"):
        parse_box_header(b"\0\0\0\x04free")
    assert top_level_box(FTYP + moov(), b"moov") == moov()[8:]

