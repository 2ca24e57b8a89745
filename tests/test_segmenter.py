"""Rotation policy, and segment files written through PyAV checked with ffprobe and PyAV.

Video is encoded here with libx264/libx265 (no B-frames, a keyframe every 25 frames at
25 fps) into Annex B access units, each with an extra SEI NAL unit, then written through
``SegmentMuxer``; what comes back out of the MP4 must be the same NAL units, byte for byte.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.audio.codeccontext import AudioCodecContext

from nvr.errors import StorageError, StorageFullError
from nvr.media import AudioCodec, AudioFrame, VideoCodec
from nvr.storage import segmenter
from nvr.storage.model import SegmentFile
from nvr.storage.nal_framing import sample_nal_units
from nvr.storage.recovery_file import recover_segment_file, sha256_file
from nvr.storage.segmenter import (
    AudioTrackSpec,
    RotationPolicy,
    SegmentMuxer,
    assign_staggers,
    stagger_offset_90k,
)
from support.media import Clip, encode_clip

FRAME_90K = 3600  # 25 fps
GOP = 25
SECOND = 90_000

needs_ffprobe = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe missing")

# --- rotation policy ---------------------------------------------------------------------


def test_a_site_gets_distinct_seconds_stable_when_cameras_are_added() -> None:
    segment = 60 * SECOND
    ids = [f"ward7-cam-{i:02d}" for i in range(16)]
    site = assign_staggers(ids, segment)
    assert len({v // SECOND for v in site.values()}) == 16
    assert all(v % SECOND == 0 and 0 <= v < segment for v in site.values())
    bigger = assign_staggers([*ids, "ward7-cam-99"], segment)
    moved = [c for c in ids if bigger[c] != site[c]]
    assert len(moved) <= 1  # hashed seconds hold; only a probed-past camera can shift
    crowded = assign_staggers([f"c{i}" for i in range(5)], 3 * SECOND)  # more cameras than s
    assert set(crowded.values()) <= {0, SECOND, 2 * SECOND}


def test_cameras_added_by_a_reload_fit_around_the_recording_ones() -> None:
    segment = 60 * SECOND
    running = {"gate": 7 * SECOND, "yard": 8 * SECOND}  # whatever they got at start
    clash = next(f"new-{i}" for i in range(1000)
                 if stagger_offset_90k(f"new-{i}", segment) == 7 * SECOND)  # fmt: skip
    out = assign_staggers([*running, clash], segment, fixed=running)
    assert out["gate"] == 7 * SECOND and out["yard"] == 8 * SECOND
    assert out[clash] == 9 * SECOND  # the next free second after its hashed one


def test_stagger_is_stable_whole_seconds_and_spreads_cameras() -> None:
    segment = 60 * SECOND
    offsets = [stagger_offset_90k(f"cam-{i:02d}", segment) for i in range(16)]
    assert offsets == [stagger_offset_90k(f"cam-{i:02d}", segment) for i in range(16)]
    assert all(0 <= o < segment and o % SECOND == 0 for o in offsets)
    assert len(set(offsets)) >= 12  # a hash, not an allocation: a shared second may happen
    # Over many cameras every second of the minute gets used, none much more than others.
    counts = [0] * 60
    for i in range(6000):
        counts[stagger_offset_90k(f"camera-{i}", segment) // SECOND] += 1
    assert min(counts) > 60 and max(counts) < 140


def test_rotation_only_at_keyframes_after_the_boundary() -> None:
    policy = RotationPolicy(60 * SECOND, 7 * SECOND)
    start = 1000 * 60 * SECOND + 30 * SECOND  # grid: ..., k*60s + 7s, ...
    boundary = policy.boundary_after(start)
    assert boundary == 1001 * 60 * SECOND + 7 * SECOND
    assert not policy.should_rotate(start, boundary - 1, True, False)
    assert not policy.should_rotate(start, boundary, False, False)
    assert not policy.should_rotate(start, boundary + 10 * SECOND, False, False)
    assert policy.should_rotate(start, boundary, True, False)
    assert policy.should_rotate(start, boundary + 2 * SECOND, True, False)
    # A segment that starts exactly on the grid runs a whole length.
    assert policy.boundary_after(boundary) == boundary + 60 * SECOND


def test_new_parameters_force_rotation_at_their_keyframe() -> None:
    policy = RotationPolicy(60 * SECOND)
    assert policy.should_rotate(0, SECOND, True, True)
    assert not policy.should_rotate(0, SECOND, False, True)


def test_no_keyframe_for_long_keeps_writing_and_says_overdue() -> None:
    policy = RotationPolicy(10 * SECOND)
    assert not policy.should_rotate(0, 100 * SECOND, False, False)
    assert not policy.overdue(0, 30 * SECOND - 1)
    assert policy.overdue(0, 30 * SECOND)
    with pytest.raises(ValueError, match="positive"):
        RotationPolicy(0)


# --- media fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def h264_clip() -> Clip:
    return encode_clip(VideoCodec.H264, 110)


@pytest.fixture(scope="module")
def h265_clip() -> Clip:
    return encode_clip(VideoCodec.H265, 60)


def aac_frames(rate: int, count: int) -> tuple[bytes, list[AudioFrame]]:
    enc = av.CodecContext.create("aac", "w")
    assert isinstance(enc, AudioCodecContext)
    enc.sample_rate, enc.layout, enc.format = rate, "mono", "fltp"
    enc.time_base = Fraction(1, rate)
    enc.open()
    config = bytes(enc.extradata or b"")
    frames = []
    for i in range(count + 2):
        f = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        f.sample_rate, f.pts = rate, i * 1024
        f.planes[0].update(
            b"".join(struct.pack("<f", 0.3 * math.sin((i * 1024 + j) / 9)) for j in range(1024))
        )
        for p in enc.encode(f):
            frames.append(AudioFrame(AudioCodec.AAC, 0, rate, 1, 1024, bytes(p), config))
    return config, frames[:count]


def alaw_frames(count: int, samples: int = 160) -> list[AudioFrame]:
    enc = av.CodecContext.create("pcm_alaw", "w")
    assert isinstance(enc, AudioCodecContext)
    enc.sample_rate, enc.layout, enc.format = 8000, "mono", "s16"
    enc.time_base = Fraction(1, 8000)
    out = []
    for i in range(count):
        f = av.AudioFrame(format="s16", layout="mono", samples=samples)
        f.sample_rate, f.pts = 8000, i * samples
        f.planes[0].update(
            b"".join(
                struct.pack("<h", int(9000 * math.sin((i * samples + j) / 5)))
                for j in range(samples)
            )
        )
        out += [AudioFrame(AudioCodec.PCMA, 0, 8000, 1, samples, bytes(p)) for p in enc.encode(f)]
    return out


def write_segment(
    path: Path,
    clip: Clip,
    frames: int | None = None,
    audio: AudioTrackSpec | None = None,
    audio_frames: list[AudioFrame] | None = None,
    max_fragment_90k: int = 45_000,
) -> SegmentFile:
    muxer = SegmentMuxer(path, clip.params, audio, max_fragment_90k)
    pending = list(audio_frames or [])
    audio_pts = 0
    for i in range(frames or len(clip.units)):
        muxer.write_video(clip.units[i][0], i * FRAME_90K, FRAME_90K, clip.units[i][1])
        # Audio up to this frame's time, the way a live stream interleaves.
        while pending and audio_pts * SECOND <= i * FRAME_90K * pending[0].clock_rate:
            frame = pending.pop(0)
            muxer.write_audio(frame, audio_pts)
            audio_pts += frame.samples
    return muxer.close()


def ffprobe(path: Path, *args: str) -> dict[str, list[dict[str, object]]]:
    """ffprobe's JSON; ``-v error`` output must be empty (no complaint at all)."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stderr == ""
    parsed: dict[str, list[dict[str, object]]] = json.loads(result.stdout)
    return parsed


def check_file_facts(path: Path, facts: SegmentFile) -> None:
    assert facts.size_bytes == path.stat().st_size
    assert facts.sha256 == sha256_file(path)
    frags = facts.fragments
    for a, b in itertools.pairwise(frags):
        assert a.byte_offset + a.size_bytes == b.byte_offset
    assert frags[-1].byte_offset + frags[-1].size_bytes == facts.size_bytes


# --- video -------------------------------------------------------------------------


@needs_ffprobe
@pytest.mark.parametrize("codec", [VideoCodec.H264, VideoCodec.H265])
def test_video_is_stored_byte_for_byte(
    codec: VideoCodec, h264_clip: Clip, h265_clip: Clip, tmp_path: Path
) -> None:
    clip = h264_clip if codec is VideoCodec.H264 else h265_clip
    path = tmp_path / "seg.mp4"
    facts = write_segment(path, clip)
    n = len(clip.units)
    assert (facts.video_frames, facts.media_duration_90k) == (n, n * FRAME_90K)
    check_file_facts(path, facts)

    probe = ffprobe(
        path,
        "-count_packets",
        "-show_entries",
        "stream=codec_name,codec_tag_string,nb_read_packets,duration_ts,time_base",
    )
    (stream,) = probe["streams"]
    assert stream["codec_name"] == ("h264" if codec is VideoCodec.H264 else "hevc")
    assert stream["codec_tag_string"] == ("avc1" if codec is VideoCodec.H264 else "hvc1")
    assert int(str(stream["nb_read_packets"])) == n
    assert stream["time_base"] == "1/90000" and stream["duration_ts"] == n * FRAME_90K

    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert [tuple(sample_nal_units(bytes(p))) for p in packets] == [u[0] for u in clip.units]
    assert [(p.pts, p.dts, p.duration, p.is_keyframe) for p in packets] == [
        (i * FRAME_90K, i * FRAME_90K, FRAME_90K, clip.units[i][1]) for i in range(n)
    ]
    # Every NAL kind survived: AUD, parameter sets in-band, SEI (x264's and ours).
    kinds = {
        nal[0] & 0x1F if codec is VideoCodec.H264 else (nal[0] >> 1) & 0x3F
        for unit in clip.units
        for nal in unit[0]
    }
    assert kinds >= ({9, 7, 8, 6, 5, 1} if codec is VideoCodec.H264 else {35, 32, 33, 34, 39})


@needs_ffprobe
def test_fragments_at_every_keyframe_and_no_longer_than_the_limit(
    h264_clip: Clip, tmp_path: Path
) -> None:
    path = tmp_path / "seg.mp4"
    limit = 40_000  # shorter than a GOP and not a multiple of the frame time
    facts = write_segment(path, h264_clip, max_fragment_90k=limit)
    starts = [f.media_start_90k for f in facts.fragments]
    keyframes = [i * FRAME_90K for i, (_, key) in enumerate(h264_clip.units) if key]
    assert [f.media_start_90k for f in facts.fragments if f.keyframe] == keyframes
    assert set(keyframes) <= set(starts)
    ends = [*starts[1:], facts.media_duration_90k]
    # A fragment ends at the first frame at or past the limit: never more than one frame over.
    assert all(0 < end - start < limit + FRAME_90K for start, end in zip(starts, ends, strict=True))
    assert len(facts.fragments) > len(keyframes)


def test_first_frame_must_be_a_keyframe_at_zero(h264_clip: Clip, tmp_path: Path) -> None:
    muxer = SegmentMuxer(tmp_path / "seg.mp4", h264_clip.params)
    with pytest.raises(ValueError, match="keyframe at pts 0"):
        muxer.write_video(h264_clip.units[1][0], 0, FRAME_90K, False)
    muxer.write_video(h264_clip.units[0][0], 0, FRAME_90K, True)
    with pytest.raises(ValueError, match="overlaps"):
        muxer.write_video(h264_clip.units[1][0], FRAME_90K - 1, FRAME_90K, False)
    muxer.abort()


def test_video_without_dimensions_is_refused(h264_clip: Clip, tmp_path: Path) -> None:
    params = dataclasses.replace(h264_clip.params, width=None)
    with pytest.raises(StorageError, match="without width/height"):
        SegmentMuxer(tmp_path / "seg.mp4", params)
    assert not (tmp_path / "seg.mp4").exists()


def test_disk_full_is_a_storage_full_error(
    h264_clip: Clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = segmenter._FileSink.write

    def write(sink: segmenter._FileSink, data: bytes) -> int:
        if sink.size + len(data) > 20_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(sink, data)

    monkeypatch.setattr(segmenter._FileSink, "write", write)
    path = tmp_path / "seg.mp4"
    muxer = SegmentMuxer(path, h264_clip.params)
    with pytest.raises(StorageFullError, match="No space left"):
        for i, (nals, key) in enumerate(h264_clip.units):
            muxer.write_video(nals, i * FRAME_90K, FRAME_90K, key)
    muxer.abort()
    recovered = recover_segment_file(path)
    assert recovered is not None and recovered.size_bytes <= 20_000


def test_an_existing_file_is_never_overwritten(h264_clip: Clip, tmp_path: Path) -> None:
    path = tmp_path / "seg.mp4"
    path.write_bytes(b"precious")
    with pytest.raises(StorageError, match="cannot create"):
        SegmentMuxer(path, h264_clip.params)
    assert path.read_bytes() == b"precious"


# --- audio ------------------------------------------------------------------------


@needs_ffprobe
def test_aac_is_copied_as_is(h264_clip: Clip, tmp_path: Path) -> None:
    config, frames = aac_frames(16000, 60)
    spec = AudioTrackSpec(AudioCodec.AAC, 16000, 1, config, "copy")
    path = tmp_path / "seg.mp4"
    facts = write_segment(path, h264_clip, audio=spec, audio_frames=frames)
    assert facts.media_duration_90k == len(h264_clip.units) * FRAME_90K
    check_file_facts(path, facts)
    probe = ffprobe(
        path,
        "-count_packets",
        "-show_entries",
        "stream=codec_type,codec_name,sample_rate,nb_read_packets,start_pts",
    )
    video, audio = probe["streams"]
    assert (video["codec_name"], video["start_pts"]) == ("h264", 0)
    assert (audio["codec_name"], audio["sample_rate"], audio["start_pts"]) == ("aac", "16000", 0)
    assert audio["nb_read_packets"] == str(len(frames))
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.extradata == config
        got = [bytes(p) for p in container.demux(audio=0) if p.size]
    assert got == [f.data for f in frames]


@needs_ffprobe
def test_g711_is_transcoded_to_aac(h264_clip: Clip, tmp_path: Path) -> None:
    frames = alaw_frames(200)  # 4 s of 20 ms packets
    del frames[50:60]  # a 200 ms hole: filled with silence
    spec = AudioTrackSpec(AudioCodec.PCMA, 8000, 1, None, "aac")
    path = tmp_path / "seg.mp4"
    muxer = SegmentMuxer(path, h264_clip.params, spec)
    for i in range(100):
        muxer.write_video(h264_clip.units[i][0], i * FRAME_90K, FRAME_90K, h264_clip.units[i][1])
    for j, frame in enumerate(frames):
        muxer.write_audio(frame, (j if j < 50 else j + 10) * 160)
    muxer.write_audio(frames[0], 0)  # out of order: dropped, counted
    muxer.write_audio(dataclasses.replace(frames[0], codec=AudioCodec.PCMU), 200 * 160)
    assert muxer.audio_frames_dropped == 2
    facts = muxer.close()
    assert facts.media_duration_90k == 100 * FRAME_90K
    probe = ffprobe(path, "-show_entries", "stream=codec_name,sample_rate,duration_ts,start_pts")
    video, audio = probe["streams"]
    assert (video["start_pts"], video["duration_ts"]) == (0, 100 * FRAME_90K)
    assert (audio["codec_name"], audio["sample_rate"]) == ("aac", "8000")
    # 4 s in, 4 s out (to an AAC frame; the priming frame before 0 is not stored).
    assert abs(int(str(audio["duration_ts"])) - 200 * 160) <= 1024
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert decoded.stderr == ""


def test_audio_spec_refuses_g711_copy() -> None:
    with pytest.raises(ValueError, match="copied"):
        AudioTrackSpec(AudioCodec.PCMU, 8000, 1, None, "copy")


# --- crash recovery ---------------------------------------------------------------------


@needs_ffprobe
def test_recovery_keeps_exactly_the_whole_fragments(h264_clip: Clip, tmp_path: Path) -> None:
    closed = tmp_path / "closed.mp4"
    facts = write_segment(closed, h264_clip, frames=60)
    data = closed.read_bytes()
    init_end = facts.fragments[0].byte_offset
    cuts = {10, init_end - 1, init_end, init_end + 5, len(data)}
    for frag in facts.fragments:
        start, end = frag.byte_offset, frag.byte_offset + frag.size_bytes
        cuts |= {start + 1, start + 30, (start + end) // 2, end - 1, end, end + 9}
    for cut in sorted(c for c in cuts if c <= len(data)):
        path = tmp_path / f"cut-{cut}.mp4"
        path.write_bytes(data[:cut])
        recovered = recover_segment_file(path)
        if cut < init_end:
            assert recovered is None, cut
            assert path.stat().st_size == cut  # left as it was
            continue
        kept = tuple(f for f in facts.fragments if f.byte_offset + f.size_bytes <= cut)
        assert recovered is not None
        assert recovered.fragments == kept, cut
        size = kept[-1].byte_offset + kept[-1].size_bytes if kept else init_end
        assert recovered.size_bytes == size == path.stat().st_size
        assert path.read_bytes() == data[:size]
        assert recovered.sha256 == sha256_file(path)
        if cut == len(data):
            assert recovered == facts  # a whole file is left as it is
        if kept:
            probe = ffprobe(path, "-count_packets", "-show_entries", "stream=nb_read_packets")
            assert probe["streams"][0]["nb_read_packets"] == str(recovered.video_frames)
            assert recovered.media_duration_90k == recovered.video_frames * FRAME_90K
        path.unlink()


_CHILD = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}]
from test_segmenter import FRAME_90K, SECOND, aac_frames, encode_clip
from nvr.media import AudioCodec, VideoCodec
from nvr.storage.segmenter import AudioTrackSpec, SegmentMuxer
clip = encode_clip(VideoCodec.H264, {frames})
audio_frames = {{"none": 0, "live": 100, "stalled": 8}}[{audio!r}]
config, audio = aac_frames(16000, audio_frames)
spec = AudioTrackSpec(AudioCodec.AAC, 16000, 1, config, "copy") if audio else None
muxer = SegmentMuxer(Path({path!r}), clip.params, spec)
audio_pts = 0
for i in range({frames}):
    muxer.write_video(clip.units[i][0], i * FRAME_90K, FRAME_90K, clip.units[i][1])
    while audio and audio_pts * SECOND <= i * FRAME_90K * 16000:
        muxer.write_audio(audio.pop(0), audio_pts)
        audio_pts += 1024
    print(i + 1, flush=True)
    if i + 1 == {stop}:
        sys.stdin.read()  # wait here to be killed
"""


@needs_ffprobe
@pytest.mark.parametrize("audio", ["none", "live", "stalled"])
@pytest.mark.parametrize("stop", [26, 37, 50, 61])
def test_sigkill_loses_at_most_one_second(stop: int, audio: str, tmp_path: Path) -> None:
    """Kill the writer mid-stream; what recovery keeps is within a second of what it got.

    ``stalled``: the audio track stops after half a second, so video packets wait in the
    muxer's interleaving queue for audio that never comes (bounded by the muxer options).
    """
    path = tmp_path / "seg.mp4"
    code = _CHILD.format(
        tests=str(Path(__file__).parent),
        frames=80,
        path=str(path),
        stop=stop,
        audio=audio,
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.stdout is not None
    handed = 0
    for line in child.stdout:
        handed = int(line)
        if handed == stop:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    recovered = recover_segment_file(path)
    assert recovered is not None
    lost_90k = handed * FRAME_90K - recovered.media_duration_90k
    print(
        f"handed {handed * FRAME_90K / SECOND:.2f}s, "
        f"kept {recovered.media_duration_90k / SECOND:.2f}s, lost {lost_90k / SECOND:.2f}s"
    )
    assert 0 <= lost_90k <= SECOND
    ffprobe(path)
