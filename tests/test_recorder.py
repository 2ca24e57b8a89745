"""The recorder fed from a clip faster than real time, with a simulated clock.

The same path as live recording (recorder -> writer thread -> PyAV -> files, and the index),
only the frames come from an encoded clip and the wall times from an injected clock.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from nvr.clock import SimulatedClock
from nvr.media import VideoAccessUnit, VideoCodec
from nvr.storage.index import Index
from nvr.storage.model import RunEndReason
from nvr.storage.recorder import Recorder
from nvr.storage.segmenter import stagger_offset_90k
from support.media import Clip, encode_clip
from support.recording import IndexReader, ffprobe_errors, mp4_video_units

FRAME_90K = 3600
FRAME_NS = 40_000_000
SEGMENT_S = 2


@pytest.fixture(scope="module")
def clip() -> Clip:
    return encode_clip(VideoCodec.H264, 300)


def unit(clip: Clip, i: int, timestamp: int, *, new_parameters: bool = False) -> VideoAccessUnit:
    nals, key = clip.units[i]
    return VideoAccessUnit(
        timestamp=timestamp & 0xFFFF_FFFF,
        nal_units=nals,
        is_keyframe=key,
        parameters=clip.params,
        new_parameters=new_parameters or i == 0,
        loss_before=False,
    )


async def feed(
    tmp_path: Path, clip: Clip, timestamps: list[int], new_params_at: frozenset[int] = frozenset()
) -> IndexReader:
    clock = SimulatedClock()
    index = await Index.open(tmp_path / "index.db", clock=clock)
    await index.upsert_camera("cam", "test", "file")
    rec = Recorder(
        "cam", root=tmp_path, index=index, clock=clock, segment_seconds=SEGMENT_S,
        writer_queue_frames=1000,
    )  # fmt: skip
    rec.begin_session(None, "off")
    for i, ts in enumerate(timestamps):
        clock.advance(FRAME_NS)
        await rec.video(unit(clip, i, ts, new_parameters=i in new_params_at), clock.monotonic_ns())
    await rec.end_run(RunEndReason.SHUTDOWN)
    await rec.close()
    await index.close()
    return IndexReader(tmp_path / "index.db")


def recorded_units(tmp_path: Path, reader: IndexReader) -> list[tuple[bytes, ...]]:
    out: list[tuple[bytes, ...]] = []
    for seg in reader.segments("cam"):
        path = tmp_path / seg.path
        assert ffprobe_errors(path) == ""
        out += mp4_video_units(path, VideoCodec.H264)
    return out


async def test_segments_rotate_on_the_staggered_grid_and_touch(tmp_path: Path, clip: Clip) -> None:
    base = 0xFFFF_0000  # wraps within the clip: unwrapping is exercised too
    reader = await feed(tmp_path, clip, [base + i * FRAME_90K for i in range(300)])
    segments = reader.segments("cam")
    runs = reader.runs("cam")
    assert len(runs) == 1 and runs[0].end_reason == "shutdown"
    assert all(s.state == "closed" for s in segments)
    assert sum(s.video_frames or 0 for s in segments) == 300
    # Contiguous in exact ticks; the run spans exactly 300 frames of media.
    for a, b in itertools.pairwise(segments):
        assert a.end_90k == b.start_90k
    assert runs[0].start_90k == segments[0].start_90k
    assert runs[0].end_90k == segments[-1].end_90k
    assert sum(s.media_duration_90k or 0 for s in segments) == 300 * FRAME_90K
    # Rotation at the first keyframe at or after each grid line (keyframes every 25 frames).
    offset = stagger_offset_90k("cam", SEGMENT_S * 90_000)
    for seg in segments[1:]:
        assert (seg.start_90k - offset) % (SEGMENT_S * 90_000) < 25 * FRAME_90K
    for seg in segments[1:-1]:
        assert seg.media_duration_90k is not None
        assert seg.media_duration_90k >= SEGMENT_S * 90_000 - 25 * FRAME_90K
    assert recorded_units(tmp_path, reader) == [u for u, _ in clip.units]


async def test_a_clock_step_back_ends_the_run_and_keeps_every_frame(
    tmp_path: Path, clip: Clip
) -> None:
    # At frame 150 (a keyframe) the camera's RTP clock restarts near zero.
    timestamps = [5_000_000 + i * FRAME_90K for i in range(150)]
    timestamps += [1000 + i * FRAME_90K for i in range(150)]
    reader = await feed(tmp_path, clip, timestamps)
    runs = reader.runs("cam")
    assert [r.end_reason for r in runs] == ["clock_jump", "shutdown"]
    assert runs[0].end_detail is not None and "stepped back" in runs[0].end_detail
    assert runs[0].end_90k is not None and runs[1].start_90k >= runs[0].end_90k
    assert recorded_units(tmp_path, reader) == [u for u, _ in clip.units]


async def test_new_parameters_cut_a_segment_at_their_keyframe(tmp_path: Path, clip: Clip) -> None:
    reader = await feed(
        tmp_path, clip, [i * FRAME_90K for i in range(100)], new_params_at=frozenset({75})
    )
    starts_at_frame = []
    frame = 0
    for seg in reader.segments("cam"):
        starts_at_frame.append(frame)
        frame += seg.video_frames or 0
    assert 75 in starts_at_frame, starts_at_frame
    assert len(reader.runs("cam")) == 1


async def test_two_pictures_with_one_timestamp_are_both_kept(tmp_path: Path, clip: Clip) -> None:
    timestamps = [i * FRAME_90K for i in range(60)]
    timestamps[31] = timestamps[30]  # the camera repeats a timestamp
    reader = await feed(tmp_path, clip, timestamps)
    assert [r.end_reason for r in reader.runs("cam")] == ["shutdown"]
    assert recorded_units(tmp_path, reader) == [u for u, _ in clip.units[:60]]
    assert sum(s.media_duration_90k or 0 for s in reader.segments("cam")) == 60 * FRAME_90K


async def test_packet_loss_leaves_a_gap_not_a_long_frame(tmp_path: Path, clip: Clip) -> None:
    clock = SimulatedClock()
    index = await Index.open(tmp_path / "index.db", clock=clock)
    await index.upsert_camera("cam", "test", "file")
    rec = Recorder("cam", root=tmp_path, index=index, clock=clock, segment_seconds=SEGMENT_S,
                   writer_queue_frames=1000)  # fmt: skip
    rec.begin_session(None, "off")
    for i in range(100):
        clock.advance(FRAME_NS)
        if 30 <= i < 50:
            continue  # lost on the way; the depacketizer resumes at keyframe 50
        au = unit(clip, i, i * FRAME_90K)
        if i == 50:
            au = VideoAccessUnit(au.timestamp, au.nal_units, au.is_keyframe, au.parameters,
                                 au.new_parameters, loss_before=True)  # fmt: skip
        await rec.video(au, clock.monotonic_ns())
    await rec.end_run(RunEndReason.SHUTDOWN)
    await rec.close()
    await index.close()
    reader = IndexReader(tmp_path / "index.db")
    first, second = reader.runs("cam")
    assert first.end_reason == "packet_loss" and second.end_reason == "shutdown"
    assert first.end_90k is not None
    # Frame 29 keeps the usual duration; the 20 lost frames (0.8 s) are the gap.
    assert second.start_90k - first.end_90k == 20 * FRAME_90K
    assert sum(s.video_frames or 0 for s in reader.segments("cam")) == 80


async def _recorder(tmp_path: Path, clock: SimulatedClock) -> tuple[Index, Recorder]:
    index = await Index.open(tmp_path / "index.db", clock=clock)
    await index.upsert_camera("cam", "test", "file")
    rec = Recorder("cam", root=tmp_path, index=index, clock=clock, segment_seconds=SEGMENT_S,
                   writer_queue_frames=1000)  # fmt: skip
    rec.begin_session(None, "off")
    return index, rec


async def test_shutdown_in_the_middle_of_a_rotation_ends_the_run_where_recording_ended(
    tmp_path: Path, clip: Clip
) -> None:
    clock = SimulatedClock()
    index, rec = await _recorder(tmp_path, clock)
    i = 0
    while rec.stats().segments_closed == 0:
        clock.advance(FRAME_NS)
        key = clip.units[i][1]
        if key and i > 0 and rec.stats().frames >= 40:
            # This keyframe rotates: stop the recorder while the old segment is being closed.
            rotating = rec.video(unit(clip, i, i * FRAME_90K), clock.monotonic_ns())
            task = asyncio.create_task(rotating)
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            break
        await rec.video(unit(clip, i, i * FRAME_90K), clock.monotonic_ns())
        i += 1
    await rec.end_run(RunEndReason.SHUTDOWN)
    await rec.close()
    await index.close()
    reader = IndexReader(tmp_path / "index.db")
    [run] = reader.runs("cam")
    segments = reader.segments("cam")
    assert all(s.state == "closed" for s in segments)
    assert run.end_90k == segments[-1].end_90k and run.end_90k is not None
    assert run.end_90k > run.start_90k


@pytest.mark.parametrize("step", ["start_run", "open_segment"])
async def test_shutdown_during_an_index_insert_leaves_no_open_row(
    tmp_path: Path, clip: Clip, step: str
) -> None:
    # The cancel lands after the row is committed but before the insert returns: the
    # recorder must still know the row, so end_run closes it (and no file is missing).
    clock = SimulatedClock()
    index, rec = await _recorder(tmp_path, clock)
    real = getattr(index, step)
    inserted, release = asyncio.Event(), asyncio.Event()
    armed = step == "start_run"

    async def held(*args: object, **kwargs: object) -> object:
        result = await real(*args, **kwargs)
        if armed:
            inserted.set()
            await release.wait()
        return result

    setattr(index, step, held)
    i = 0
    while True:
        clock.advance(FRAME_NS)
        key = clip.units[i][1]
        if step == "open_segment" and key and i > 0 and rec.stats().frames >= 40:
            armed = True  # this keyframe rotates: hold the new segment's insert
        if armed:
            task = asyncio.create_task(
                rec.video(unit(clip, i, i * FRAME_90K), clock.monotonic_ns())
            )
            await inserted.wait()
            task.cancel()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            break
        await rec.video(unit(clip, i, i * FRAME_90K), clock.monotonic_ns())
        i += 1
    await rec.end_run(RunEndReason.SHUTDOWN)
    await rec.close()
    await index.close()
    reader = IndexReader(tmp_path / "index.db")
    [run] = reader.runs("cam")
    assert run.end_reason == "shutdown"
    segments = reader.segments("cam")
    assert all(s.state == "closed" for s in segments)
    for seg in segments:
        assert ffprobe_errors(tmp_path / seg.path) == ""
    if step == "open_segment":
        # The keyframe that opened the new segment was kept in it: every frame fed is recorded.
        assert len(segments) == 2 and segments[-1].video_frames == 1
        assert recorded_units(tmp_path, reader) == [u for u, _ in clip.units[: i + 1]]
        assert run.end_90k == segments[-1].end_90k


async def test_rtcp_sender_report_stores_the_camera_clock_offset(
    tmp_path: Path, clip: Clip
) -> None:
    clock = SimulatedClock()
    index, rec = await _recorder(tmp_path, clock)
    for i in range(10):
        clock.advance(FRAME_NS)
        await rec.video(unit(clip, i, 1000 + i * FRAME_90K), clock.monotonic_ns())
    # The camera says RTP time of frame 5 was at our wall time of frame 5, plus 7.25 s.
    frame5_wall_ns = SimulatedClock().wall_ns() + 6 * FRAME_NS
    await rec.sender_report(frame5_wall_ns + 7_250_000_000, 1000 + 5 * FRAME_90K)
    await rec.sender_report(frame5_wall_ns, 1000 + 5 * FRAME_90K)  # only the first counts
    await rec.end_run(RunEndReason.SHUTDOWN)
    await rec.close()
    await index.close()
    [run] = IndexReader(tmp_path / "index.db").runs("cam")
    assert run.clock_offset_ns is not None
    assert abs(run.clock_offset_ns - 7_250_000_000) < 100_000


async def test_stats_report_codec_size_frame_rate_and_bitrate(tmp_path: Path, clip: Clip) -> None:
    clock = SimulatedClock()
    index, rec = await _recorder(tmp_path, clock)
    for i in range(150):  # 6 s at 25 fps; the window keeps the last 5 s
        clock.advance(FRAME_NS)
        await rec.video(unit(clip, i, i * FRAME_90K), clock.monotonic_ns())
    st = rec.stats()
    await rec.end_run(RunEndReason.SHUTDOWN)
    await rec.close()
    await index.close()
    assert (st.codec, st.width, st.height) == ("h264", 128, 72)
    assert st.fps == 25.0 and st.run_id is not None
    window = [sum(len(n) for n in clip.units[i][0]) for i in range(150 - 125, 150)]
    assert st.bitrate_kbps == sum(window) * 8 * 10**6 // (125 * FRAME_NS)  # 125 intervals
