"""Long recordings made fast: a clip fed through the real recorder with a simulated clock.

The same path as live recording (recorder, writer thread, PyAV, files, index); only the frames
come from an encoded clip, looped, and wall time from an injected clock. Minutes of video take
seconds to make, so playback and export tests can ask for real 10-minute and 1-hour ranges.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import av

from nvr.clock import SimulatedClock
from nvr.media import VideoAccessUnit, VideoCodec
from nvr.storage.index import Index
from nvr.storage.model import RunEndReason
from nvr.storage.nal_framing import sample_nal_units
from nvr.storage.recorder import Recorder
from support.media import Clip, encode_clip
from support.recording import IndexReader


@dataclass(frozen=True)
class Recorded:
    root: Path
    index_path: Path
    camera_id: str
    frame_90k: int
    # (wall start, NAL units, keyframe) of every frame recorded, in order, from the segments.
    frames: list[tuple[int, tuple[bytes, ...], bool]]

    def frames_between(self, start_90k: int, end_90k: int) -> list[tuple[bytes, ...]]:
        return [u for t, u, _ in self.frames if start_90k <= t < end_90k]

    def keyframe_at_or_before(self, t_90k: int) -> int:
        return max(t for t, _, key in self.frames if key and t <= t_90k)


async def record_clip(
    root: Path,
    clip: Clip,
    *,
    seconds: float,
    fps: int = 25,
    segment_seconds: int = 60,
    gaps: dict[float, tuple[float, RunEndReason]] | None = None,
    camera_id: str = "gate",
    wall_start_ns: int = 1_795_897_600 * 10**9,  # 2026-11-28T20:26:40Z
) -> Index:
    """Record ``seconds`` of the looped clip; ``gaps`` maps a time (s) to (gap length, reason).

    Returns the open index; the caller closes it.
    """
    clock = SimulatedClock(wall_ns=wall_start_ns)
    index = await Index.open(root / "index.db", clock=clock)
    await index.upsert_camera(camera_id, "Gate", "rtsp://127.0.0.1/cam")
    rec = Recorder(camera_id, root=root, index=index, clock=clock,
                   segment_seconds=segment_seconds, writer_queue_frames=10_000)  # fmt: skip
    rec.begin_session(None, "off")
    frame_ns = 10**9 // fps
    frame_90k = 90_000 // fps
    pending = sorted((gaps or {}).items())
    n = int(seconds * fps)
    ts = 1000
    for i in range(n):
        if pending and i >= pending[0][0] * fps and clip.units[i % len(clip.units)][1]:
            _, (length_s, reason) = pending.pop(0)
            await rec.end_run(reason, "test gap")
            clock.advance(int(length_s * 10**9))
            ts += int(length_s * 90_000)
        clock.advance(frame_ns)
        nals, key = clip.units[i % len(clip.units)]
        au = VideoAccessUnit(
            timestamp=ts & 0xFFFF_FFFF, nal_units=nals, is_keyframe=key,
            parameters=clip.params, new_parameters=i == 0, loss_before=False,
        )  # fmt: skip
        await rec.video(au, clock.monotonic_ns())
        ts += frame_90k
    await rec.end_run(RunEndReason.SHUTDOWN)
    await rec.close()
    return index


def recorded_frames(root: Path, index_path: Path, camera_id: str = "gate") -> Recorded:
    """Every frame in the closed segments with its wall time, read back from the files."""
    frames: list[tuple[int, tuple[bytes, ...], bool]] = []
    reader = IndexReader(index_path)
    for seg in reader.segments(camera_id, "closed"):
        with av.open(str(root / seg.path)) as container:
            stream = container.streams.video[0]
            extradata = stream.codec_context.extradata
            assert extradata is not None and stream.time_base is not None
            size = (extradata[4] & 3) + 1  # avcC lengthSizeMinusOne
            for p in container.demux(stream):
                if p.size and p.pts is not None:
                    t = seg.start_90k + int(p.pts * stream.time_base * 90_000)
                    frames.append((t, tuple(sample_nal_units(bytes(p), size)), p.is_keyframe))
    step = frames[1][0] - frames[0][0]
    return Recorded(root, index_path, camera_id, step, frames)


def make_recording(
    root: Path, seconds: float, gaps: dict[float, tuple[float, RunEndReason]] | None = None
) -> Recorded:
    """For module fixtures (no event loop of their own): record ``seconds`` of a 13-s looped
    H.264 clip (so no two 60-s segments are alike) into ``root`` and read it back."""
    clip = encode_clip(VideoCodec.H264, 325)

    async def go() -> None:
        await (await record_clip(root, clip, seconds=seconds, gaps=gaps)).close()

    asyncio.run(go())
    return recorded_frames(root, root / "index.db")
