"""Clips of live recordings from the simulated camera: H.265, and H.264 with AAC audio copied."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from nvr.media import VideoCodec
from nvr.storage.clip import plan_clip
from nvr.storage.index import Index
from support.fakecam import FakeCam
from support.recording import (
    IndexReader,
    camera_toml,
    ffprobe_errors,
    ffprobe_streams,
    make_config,
    mp4_video_units,
    record_until,
)

pytestmark = pytest.mark.rtsp


def _packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as container:
        streams = container.streams.audio if kind == "audio" else container.streams.video
        return [bytes(p) for p in container.demux(streams[0]) if p.size]


@pytest.mark.parametrize(("mount", "codec", "audio"), [
    ("/file/h264-aac", VideoCodec.H264, "aac"),
    ("/file/h265", VideoCodec.H265, None),
])  # fmt: skip
async def test_a_clip_across_live_segments_keeps_every_sample(
    cam_none: FakeCam, tmp_path: Path, mount: str, codec: VideoCodec, audio: str | None
) -> None:
    cfg = make_config(tmp_path, camera_toml("cam", cam_none.url(mount), audio="copy"))
    await record_until(cfg, "4 closed segments",
                       lambda r: len(r.segments("cam", "closed")) >= 4)  # fmt: skip
    segs = IndexReader(cfg.storage.index_path).segments("cam", "closed")
    first, last = segs[0], segs[-1]
    assert first.end_90k is not None and last.end_90k is not None
    # From the start of the first segment to the end of the last: every sample, both tracks.
    async with await Index.open(cfg.storage.index_path) as index:
        clip = await plan_clip(index, tmp_path, "cam", first.start_90k, last.end_90k)
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"".join(clip.chunks()))
    assert ffprobe_errors(out) == ""
    names = sorted(str(s["codec_name"]) for s in ffprobe_streams(out))
    assert names == sorted(
        [{"h264": "h264", "h265": "hevc"}[codec.value], *([audio] if audio else [])]
    )
    recorded_video = [u for s in segs for u in mp4_video_units(tmp_path / s.path, codec)]
    assert mp4_video_units(out, codec) == recorded_video
    if audio:
        recorded_audio = [p for s in segs for p in _packets(tmp_path / s.path, "audio")]
        got = _packets(out, "audio")
        # Every audio frame kept, but for at most one overlapping frame at a segment seam.
        assert len(recorded_audio) - len(got) <= len(segs)
        assert set(got) <= set(recorded_audio)
        streams = {str(s["codec_type"]): s for s in ffprobe_streams(out)}
        a_s, v_s = (
            float(str(streams["audio"]["duration"])),
            float(str(streams["video"]["duration"])),
        )
        assert abs(a_s - v_s) < 0.2, (a_s, v_s)
