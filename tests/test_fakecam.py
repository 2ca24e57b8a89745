"""Smoke tests of the simulated camera (tools/fakecam.py) that the ingest tests rely on."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from support.fakecam import (
    FakeCam,
    RawRtspReader,
    RtpPacket,
    RtspStatusError,
    clip_nal_units,
    depacketize,
    fakecam_unavailable_reason,
    nal_type,
)

_UNAVAILABLE = fakecam_unavailable_reason()
pytestmark = [
    pytest.mark.rtsp,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]

USER = "op@cam"
PASSWORD = "p@ss:/%#?w d"  # reserved characters on purpose
FRAME_90K = 3600  # 25 fps

# mount -> ffprobe's (codec_name, profile or sample_rate) per stream
EXPECTED: dict[str, list[tuple[str, str]]] = {
    "/live/h264": [("h264", "Main")],
    "/live/h265": [("hevc", "Main")],
    "/live/h264-aac": [("h264", "Main"), ("aac", "48000")],
    "/live/h264-pcma": [("h264", "Main"), ("pcm_alaw", "8000")],
    "/live/h264-pcmu": [("h264", "Main"), ("pcm_mulaw", "8000")],
    "/live/h265-aac": [("hevc", "Main"), ("aac", "48000")],
    "/file/h264": [("h264", "Main")],
    "/file/h265": [("hevc", "Main")],
    "/file/h264-aac": [("h264", "Main"), ("aac", "48000")],
    "/file/h265-aac": [("hevc", "Main"), ("aac", "48000")],
    "/file/h264-pcma": [("h264", "Main"), ("pcm_alaw", "8000")],
}


# fakecam_media (the cached clips) comes from conftest.py.


@pytest.fixture(scope="module")
def cam(fakecam_media: Path) -> Iterator[FakeCam]:
    """A camera of this module's own: the drop and stall tests disturb every client."""
    with FakeCam().start(media_dir=fakecam_media) as running:
        yield running


def ffprobe(url: str, transport: str = "tcp") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-show_streams",
            "-of",
            "json",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def read_for(reader: RawRtspReader, seconds: float) -> list[RtpPacket]:
    packets: list[RtpPacket] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        packet = reader.read_packet()
        assert packet is not None, "server closed the connection"
        packets.append(packet)
    return packets


def wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # a poll interval, bounded by the deadline


def test_url_percent_encodes_credentials() -> None:
    cam = FakeCam()
    cam.rtsp_port = 8554
    assert cam.url("/live/h264") == "rtsp://127.0.0.1:8554/live/h264"
    assert (
        cam.url("file/h264", USER, PASSWORD)
        == "rtsp://op%40cam:p%40ss%3A%2F%25%23%3Fw%20d@127.0.0.1:8554/file/h264"
    )


def test_ready_line_lists_every_mount(cam: FakeCam) -> None:
    assert sorted(cam.mounts) == sorted(EXPECTED)
    assert cam.rtsp_port > 0 and cam.control_port > 0


@pytest.mark.parametrize("mount", sorted(EXPECTED))
def test_mount_codecs(cam: FakeCam, mount: str) -> None:
    # ffprobe sends `PLAY Range: npt=0.000-`: a seekable file mount would answer 503.
    result = ffprobe(cam.url(mount))
    assert result.returncode == 0, result.stderr
    streams = json.loads(result.stdout)["streams"]
    got = [
        (s["codec_name"], s.get("profile") if s["codec_type"] == "video" else s.get("sample_rate"))
        for s in streams
    ]
    assert got == EXPECTED[mount]
    video = streams[0]
    assert (video["width"], video["height"]) == (640, 360)
    assert all(s.get("channels", 1) == 1 for s in streams[1:])


def test_udp_transport_works(cam: FakeCam) -> None:
    # The RTP/RTCP sockets of UDP transport are bound to 127.0.0.1 (address pool), not *.
    result = ffprobe(cam.url("/file/h264-aac"), transport="udp")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["streams"]) == 2


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_file_mount_sends_the_clip_nal_units_unchanged(
    cam: FakeCam, codec: Literal["h264", "h265"]
) -> None:
    with RawRtspReader(cam.url(f"/file/{codec}")) as reader:
        reader.play()
        packets = read_for(reader, 2.5)
    wire = depacketize([p.payload for p in packets if p.channel == 0], codec)
    clip = clip_nal_units(cam.clips[codec], codec)
    assert len(wire) > 100
    assert wire == clip[: len(wire)]  # every NAL unit, AUDs included, byte for byte


def test_file_mount_loops_with_increasing_timestamps(cam: FakeCam) -> None:
    with RawRtspReader(cam.url("/file/h264")) as reader:
        reader.play()
        packets = read_for(reader, 11.0)  # the clip is 10 s long
    video = [p for p in packets if p.channel == 0]
    stamps = [b.timestamp for a, b in itertools.pairwise(video) if b.timestamp != a.timestamp]
    steps = [(b - a) % 2**32 for a, b in itertools.pairwise(stamps)]
    assert len(steps) > 260
    assert all(0 < step < 2 * FRAME_90K for step in steps), sorted(set(steps))
    assert all((b.seq - a.seq) % 65536 == 1 for a, b in itertools.pairwise(video))
    clip = clip_nal_units(cam.clips["h264"], "h264")
    wire = depacketize([p.payload for p in video], "h264")
    assert len(wire) > len(clip)
    assert wire == (clip * 2)[: len(wire)]


def test_live_h264_is_camera_like(cam: FakeCam) -> None:
    with RawRtspReader(cam.url("/live/h264-pcma")) as reader:
        reader.play()
        packets = read_for(reader, 2.3)  # IDRs at 0 s and 2 s
    video = [p for p in packets if p.channel == 0]
    types = [nal_type(n, "h264") for n in depacketize([p.payload for p in video], "h264")]
    access_units = len({p.timestamp for p in video})
    assert types.count(5) >= 2
    assert types.count(1) + types.count(5) == access_units  # one slice per frame
    for i, kind in enumerate(types):
        if kind == 5:  # SPS and PPS in-band before every IDR
            assert types[i - 2 : i] == [7, 8] or types[i - 3 : i - 1] == [7, 8]
    audio = [p for p in packets if p.channel == 2]
    assert len(audio) > 80
    assert {len(p.payload) for p in audio} == {160}  # 20 ms of G.711 per packet
    assert {(b.timestamp - a.timestamp) % 2**32 for a, b in itertools.pairwise(audio)} == {160}


@pytest.fixture(scope="module", params=["basic", "digest"])
def auth_cam(request: pytest.FixtureRequest, fakecam_media: Path) -> Iterator[FakeCam]:
    with FakeCam().start(
        auth=request.param, user=USER, password=PASSWORD, media_dir=fakecam_media
    ) as running:
        yield running


def test_auth_accepts_the_right_password(auth_cam: FakeCam) -> None:
    result = ffprobe(auth_cam.url("/file/h264", USER, PASSWORD))
    assert result.returncode == 0, result.stderr
    with RawRtspReader(auth_cam.url("/live/h264"), USER, PASSWORD) as reader:
        reader.play()
        assert reader.read_packet() is not None
        assert reader.auth_scheme == auth_cam.auth


@pytest.mark.parametrize("password", ["wrong", None])
def test_auth_rejects_a_wrong_or_missing_password(auth_cam: FakeCam, password: str | None) -> None:
    user = USER if password is not None else None
    result = ffprobe(auth_cam.url("/file/h264", user, password))
    assert result.returncode != 0 and "401" in result.stderr
    reader = RawRtspReader(auth_cam.url("/file/h264"), user, password)
    with reader, pytest.raises(RtspStatusError) as err:
        reader.play()
    assert err.value.status == 401


def test_drop_closes_every_client_connection(cam: FakeCam) -> None:
    readers = [RawRtspReader(cam.url(m), timeout_s=5) for m in ("/live/h264", "/file/h264-aac")]
    try:
        for reader in readers:
            reader.play()
            assert reader.read_packet() is not None
        assert cam.drop() >= 2
        for reader in readers:  # already-buffered packets may come first, then the EOF
            while reader.read_packet() is not None:
                pass
    finally:
        for reader in readers:
            reader.close()
    wait_for(lambda: cam.stats()["/file/h264-aac"].clients == 0, 10)


@pytest.mark.parametrize("mount", ["/file/h264", "/live/h264"])
def test_stall_stops_media_for_n_seconds(cam: FakeCam, mount: str) -> None:
    with RawRtspReader(cam.url(mount), timeout_s=10) as reader:
        reader.play()
        read_for(reader, 0.5)
        cam.stall(1.0)
        packets = read_for(reader, 2.0)  # the connection stays open throughout
    gaps = [(b.recv_mono_ns - a.recv_mono_ns) / 1e9 for a, b in itertools.pairwise(packets)]
    biggest = max(gaps)
    assert 0.8 < biggest < 1.6
    assert packets[-1].recv_mono_ns - packets[gaps.index(biggest) + 1].recv_mono_ns > 0.3e9


def test_stats_count_clients_packets_and_access_units(cam: FakeCam) -> None:
    before = cam.stats()["/file/h265"]
    with RawRtspReader(cam.url("/file/h265")) as reader:
        reader.play()
        packets = read_for(reader, 1.0)
        during = cam.stats()["/file/h265"]
    assert during.clients == before.clients + 1
    assert during.rtp_packets - before.rtp_packets >= len(packets)
    assert during.video_access_units - before.video_access_units >= 20


def test_quit_and_sigterm_stop_cleanly(fakecam_media: Path) -> None:
    with FakeCam().start(media_dir=fakecam_media) as first:
        first.quit()
        assert first.wait(timeout_s=10) == 0
    second = FakeCam().start(media_dir=fakecam_media)
    with RawRtspReader(second.url("/live/h264")) as reader:
        reader.play()
        assert second.stop() == 0
        while reader.read_packet() is not None:  # the client sees its connection close
            pass
