"""RtspSession against the scripted loopback server in tests/support/rtsp_server.py."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import pytest

from nvr.clock import SimulatedClock, SystemClock
from nvr.errors import (
    CameraAuthError,
    CameraClosedError,
    CameraConnectError,
    CameraProtocolError,
)
from nvr.ingest.session import RtspSession, parse_session_header
from support.fakecam import AuthMethod, FakeCam, fakecam_unavailable_reason
from support.rtsp_server import (
    AuthMode,
    Collector,
    RtspTestServer,
    Script,
    make_session,
    rtcp_bye,
    rtcp_sender_report,
    rtp_packet,
)

VIDEO_PACKETS = [(0, rtp_packet(seq, 9000 * seq)) for seq in range(1, 6)]
AUDIO_PACKETS = [(1, rtp_packet(seq, 1024 * seq, pt=97, ssrc=0x5678)) for seq in range(1, 4)]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_video_and_audio_packets_arrive(transport: str) -> None:
    sr_ntp_ns = 1_767_225_600_123_456_789
    script = Script(
        packets=VIDEO_PACKETS + AUDIO_PACKETS,
        rtcp=[(0, rtcp_sender_report(0x1234, sr_ntp_ns, 45000))],
    )
    collector = Collector()
    async with RtspTestServer(script) as server:
        async with make_session(server.url(), collector, transport=transport) as session:
            assert session.video.encoding == "H264"
            assert session.audio is not None and session.audio.clock_rate == 16000
            await collector.wait(video=5, audio=3, reports=1)
        await server.wait_for("TEARDOWN")
    assert [p[1] for p in collector.packets if p[0] == 0] == [p for _, p in VIDEO_PACKETS]
    assert [p[1] for p in collector.packets if p[0] == 1] == [p for _, p in AUDIO_PACKETS]
    stream, ntp_ns, rtp_ts = collector.sender_reports[0]
    assert (stream, rtp_ts) == (0, 45000)
    assert abs(ntp_ns - sr_ntp_ns) <= 1  # integer ns, no float rounding


async def test_request_sequence_and_headers() -> None:
    collector = Collector()
    async with RtspTestServer(Script(session_id="Ab12;cd")) as server:
        async with make_session(server.url(), collector):
            pass
        methods = [r.method for r in server.requests]
        assert methods == ["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "PLAY", "TEARDOWN"]
        describe = server.requests[1]
        assert describe.headers["accept"] == "application/sdp"
        setup_video, setup_audio = server.requests[2], server.requests[3]
        assert setup_video.url == server.url("/live/trackID=0")
        assert setup_video.headers["transport"] == "RTP/AVP/TCP;unicast;interleaved=0-1"
        assert "session" not in setup_video.headers
        assert setup_audio.headers["transport"] == "RTP/AVP/TCP;unicast;interleaved=2-3"
        assert setup_audio.headers["session"] == "Ab12"  # the id exactly, without parameters
        play = server.requests[4]
        assert play.headers["range"] == "npt=0.000-"
        assert play.url == server.url("/live/")  # aggregate control "*" = Content-Base


async def test_want_audio_false_sets_up_video_only() -> None:
    collector = Collector()
    async with RtspTestServer() as server:
        async with make_session(server.url(), collector, want_audio=False) as session:
            assert session.audio is None
        assert [r.method for r in server.requests].count("SETUP") == 1


async def test_play_answer_with_rtp_info_is_accepted() -> None:
    collector = Collector()
    async with (
        RtspTestServer(Script(rtp_info=True, packets=VIDEO_PACKETS)) as server,
        make_session(server.url(), collector) as session,
    ):
        assert session.rtp_info is not None and "seq=1000" in session.rtp_info
        await collector.wait(video=5)


async def test_session_timeout_header_and_keepalive_get_parameter() -> None:
    clock = SimulatedClock()
    collector = Collector()
    async with RtspTestServer(Script(session_timeout_s=30)) as server:
        async with make_session(server.url(), collector, clock=clock) as session:
            assert session.session_timeout_s == 30
            runner = asyncio.ensure_future(session.run())
            try:
                await _advance_until(clock, server, "GET_PARAMETER", step_s=15)
                await _advance_until(clock, server, "GET_PARAMETER", step_s=15, count=2)
            finally:
                runner.cancel()
        keepalive = next(r for r in server.requests if r.method == "GET_PARAMETER")
        assert keepalive.headers["session"] == "4F2A11C9"


async def test_keepalive_uses_options_without_public_and_default_timeout() -> None:
    clock = SimulatedClock()
    collector = Collector()
    async with RtspTestServer(Script(public=None)) as server:
        async with make_session(server.url(), collector, clock=clock) as session:
            assert session.session_timeout_s == 60
            assert session.public_methods == frozenset()
            runner = asyncio.ensure_future(session.run())
            try:
                await _advance_until(clock, server, "OPTIONS", step_s=30, count=2)
            finally:
                runner.cancel()
        assert not any(r.method == "GET_PARAMETER" for r in server.requests)


async def _advance_until(
    clock: SimulatedClock, server: RtspTestServer, method: str, *, step_s: float, count: int = 1
) -> None:
    async with asyncio.timeout(5):
        while sum(1 for r in server.requests if r.method == method) < count:
            clock.advance(int(step_s * 1e9))
            try:
                await server.wait_for(method, count, timeout_s=0.05)
            except TimeoutError:
                continue


async def _run_until_it_ends(clock: SimulatedClock, session: RtspSession) -> None:
    """Run the session, advancing the clock 30 s at a time, until ``run`` returns or raises."""
    runner = asyncio.ensure_future(session.run())
    async with asyncio.timeout(5):
        while not runner.done():
            clock.advance(30 * 10**9)
            await asyncio.wait([runner], timeout=0.05)
    runner.result()


async def test_keepalive_failure_is_a_protocol_error() -> None:
    clock = SimulatedClock()
    collector = Collector()
    async with (
        RtspTestServer(Script(statuses={"GET_PARAMETER": 500})) as server,
        make_session(server.url(), collector, clock=clock) as session,
    ):
        with pytest.raises(CameraProtocolError, match="GET_PARAMETER with 500"):
            await _run_until_it_ends(clock, session)


async def test_keepalive_unanswered_is_a_protocol_error() -> None:
    clock = SimulatedClock()
    collector = Collector()
    async with (
        RtspTestServer(Script(silent={"GET_PARAMETER", "TEARDOWN"})) as server,
        make_session(server.url(), collector, clock=clock, timeout_s=0.3) as session,
    ):
        with pytest.raises(CameraProtocolError, match="keepalive GET_PARAMETER failed"):
            await _run_until_it_ends(clock, session)


async def test_run_raises_closed_when_camera_drops_connection() -> None:
    collector = Collector()
    async with (
        RtspTestServer(Script(packets=VIDEO_PACKETS, close_after_play=True)) as server,
        make_session(server.url(), collector) as session,
    ):
        with pytest.raises(CameraClosedError, match="closed the connection"):
            await asyncio.wait_for(session.run(), 5)
    assert collector.count(0) == 5  # what came before the close was delivered


async def test_run_raises_closed_on_rtcp_bye() -> None:
    collector = Collector()
    script = Script(packets=VIDEO_PACKETS, rtcp=[(0, rtcp_bye(0x1234))])
    async with RtspTestServer(script) as server, make_session(server.url(), collector) as session:
        with pytest.raises(CameraClosedError, match="RTCP BYE on the video stream"):
            await asyncio.wait_for(session.run(), 5)


async def test_udp_refused_with_461() -> None:
    collector = Collector()
    async with RtspTestServer(Script(refuse_udp=True)) as server:
        with pytest.raises(CameraProtocolError, match=r"refused UDP transport.*461"):
            async with make_session(server.url(), collector, transport="udp"):
                pass


async def test_describe_404_names_status_and_method() -> None:
    collector = Collector()
    async with RtspTestServer(Script(statuses={"DESCRIBE": 404})) as server:
        with pytest.raises(CameraProtocolError, match=r"answered DESCRIBE with 404"):
            async with make_session(server.url(), collector):
                pass


async def test_sdp_without_video() -> None:
    sdp = "v=0\r\nm=audio 0 RTP/AVP 8\r\na=control:trackID=1\r\n"
    collector = Collector()
    async with RtspTestServer(Script(sdp=sdp)) as server:
        with pytest.raises(CameraProtocolError, match="no usable video"):
            async with make_session(server.url(), collector):
                pass


async def test_refused_port_is_connect_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    session = make_session(f"rtsp://127.0.0.1:{port}/x", Collector())
    with pytest.raises(CameraConnectError, match=f"127.0.0.1:{port}"):
        async with session:
            pass


async def test_silent_server_is_connect_error_and_never_hangs() -> None:
    collector = Collector()
    async with RtspTestServer(Script(silent={"OPTIONS"})) as server:
        with pytest.raises(CameraConnectError, match=r"did not answer OPTIONS within 0\.3 s"):
            async with make_session(server.url(), collector, timeout_s=0.3):
                pass


async def test_exit_does_not_hang_when_teardown_unanswered() -> None:
    collector = Collector()
    async with RtspTestServer(Script(silent={"TEARDOWN"})) as server:
        async with asyncio.timeout(3):
            async with make_session(server.url(), collector, timeout_s=0.3):
                pass


async def test_wrong_password_is_auth_error_without_password() -> None:
    collector = Collector()
    async with RtspTestServer(Script(auth="digest")) as server:
        with pytest.raises(CameraAuthError) as info:
            async with make_session(server.url(), collector, username="admin", password="hunter2"):
                pass
    message = str(info.value)
    assert f"127.0.0.1:{server.port}" in message
    assert "rejected the credentials" in message
    assert "hunter2" not in message


async def test_missing_credentials_is_auth_error() -> None:
    collector = Collector()
    async with RtspTestServer(Script(auth="basic")) as server:
        with pytest.raises(CameraAuthError, match="none are configured"):
            async with make_session(server.url(), collector):
                pass


async def test_session_over_ipv6_loopback_udp() -> None:
    collector = Collector()
    async with (
        RtspTestServer(Script(packets=VIDEO_PACKETS), host="::1") as server,
        make_session(server.url(), collector, transport="udp"),
    ):
        await collector.wait(video=5)


async def test_no_password_in_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("aiortsp").setLevel(logging.DEBUG)
    logging.getLogger("rtsp_client").setLevel(logging.DEBUG)
    collector = Collector()
    try:
        modes: tuple[AuthMode, ...] = ("basic", "digest")
        for mode in modes:
            script = Script(auth=mode, password="s3cr3t-pw")
            async with RtspTestServer(script) as server:
                url = server.url("/live", userinfo="admin:s3cr3t-pw")
                async with make_session(url, collector):
                    pass
    finally:
        logging.getLogger("aiortsp").setLevel(logging.WARNING)
        logging.getLogger("rtsp_client").setLevel(logging.WARNING)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cr3t-pw" not in text
    assert "YWRtaW46czNjcjN0LXB3" not in text  # base64 of admin:s3cr3t-pw
    assert "Authorization: Basic <redacted>" in text


def test_parse_session_header() -> None:
    assert parse_session_header("12345678;timeout=60") == ("12345678", 60.0)
    assert parse_session_header(" abc ; Timeout = 30 ") == ("abc", 30.0)
    assert parse_session_header("abc;timeout=junk") == ("abc", None)
    assert parse_session_header("abc") == ("abc", None)


# --------------------------------------------------------------------------- fakecam (GStreamer)

FAKECAM_PASSWORD = "p@ss:/%#?wörd"
AUTH_METHODS: tuple[AuthMethod, ...] = ("none", "basic", "digest")


@pytest.fixture(scope="module")
def fakecam(request: pytest.FixtureRequest) -> Iterator[FakeCam]:
    """A simulated camera with the auth method each test names (``indirect`` parameter)."""
    reason = fakecam_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with FakeCam().start(auth=request.param, user="admin", password=FAKECAM_PASSWORD) as cam:
        yield cam


def _fakecam_url(cam: FakeCam, mount: str) -> str:
    if cam.auth == "none":
        return cam.url(mount)
    return cam.url(mount, "admin", FAKECAM_PASSWORD)  # percent-encoded userinfo


@pytest.mark.rtsp
@pytest.mark.parametrize("fakecam", AUTH_METHODS, indirect=True)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_fakecam_video_and_audio(fakecam: FakeCam, transport: str) -> None:
    collector = Collector()
    session = make_session(_fakecam_url(fakecam, "/live/h264-aac"), collector, transport=transport)
    async with session:
        assert (session.video.encoding, session.video.clock_rate) == ("H264", 90000)
        assert session.audio is not None
        assert (session.audio.encoding, session.audio.clock_rate) == ("MPEG4-GENERIC", 48000)
        await collector.wait(video=50, audio=10, timeout_s=15)
    for stream, data, _ in collector.packets[:20]:
        assert data[0] & 0xC0 == 0x80
        assert data[1] & 0x7F == (96 if stream == 0 else 97)


@pytest.mark.rtsp
@pytest.mark.parametrize("fakecam", AUTH_METHODS, indirect=True)
async def test_fakecam_separate_credentials_and_looped_file(fakecam: FakeCam) -> None:
    collector = Collector()
    url = fakecam.url("/file/h264")
    session = make_session(url, collector, username="admin", password=FAKECAM_PASSWORD)
    async with session:
        assert session.audio is None
        await collector.wait(video=30, timeout_s=15)


@pytest.mark.rtsp
@pytest.mark.parametrize("fakecam", ["digest"], indirect=True)  # codecs need one auth method
@pytest.mark.parametrize(
    ("mount", "video", "audio"),
    [
        ("/live/h265", "H265", None),
        ("/live/h264-pcma", "H264", "PCMA"),
        ("/live/h264-pcmu", "H264", "PCMU"),
    ],
)
async def test_fakecam_codecs(fakecam: FakeCam, mount: str, video: str, audio: str | None) -> None:
    collector = Collector()
    session = make_session(_fakecam_url(fakecam, mount), collector, transport="udp")
    async with session:
        assert session.video.encoding == video
        assert (session.audio.encoding if session.audio else None) == audio
        await collector.wait(video=10, audio=5 if audio else 0, timeout_s=15)


@pytest.mark.rtsp
@pytest.mark.parametrize("fakecam", ["basic", "digest"], indirect=True)  # with a password
async def test_fakecam_wrong_password(fakecam: FakeCam) -> None:
    url = fakecam.url("/live/h264")
    session = make_session(url, Collector(), username="admin", password="nope")
    with pytest.raises(CameraAuthError, match="rejected the credentials"):
        async with session:
            pass


@pytest.mark.rtsp
@pytest.mark.parametrize("fakecam", ["basic"], indirect=True)  # one auth method is enough
async def test_fakecam_drop_ends_run_with_closed(fakecam: FakeCam) -> None:
    collector = Collector()
    session = make_session(_fakecam_url(fakecam, "/live/h264"), collector)
    async with session:
        await collector.wait(video=10, reports=1, timeout_s=20)
        runner = asyncio.ensure_future(session.run())
        await asyncio.to_thread(fakecam.drop)
        with pytest.raises(CameraClosedError):
            await asyncio.wait_for(runner, 10)
    _, ntp_ns, _ = collector.sender_reports[0]
    assert abs(ntp_ns - SystemClock().wall_ns()) < 60 * 10**9  # the server's clock, in ns
