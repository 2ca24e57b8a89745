"""Recording from the real RTSP server: codec, transport and auth matrix, and audio.

Each test records a looped-file mount for a few segments, then checks with ffprobe and by
reading the files back: the codec is the source's, every video NAL unit is byte-identical to
the clip the server loops, no frame is missing or repeated, consecutive segments of a run
touch exactly, and the durations agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CAM_PASSWORD, CAM_USER
from nvr.media import VideoCodec
from support.fakecam import FakeCam
from support.recording import (
    IndexReader,
    Segment,
    camera_toml,
    check_cyclic_run,
    ffprobe_duration_s,
    ffprobe_errors,
    ffprobe_streams,
    make_config,
    mp4_video_units,
    record_until,
    ts_video_units,
)

pytestmark = pytest.mark.rtsp

SEGMENTS_WANTED = 3  # closed segments of 2 s each: at least one full rotation in the middle


def _closed(reader: IndexReader, cam: str, n: int) -> bool:
    return len(reader.segments(cam, "closed")) >= n


def check_segments(
    root: Path,
    reader: IndexReader,
    cam: str,
    codec: VideoCodec,
    source: Path,
    audio_codec: str | None,
) -> list[Segment]:
    segments = reader.segments(cam)
    assert segments and all(s.state == "closed" for s in segments), segments
    runs = reader.runs(cam)
    assert len(runs) == 1, runs
    assert runs[0].end_reason == "shutdown"
    # The camera's clock from its RTCP sender reports (GStreamer's is this machine's clock),
    # when one arrived during the few seconds recorded (the server sends one every ~5 s).
    offset = runs[0].clock_offset_ns
    assert offset is None or abs(offset) < 500_000_000, offset
    source_units = ts_video_units(source, codec)
    recorded: list[tuple[bytes, ...]] = []
    prev_end: int | None = None
    file_seconds = 0.0
    for seg in segments:
        path = root / seg.path
        assert ffprobe_errors(path) == "", seg.path
        streams = ffprobe_streams(path)
        codecs = sorted(str(s["codec_name"]) for s in streams)
        expected = sorted(
            [{"h264": "h264", "h265": "hevc"}[codec.value]] + ([audio_codec] if audio_codec else [])
        )
        assert codecs == expected, (seg.path, codecs)
        units = mp4_video_units(path, codec)
        assert len(units) == seg.video_frames
        recorded += units
        # Contiguity inside the run, in exact 90 kHz ticks.
        if prev_end is not None:
            assert seg.start_90k == prev_end, (seg.path, seg.start_90k, prev_end)
        assert seg.end_90k is not None and seg.media_duration_90k is not None
        prev_end = seg.end_90k
        file_seconds += ffprobe_duration_s(path)
        assert path.stat().st_size == seg.size_bytes
    check_cyclic_run(recorded, source_units)
    # Durations: the files' summed duration against the recorded span and the frame count.
    assert runs[0].end_90k is not None
    recorded_s = (runs[0].end_90k - runs[0].start_90k) / 90_000
    assert abs(file_seconds - recorded_s) <= 0.005 * recorded_s, (file_seconds, recorded_s)
    nominal_s = len(recorded) / 25
    print(f"{cam}: {len(segments)} segments, {len(recorded)} frames; files {file_seconds:.3f} s, "
          f"run {recorded_s:.3f} s ({(file_seconds / recorded_s - 1) * 100:+.3f} %), "
          f"frames / 25 fps {nominal_s:.3f} s ({(recorded_s / nominal_s - 1) * 100:+.3f} %)")
    assert abs(recorded_s - nominal_s) <= 0.005 * nominal_s, (recorded_s, nominal_s)
    return segments


@pytest.mark.parametrize("auth", ["basic", "digest"])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("codec", [VideoCodec.H264, VideoCodec.H265])
async def test_video_matrix(
    request: pytest.FixtureRequest,
    fakecam_media: Path,
    tmp_path: Path,
    codec: VideoCodec,
    transport: str,
    auth: str,
) -> None:
    cam: FakeCam = request.getfixturevalue(f"cam_{auth}")
    url = cam.url(f"/file/{codec.value}")
    cfg = make_config(
        tmp_path,
        camera_toml("cam", url, transport=transport, username=CAM_USER, password=CAM_PASSWORD),
    )
    await record_until(cfg, "3 closed segments", lambda r: _closed(r, "cam", SEGMENTS_WANTED))
    check_segments(
        tmp_path, IndexReader(cfg.storage.index_path), "cam", codec,
        fakecam_media / f"{codec.value}.ts", None,
    )  # fmt: skip


async def test_aac_is_copied(cam_none: FakeCam, fakecam_media: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, camera_toml("cam", cam_none.url("/file/h264-aac"), audio="copy"))
    await record_until(cfg, "3 closed segments", lambda r: _closed(r, "cam", SEGMENTS_WANTED))
    check_segments(
        tmp_path, IndexReader(cfg.storage.index_path), "cam", VideoCodec.H264,
        fakecam_media / "h264-aac.ts", "aac",
    )  # fmt: skip


@pytest.mark.parametrize(("audio", "expected"), [("aac", "aac"), ("off", None), ("copy", None)])
async def test_g711_to_aac_or_left_out(
    cam_none: FakeCam, fakecam_media: Path, tmp_path: Path, audio: str, expected: str | None
) -> None:
    cfg = make_config(tmp_path, camera_toml("cam", cam_none.url("/file/h264-pcma"), audio=audio))
    await record_until(cfg, "3 closed segments", lambda r: _closed(r, "cam", SEGMENTS_WANTED))
    segments = check_segments(
        tmp_path, IndexReader(cfg.storage.index_path), "cam", VideoCodec.H264,
        fakecam_media / "h264.ts", expected,
    )  # fmt: skip
    if expected == "aac":
        # The transcoded track covers the segment: about 8000 G.711 samples a second.
        middle = ffprobe_streams(tmp_path / segments[1].path)
        aac = next(s for s in middle if s["codec_name"] == "aac")
        assert abs(float(str(aac["duration"])) - 2.0) < 0.25, aac
