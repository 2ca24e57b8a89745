"""The pieces a clip's plan is made of: the batched fragment-map query, the columnar moof
parser (checked against a plain per-sample reading of the same bytes), the audio kept per
fragment and the sample tables written."""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from pathlib import Path

import pytest

from nvr.storage.clip import _audio_kept
from nvr.storage.index import Index, segment_rel_path
from nvr.storage.model import Fragment, SegmentFile
from nvr.storage.mp4_samples import Track, TrackFragment, parse_fragment
from nvr.storage.mp4_write import Chunk, Edit, TrackLayout, _stts, clip_header
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

S = 90_000
T0 = 1_790_000_000 * S
SHA = "0123456789abcdef" * 4
NON_SYNC = _SAMPLE_NON_SYNC
SYNC = 0x02000000


# --- Index.segments_fragments ---------------------------------------------------------------


@pytest.fixture
async def ix(tmp_path: Path) -> AsyncIterator[Index]:
    index = await Index.open(tmp_path / "index.db")
    await index.upsert_camera("cam-1", "Front gate", "rtsp://10.0.0.5/stream1")
    yield index
    await index.close()


async def test_segments_fragments_reads_many_maps_in_one_call(ix: Index) -> None:
    run_id = await ix.start_run("cam-1", T0, video_codec="h264", width=1280, height=720,
                                audio_codec=None, clock_offset_ns=None)  # fmt: skip
    maps = {}
    for i in range(3):
        start = T0 + i * 60 * S
        sid = await ix.open_segment(run_id, "cam-1", segment_rel_path("cam-1", start), start)
        frags = tuple(Fragment(k * S, 1000 + k * 5000, 5000, k % 2 == 0) for k in range(i + 1))
        await ix.close_segment(sid, start + 60 * S, SegmentFile(100_000, SHA, 25, 60 * S, frags))
        maps[sid] = frags
    open_id = await ix.open_segment(run_id, "cam-1", "cam-1/open.mp4", T0 + 180 * S)
    missing = max(maps) + 100

    got = await ix.segments_fragments([*maps, open_id, missing])
    assert got == {**maps, open_id: ()}  # no map yet: empty; no row: left out
    for sid, frags in maps.items():
        assert await ix.segment_fragments(sid) == frags
    assert await ix.segments_fragments([]) == {}
    assert await ix.segments_fragments([missing]) == {}


# --- the moof parser --------------------------------------------------------------------------

# Each traf's track id, decode time and samples: (file offset, size, duration, sync).
Trafs = list[tuple[int, int, list[tuple[int, int, int, bool]]]]


def box(box_type: bytes, payload: bytes, *, large: bool = False, to_end: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, box_type, 16 + len(payload)) + payload
    return struct.pack(">I4s", 0 if to_end else 8 + len(payload), box_type) + payload


def full(box_type: bytes, version: int, flags: int, payload: bytes, **kw: bool) -> bytes:
    return box(box_type, struct.pack(">I", version << 24 | flags) + payload, **kw)


TRACKS = {
    1: Track(1, b"vide", 90_000, b"", 3600, NON_SYNC, 1280, 720),
    2: Track(2, b"soun", 48_000, b"", 1024, 0),
}


def our_traf(track_id: int, decode_time: int, sizes: list[int], data_offset: int) -> bytes:
    """A traf as the segmenter's muxer writes it (the parser's fast path)."""
    tfhd = full(b"tfhd", 0, 0x020038, struct.pack(">IIII", track_id, 3600, sizes[0], NON_SYNC))
    tfdt = full(b"tfdt", 1, 0, struct.pack(">Q", decode_time))
    trun = full(b"trun", 0, 0x205, struct.pack(f">IiI{len(sizes)}I", len(sizes), data_offset,
                                                SYNC, *sizes))  # fmt: skip
    return box(b"traf", tfhd + tfdt + trun)


def random_traf(rng: random.Random, track_id: int, *, columns: bool) -> bytes:
    """A traf with any mix of the optional tfhd, tfdt and trun fields, and odd box headers;
    with ``columns``, every trun has a per-sample field (so its box bounds its sample count:
    a damaged count could otherwise ask for billions of default-valued samples)."""
    tf_flags = rng.choice([0, 0x020000]) | sum(rng.choice([0, f]) for f in (1, 2, 8, 0x10, 0x20))
    tfhd = struct.pack(">I", track_id)
    if tf_flags & 1:
        tfhd += struct.pack(">Q", rng.randrange(1 << 20))
    if tf_flags & 2:
        tfhd += struct.pack(">I", 1)
    for flag, value in ((8, rng.randrange(1, 5000)), (0x10, rng.randrange(1, 900)),
                        (0x20, rng.choice([SYNC, NON_SYNC]))):  # fmt: skip
        if tf_flags & flag:
            tfhd += struct.pack(">I", value)
    children = [full(b"tfhd", 0, tf_flags, tfhd, large=rng.random() < 0.1)]
    for _ in range(rng.choice([0, 1, 1, 1, 2])):  # two: the last one counts
        v1 = rng.random() < 0.5
        time = struct.pack(">Q" if v1 else ">I", rng.randrange(1 << 31))
        children.append(full(b"tfdt", int(v1), 0, time))
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        flags = sum(rng.choice([0, f]) for f in (1, 4, 0x100, 0x200, 0x400))
        flags |= rng.choice([0, 0, 0, 0x800])
        if columns and not flags & 0xF00:
            flags |= 0x200
        count = rng.randrange(0, 6)
        body = struct.pack(">I", count)
        if flags & 1:
            body += struct.pack(">i", rng.randrange(-100, 5000))
        if flags & 4:
            body += struct.pack(">I", rng.choice([SYNC, NON_SYNC]))
        for _ in range(count):
            if flags & 0x100:
                body += struct.pack(">I", rng.choice([0, 1024, 3600, 3601]))
            if flags & 0x200:
                body += struct.pack(">I", rng.randrange(1, 1000))
            if flags & 0x400:
                body += struct.pack(">I", rng.choice([SYNC, NON_SYNC, 0]))
            if flags & 0x800:
                body += struct.pack(">I", rng.choice([0, 0, 0, 1]))
        children.append(full(b"trun", 0, flags, body))
    if rng.random() < 0.2:
        children.insert(rng.randrange(len(children) + 1), box(b"sdtp", bytes(4)))
    if rng.random() < 0.1:
        rng.shuffle(children)
    return box(b"traf", b"".join(children), large=rng.random() < 0.1)


def reference(moof: bytes, moof_offset: int) -> Trafs:
    """Each traf's (track id, decode time, [(offset, size, duration, sync)]), read sample by
    sample with mp4box's generic box walk (as clips were made before the columnar parser)."""
    out = []
    for box_type, body in _children(moof, "moof"):
        if box_type != b"traf":
            continue
        children = _children(body, "traf")
        head = parse_tfhd(children, moof_offset)
        track = TRACKS.get(head.track_id)
        if track is None:
            raise Mp4FormatError("undeclared track")
        duration = head.default_duration
        flags_default = head.default_flags
        defaults = {
            _TRUN_DURATION: track.default_duration if duration is None else duration,
            _TRUN_SIZE: head.default_size,
            _TRUN_FLAGS: track.default_flags if flags_default is None else flags_default,
        }
        if head.base_offset is None:
            raise Mp4FormatError("no base")
        decode_time, samples = 0, []
        for t, b in children:
            if t == b"tfdt":
                version, _ = _full_box(b, "tfdt")
                _need(b, 12 if version == 1 else 8, "tfdt")
                (decode_time,) = struct.unpack_from(">Q" if version == 1 else ">I", b, 4)
            elif t == b"trun":
                run = parse_trun(b)
                if any(run.columns.get(_TRUN_CTS, ())):
                    raise Mp4FormatError("cts")
                cols: dict[int, list[int]] = {}
                for field in (_TRUN_DURATION, _TRUN_SIZE, _TRUN_FLAGS):
                    default = defaults[field]
                    if field in run.columns:
                        cols[field] = list(run.columns[field])
                    elif default is None:
                        raise Mp4FormatError("no size")
                    else:
                        cols[field] = [default] * run.count
                if run.count and run.first_flags is not None:
                    cols[_TRUN_FLAGS][0] = run.first_flags
                at = head.base_offset + (run.data_offset or 0)
                for d, size, f in zip(cols[_TRUN_DURATION], cols[_TRUN_SIZE], cols[_TRUN_FLAGS],
                                      strict=True):  # fmt: skip
                    samples.append((at, size, d, not f & NON_SYNC))
                    at += size
        out.append((head.track_id, decode_time, samples))
    return out


def columns(frags: list[TrackFragment]) -> Trafs:
    out = []
    for f in frags:
        sync = set(f.sync)
        assert list(f.sync) == sorted(sync)
        samples = [(f.offset_of(i), f.sizes[i], f.durations[i], i in sync)
                   for i in range(len(f.sizes))]  # fmt: skip
        assert len(f.durations) == len(f.sizes)
        out.append((f.track_id, f.decode_time, samples))
    return out


def outcome(parse: Callable[[bytes, int], object], moof: bytes, offset: int) -> object:
    try:
        return parse(moof, offset)
    except Mp4FormatError:
        return "refused"


def test_our_fragments_parse_like_the_generic_walk() -> None:
    mfhd = full(b"mfhd", 0, 0, struct.pack(">I", 7))
    video = mfhd + our_traf(1, 123_456, [5000, 40, 41, 39], 180)
    with_audio = mfhd + our_traf(1, 0, [5000, 40], 300) + our_traf(2, 99, [300, 301, 302], 5120)
    # Near misses of the fast path: a version 0 tfdt of the same size, a tfhd without the
    # default-base-is-moof flag (no base offset: refused).
    tfdt_at = video.index(b"tfdt")
    v0_tfdt = video[: tfdt_at + 4] + b"\0" + video[tfdt_at + 5 :]
    tfhd_at = video.index(b"tfhd")
    no_base = video[: tfhd_at + 5] + b"\0" + video[tfhd_at + 6 :]
    for moof in (video, with_audio, v0_tfdt, no_base):
        assert outcome(lambda m, o: columns(parse_fragment(m, o, TRACKS)), moof, 1000) == (
            outcome(reference, moof, 1000)
        )
    assert outcome(reference, no_base, 1000) == "refused"
    [v] = parse_fragment(video, 1000, TRACKS)
    assert (v.decode_time, list(v.sizes), list(v.durations), list(v.sync)) == (
        123_456, [5000, 40, 41, 39], [3600] * 4, [0])  # fmt: skip
    assert [v.offset_of(i) for i in range(4)] == [1180, 6180, 6220, 6261]


def test_any_moof_parses_like_the_generic_walk_or_is_refused_by_both() -> None:
    rng = random.Random(2024)
    parsed = refused = 0
    for _ in range(3000):
        damage = rng.random() < 0.3
        trafs = [random_traf(rng, rng.choice([1, 1, 2, 3]), columns=damage)
                 for _ in range(rng.randrange(3))]  # fmt: skip
        if rng.random() < 0.3:  # the parser's fast path, whole or damaged
            sizes = [rng.randrange(1, 9000) for _ in range(rng.randrange(1, 30))]
            trafs[:1] = [our_traf(1, rng.randrange(1 << 40), sizes, rng.randrange(100, 900))]
        moof = full(b"mfhd", 0, 0, struct.pack(">I", 1)) + b"".join(trafs)
        if damage:  # cut it short or flip a bit
            at = rng.randrange(len(moof))
            if rng.random() < 0.5:
                moof = moof[:at]
            else:
                moof = moof[:at] + bytes([moof[at] ^ 1 << rng.randrange(8)]) + moof[at + 1 :]
        want = outcome(reference, moof, 4096)
        got = outcome(lambda m, o: columns(parse_fragment(m, o, TRACKS)), moof, 4096)
        assert got == want, moof.hex()
        parsed += want != "refused"
        refused += want == "refused"
    assert parsed > 1000 and refused > 300  # both sides of the check were exercised


def test_box_headers_with_64_bit_and_open_ended_sizes() -> None:
    mfhd = full(b"mfhd", 0, 0, struct.pack(">I", 1))
    traf = our_traf(1, 0, [10, 20], 100)
    large = box(b"traf", traf[8:], large=True)
    open_ended = box(b"traf", traf[8:], to_end=True)
    large_open_ended = struct.pack(">I4sQ", 1, b"traf", 0) + traf[8:]
    want = columns(parse_fragment(mfhd + traf, 0, TRACKS))
    for moof in (mfhd + large, mfhd + open_ended, mfhd + large_open_ended):
        assert columns(parse_fragment(moof, 0, TRACKS)) == want
        assert columns(parse_fragment(moof, 0, TRACKS)) == reference(moof, 0)
    for bad in (mfhd + struct.pack(">I4s", 4, b"traf"), mfhd + traf[:-1], mfhd + b"\0\0\0"):
        with pytest.raises(Mp4FormatError):
            parse_fragment(bad, 0, TRACKS)


def test_a_trun_claiming_billions_of_default_samples_is_refused() -> None:
    """Without per-sample fields a trun's box does not bound its count: a corrupt count must
    be refused, not turned into a table of billions of defaults (the daemon would die)."""
    tfhd = full(b"tfhd", 0, 0x020038, struct.pack(">IIII", 1, 3600, 4000, NON_SYNC))
    tfdt = full(b"tfdt", 1, 0, struct.pack(">Q", 0))
    mfhd = full(b"mfhd", 0, 0, struct.pack(">I", 1))
    for count in (0xFFFFFFFF, (1 << 20) + 1):
        trun = full(b"trun", 0, 0x001, struct.pack(">Ii", count, 100))  # data offset only
        with pytest.raises(Mp4FormatError, match=f"a trun of {count} samples"):
            parse_fragment(mfhd + box(b"traf", tfhd + tfdt + trun), 0, TRACKS)
    trun = full(b"trun", 0, 0x001, struct.pack(">Ii", 1 << 20, 100))  # at the limit: taken
    [frag] = parse_fragment(mfhd + box(b"traf", tfhd + tfdt + trun), 0, TRACKS)
    assert len(frag.sizes) == 1 << 20


# --- audio kept, sample tables ----------------------------------------------------------------


def test_audio_kept_matches_a_sample_by_sample_walk() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        durations = [rng.choice([0, 1, 1024, 1024, 1024, 2000]) for _ in range(rng.randrange(1, 9))]
        first = rng.randrange(-3000, 3000)
        times = [first + sum(durations[:i]) for i in range(len(durations))]
        stop = rng.randrange(-1000, 12_000)
        last = rng.choice([None, rng.randrange(-2000, 6000)])
        kept, prev = [], last
        for i, at in enumerate(times):  # what clips did, one sample at a time
            if at < 0 or at >= stop or (prev is not None and at <= prev):
                continue
            kept.append(i)
            prev = at
        stretches = _audio_kept(times, min(durations), stop, last)
        assert [i for lo, hi in stretches for i in range(lo, hi)] == kept
        assert all(a[1] < b[0] for a, b in pairwise(stretches))


def test_stts_runs_and_stss_only_when_some_sample_is_not_sync() -> None:
    def runs(durations: list[int]) -> list[int]:
        stts = _stts(durations)
        (n,) = struct.unpack_from(">I", stts, 12)
        return list(struct.unpack_from(f">{2 * n}I", stts, 16))

    assert runs([]) == []
    assert runs([3600] * 5) == [5, 3600]
    assert runs([3600, 3600, 3599, 3601, 3601, 3600]) == [2, 3600, 1, 3599, 2, 3601, 1, 3600]

    def header(sync: list[int] | None) -> bytes:
        layout = TrackLayout(1, b"vide", 90_000, (box(b"avc1", b""),), [5, 6, 7], [3600] * 3,
                             sync, [Chunk(3, 1, 18)], (Edit(10_800, 0),), 16, 16)  # fmt: skip
        return clip_header([layout], [(0, 0)], created_unix_s=0)[0]

    assert b"stss" not in header([1, 2, 3]) and b"stss" not in header(None)
    with_stss = header([1, 3])
    at = with_stss.index(b"stss")  # then version and flags, the count, the sample numbers
    assert struct.unpack_from(">III", with_stss, at + 8) == (2, 1, 3)
