"""Any-range clips assembled from real segment files, checked with ffprobe and ffmpeg.

The recording is made by the real recorder (simulated clock, a looped encoded clip); the
clip is built by ``plan_clip`` and written out through ``Clip.read``, the same reads the
HTTP route and exports use.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nvr.media import VideoCodec
from nvr.storage.clip import ClipCache, NoRecordingError, plan_clip
from nvr.storage.index import Index
from nvr.storage.model import RunEndReason
from support.recorded import Recorded, make_recording
from support.recording import ffprobe_errors, mp4_video_units

SECOND = 90_000
FRAME = SECOND // 25


@pytest.fixture(scope="module")
def eleven_minutes(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return make_recording(tmp_path_factory.mktemp("rec"), 12 * 60, {})


@pytest.fixture(scope="module")
def with_gap(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return make_recording(
        tmp_path_factory.mktemp("gap"), 200, {100.0: (30.0, RunEndReason.TIMEOUT)}
    )


@pytest.fixture
async def index(request: pytest.FixtureRequest) -> AsyncIterator[Index]:
    rec: Recorded = request.getfixturevalue(request.param)
    idx = await Index.open(rec.index_path)
    yield idx
    await idx.close()


async def _write(idx: Index, rec: Recorded, start: int, end: int, out: Path) -> None:
    clip = await plan_clip(idx, rec.root, rec.camera_id, start, end)
    out.write_bytes(b"".join(clip.chunks()))  # noqa: ASYNC240  (a test's own small file)
    assert len(out.read_bytes()) == clip.size_bytes  # noqa: ASYNC240


def _raw_frame(path: Path, *, index: int = 0, seek_s: float | None = None) -> bytes:
    """One decoded picture as raw YUV: the ``index``-th shown, or the first at ``seek_s``."""
    args = ["ffmpeg", "-v", "error"]
    if seek_s is not None:
        args += ["-ss", f"{seek_s:.3f}"]
    args += ["-i", str(path), "-vf", f"select=eq(n\\,{index})", "-frames:v", "1",
             "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, check=True)
    assert out.stdout, out.stderr.decode()
    return out.stdout


def _source_frame(rec: Recorded, wall_90k: int) -> bytes:
    """The recorded picture that starts at ``wall_90k``, decoded from its segment file."""
    from support.recording import IndexReader  # noqa: PLC0415

    seg = next(s for s in IndexReader(rec.index_path).segments(rec.camera_id, "closed")
               if s.start_90k <= wall_90k < (s.end_90k or 0))  # fmt: skip
    return _raw_frame(rec.root / seg.path, index=(wall_90k - seg.start_90k) // FRAME)


def _ffprobe_json(path: Path, *args: str) -> dict[str, object]:
    out = subprocess.run(["ffprobe", "-v", "error", *args, "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("index", ["eleven_minutes"], indirect=True)
async def test_ten_minutes_over_eleven_segments_play_as_one_exact_mp4(
    index: Index, eleven_minutes: Recorded, tmp_path: Path
) -> None:
    rec = eleven_minutes
    t0 = rec.frames[0][0]
    # Mid-GOP and mid-frame: 37.5 s plus 5 ms in, so the keyframe is half a second earlier.
    start = t0 + 37 * SECOND + SECOND // 2 + 450
    end = start + 600 * SECOND
    clip = await plan_clip(index, rec.root, rec.camera_id, start, end)
    assert len(clip.sources) == 11 and clip.gaps == ()
    out = tmp_path / "clip.mp4"
    await _write(index, rec, start, end, out)
    assert ffprobe_errors(out) == ""
    # Duration: the asked range within one frame.
    fmt = _ffprobe_json(out, "-show_format")["format"]
    assert isinstance(fmt, dict)
    assert abs(float(fmt["duration"]) - 600.0) <= 1 / 25
    # Every video packet byte-identical, from the keyframe at or before start to the end.
    key = rec.keyframe_at_or_before(start)
    assert key == t0 + 37 * SECOND
    assert mp4_video_units(out, VideoCodec.H264) == rec.frames_between(key, end)
    # The first picture shown is the recorded frame on screen at `start`, at time 0.
    frames = _ffprobe_json(out, "-select_streams", "v", "-show_entries", "frame=pts_time",
                           "-read_intervals", "%+#40")["frames"]  # fmt: skip
    assert isinstance(frames, list) and float(frames[0]["pts_time"]) == 0.0
    on_screen = start - (start - t0) % FRAME
    assert _raw_frame(out) == _source_frame(rec, on_screen)
    assert clip.delivered_start_90k == on_screen and clip.delivered_end_90k == end


@pytest.mark.parametrize("index", ["eleven_minutes"], indirect=True)
async def test_seeking_into_the_middle_decodes_the_right_picture(
    index: Index, eleven_minutes: Recorded, tmp_path: Path
) -> None:
    rec = eleven_minutes
    start = rec.frames[0][0] + 61 * SECOND + 7 * FRAME
    out = tmp_path / "clip.mp4"
    await _write(index, rec, start, start + 240 * SECOND, out)
    # -ss to 123.2 s: ffmpeg seeks to the keyframe before and decodes forward to the frame.
    assert _raw_frame(out, seek_s=123.2) == _source_frame(rec, start + 123 * SECOND + 5 * FRAME)


@pytest.mark.parametrize("index", ["with_gap"], indirect=True)
async def test_a_range_across_a_gap_skips_it_and_says_where(
    index: Index, with_gap: Recorded, tmp_path: Path
) -> None:
    rec = with_gap
    t0 = rec.frames[0][0]
    start, end = t0 + 50 * SECOND, t0 + 190 * SECOND
    clip = await plan_clip(index, rec.root, rec.camera_id, start, end)
    [gap] = clip.gaps
    assert gap.reason == "timeout" and gap.detail == "test gap"
    assert gap.end_90k - gap.start_90k == 30 * SECOND
    assert len({s.run_id for s in clip.sources}) == 2
    out = tmp_path / "gap.mp4"
    await _write(index, rec, start, end, out)
    assert ffprobe_errors(out) == ""
    fmt = _ffprobe_json(out, "-show_format")["format"]
    assert isinstance(fmt, dict)
    shown = (end - start - (gap.end_90k - gap.start_90k)) / SECOND
    assert abs(float(fmt["duration"]) - shown) <= 1 / 25
    assert mp4_video_units(out, VideoCodec.H264) == rec.frames_between(start, end)
    tags = fmt["tags"]
    assert isinstance(tags, dict)
    meta = json.loads(tags["comment"])
    assert meta["gaps"] == [[gap.start_90k, gap.end_90k, "timeout"]]


@pytest.mark.parametrize("index", ["with_gap"], indirect=True)
async def test_a_range_with_nothing_recorded_is_refused(index: Index, with_gap: Recorded) -> None:
    t0 = with_gap.frames[0][0]
    with pytest.raises(NoRecordingError):
        await plan_clip(index, with_gap.root, "gate", t0 - 600 * SECOND, t0 - 10 * SECOND)


@pytest.mark.parametrize("index", ["eleven_minutes"], indirect=True)
async def test_the_clip_cache_serves_a_repeated_range_and_nothing_else(
    index: Index, eleven_minutes: Recorded
) -> None:
    rec = eleven_minutes
    t0 = rec.frames[0][0]
    cache = ClipCache(size=2)
    a = await plan_clip(index, rec.root, "gate", t0, t0 + 90 * SECOND, cache=cache)
    assert await plan_clip(index, rec.root, "gate", t0, t0 + 90 * SECOND, cache=cache) is a
    b = await plan_clip(index, rec.root, "gate", t0, t0 + 91 * SECOND, cache=cache)
    assert b is not a and b.size_bytes > a.size_bytes
    fresh = await plan_clip(index, rec.root, "gate", t0, t0 + 90 * SECOND)
    assert fresh.header == a.header and fresh.pieces == a.pieces
