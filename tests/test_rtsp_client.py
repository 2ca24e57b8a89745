"""Our aiortsp layer: each aiortsp 1.4.0 gap shown failing with plain aiortsp, then fixed.

The plain-aiortsp halves talk to the same scripted loopback server as ours, so a test that
starts passing on plain aiortsp means upstream fixed the gap and our patch can go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import pytest
from aiortsp.rtsp.connection import RTSPConnection
from aiortsp.rtsp.errors import RTSPConnectionError, RTSPError, RTSPResponseError, RTSPTimeoutError
from aiortsp.rtsp.reader import RTSPReader
from aiortsp.rtsp.session import RTSPMediaSession, sanitize_rtsp_url
from aiortsp.transport.tcp import TCPTransport

from nvr.errors import CameraAuthError, CameraClosedError
from nvr.ingest.rtsp_client import RtspConnection, rtsp_target
from support.rtsp_server import (
    Collector,
    RtspTestServer,
    Script,
    make_session,
    rtcp_sender_report,
    rtp_packet,
)
from test_rtsp_framing import JUNK

VIDEO_PACKETS = [(0, rtp_packet(seq, 9000 * seq)) for seq in range(1, 6)]
RESERVED_PASSWORD = "p@ss:/%#?wörd"
RESERVED_USER = "ädmin@site"


@contextlib.asynccontextmanager
async def plain_connection(
    server: RtspTestServer,
    user: str | None = None,
    password: str | None = None,
    timeout_s: float = 2.0,
) -> AsyncIterator[RTSPConnection]:
    """Plain aiortsp's connection to ``server``, closed on leaving."""
    conn = RTSPConnection("127.0.0.1", server.port, user, password, timeout=timeout_s)
    await conn.prepare()
    try:
        yield conn
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def our_connection(
    server: RtspTestServer,
    url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    timeout_s: float = 2.0,
) -> AsyncIterator[RtspConnection]:
    """Our connection to ``url`` (the server's /live by default), closed on leaving."""
    conn = RtspConnection(rtsp_target(url or server.url(), user, password), timeout_s=timeout_s)
    await conn.open()
    try:
        yield conn
    finally:
        conn.close()


# --------------------------------------------------------------------------- auth gaps


@pytest.mark.parametrize("algorithm", [None, "MD5", "SHA-256"])
async def test_digest_qop_auth_plain_fails_ours_passes(algorithm: str | None) -> None:
    script = Script(auth="digest", qop=True, algorithm=algorithm)
    async with RtspTestServer(script) as server:
        async with plain_connection(server, "admin", "secret") as plain:
            with pytest.raises(RTSPResponseError) as info:
                await plain.send_request("OPTIONS", server.url())
            assert info.value.response.status == 401  # aiortsp ignores qop

        async with our_connection(server, user="admin", password="secret") as ours:
            for _ in range(3):
                assert (await ours.request("OPTIONS", server.url())).status == 200
    # the first attempt (plain) has no valid qop fields; ours counts nc per nonce
    assert server.nc_seen[-3:] == ["00000001", "00000002", "00000003"]


async def test_digest_without_qop() -> None:
    async with (
        RtspTestServer(Script(auth="digest")) as server,
        our_connection(server, user="admin", password="secret") as ours,
    ):
        assert (await ours.request("DESCRIBE", server.url())).status == 200


@pytest.mark.parametrize(
    ("basic_first", "one_header"), [(True, False), (False, False), (True, True), (False, True)]
)
async def test_both_offered_plain_picks_basic_ours_digest(
    basic_first: bool, one_header: bool
) -> None:
    script = Script(auth="both", basic_first=basic_first, one_header=one_header)
    async with RtspTestServer(script) as server:
        async with plain_connection(server, "admin", "secret") as plain:
            # one header holding both challenges confuses aiortsp further
            with contextlib.suppress(RTSPError):
                await plain.send_request("OPTIONS", server.url())
        plain_schemes = list(server.auth_schemes)
        server.auth_schemes.clear()

        async with our_connection(server, user="admin", password="secret") as ours:
            assert (await ours.request("OPTIONS", server.url())).status == 200
    if not one_header:
        assert plain_schemes == ["Basic"]
    assert server.auth_schemes == ["Digest"]


async def test_basic_still_works() -> None:
    async with (
        RtspTestServer(Script(auth="basic")) as server,
        our_connection(server, user="admin", password="secret") as ours,
    ):
        assert (await ours.request("OPTIONS", server.url())).status == 200
    assert server.auth_schemes == ["Basic"]


async def test_stale_nonce_retried_once() -> None:
    async with (
        RtspTestServer(Script(auth="digest", qop=True, stale_after=2)) as server,
        our_connection(server, user="admin", password="secret") as ours,
    ):
        for _ in range(4):
            assert (await ours.request("OPTIONS", server.url())).status == 200
    # 401 (no auth), ok, ok, 401 stale, ok (nc restarts with the new nonce), ok
    assert server.nc_seen == ["00000001", "00000002", "00000003", "00000001", "00000002"]


@pytest.mark.parametrize("mode", ["basic", "digest"])
async def test_wrong_password_after_retry_is_auth_error(mode: str) -> None:
    async with (
        RtspTestServer(Script(auth=mode)) as server,  # type: ignore[arg-type]
        our_connection(server, user="admin", password="wrong-pw") as ours,
    ):
        with pytest.raises(CameraAuthError) as info:
            await ours.request("OPTIONS", server.url())
    assert f"127.0.0.1:{server.port} rejected the credentials" in str(info.value)
    assert "wrong-pw" not in str(info.value)
    assert len(server.requests) == 2  # one challenge, one retry, no loop


@pytest.mark.parametrize("mode", ["basic", "digest"])
async def test_reserved_characters_in_url_userinfo(mode: str) -> None:
    """The gap: aiortsp passes percent-encoded userinfo on undecoded (401)."""
    script = Script(auth=mode, username=RESERVED_USER, password=RESERVED_PASSWORD)  # type: ignore[arg-type]
    async with RtspTestServer(script) as server:
        userinfo = f"{quote(RESERVED_USER, safe='')}:{quote(RESERVED_PASSWORD, safe='')}"
        url = server.url("/live", userinfo=userinfo)
        parts = urlsplit(url)
        async with plain_connection(server, parts.username, parts.password) as plain:
            with pytest.raises(RTSPResponseError):
                await plain.send_request("OPTIONS", server.url())

        async with our_connection(server, url=url) as ours:
            assert (await ours.request("OPTIONS", ours.target.url)).status == 200
    assert ours.target.url == server.url("/live")  # credentials never on the wire in a URL
    assert all("@" not in r.url for r in server.requests)


@pytest.mark.parametrize("mode", ["basic", "digest"])
async def test_reserved_characters_as_separate_credentials(mode: str) -> None:
    script = Script(auth=mode, username=RESERVED_USER, password=RESERVED_PASSWORD)  # type: ignore[arg-type]
    collector = Collector()
    async with (
        RtspTestServer(script) as server,
        make_session(server.url(), collector, username=RESERVED_USER, password=RESERVED_PASSWORD),
    ):
        pass
    assert all("@" not in r.url for r in server.requests)


def test_rtsp_target_decodes_userinfo_and_keeps_ipv6_brackets() -> None:
    t = rtsp_target("rtsp://us%40er:p%40ss%3A%2F%25%23%3F@[::1]:8554/live?x=1")
    assert (t.username, t.password) == ("us@er", "p@ss:/%#?")
    assert t.url == "rtsp://[::1]:8554/live?x=1"
    assert t.hostport == "[::1]:8554"
    explicit = rtsp_target("rtsp://a:b@h/x", "other", "pw")
    assert (explicit.username, explicit.password, explicit.port) == ("other", "pw", 554)
    # the gap: aiortsp's own URL cleaning loses IPv6 brackets
    assert sanitize_rtsp_url("rtsp://[::1]:8554/live") == "rtsp://::1:8554/live"


# --------------------------------------------------------------------------- stream gaps


async def test_junk_before_response_plain_drops_connection_ours_resyncs() -> None:
    script = Script(junk_before={"DESCRIBE": JUNK})
    async with RtspTestServer(script) as server:
        async with plain_connection(server) as plain:
            with pytest.raises((RTSPConnectionError, RTSPTimeoutError)):
                await plain.send_request("DESCRIBE", server.url())
            assert not plain.running  # aiortsp closed the connection on junk

        async with our_connection(server) as ours:
            assert (await ours.request("DESCRIBE", server.url())).status == 200
            assert (await ours.request("OPTIONS", server.url())).status == 200
            assert ours.running
            assert ours.junk_bytes == len(JUNK)


async def test_junk_between_interleaved_packets_is_skipped() -> None:
    junk = b"\xff\x00garbage$\x09\x00\x04abcd more garbage \r\n"  # even a "$" on channel 9
    script = Script(packets=VIDEO_PACKETS, junk_between_packets=junk)
    collector = Collector()
    async with (
        RtspTestServer(script) as server,
        make_session(server.url(), collector) as session,
    ):
        await collector.wait(video=5)
        assert session.junk_bytes == 5 * len(junk)
    assert [p[1] for p in collector.packets] == [p for _, p in VIDEO_PACKETS]


BAD_RTCP = b"\x80\xc8\x00\x50" + b"\x00" * 8  # an SR claiming 324 bytes, 12 sent


async def test_malformed_rtcp_plain_drops_connection_ours_carries_on() -> None:
    async with RtspTestServer() as server, plain_connection(server) as plain:
        transport = TCPTransport(plain)
        await transport.prepare()
        await plain.send_request("OPTIONS", server.url())
        server.send_interleaved(transport.rtcp_idx, BAD_RTCP)
        with pytest.raises(RTSPConnectionError):
            await asyncio.wait_for(plain.result, 2)
        assert not plain.running

    script = Script(
        packets=VIDEO_PACKETS, rtcp=[(0, BAD_RTCP), (0, rtcp_sender_report(0x1234, 10**18, 90000))]
    )
    collector = Collector()
    async with RtspTestServer(script) as server, make_session(server.url(), collector):
        await collector.wait(video=5, reports=1)
    assert collector.sender_reports == [(0, 10**18, 90000)]


async def test_camera_chosen_interleaved_channels() -> None:
    """The gap: aiortsp asserts the camera echoes the channels it asked for."""
    async with RtspTestServer() as server, plain_connection(server) as plain:
        transport = TCPTransport(plain)
        await transport.prepare()
        with pytest.raises(AssertionError):
            transport.on_transport_response({"transport": "RTP/AVP/TCP;unicast;interleaved=6-7"})

    collector = Collector()
    script = Script(packets=VIDEO_PACKETS, interleaved_answer={0: "6-7"})
    async with (
        RtspTestServer(script) as server,
        make_session(server.url(), collector, want_audio=False),
    ):
        await collector.wait(video=5)


async def test_response_without_cseq() -> None:
    async with RtspTestServer(Script(omit_cseq={"OPTIONS"})) as server:
        async with plain_connection(server, timeout_s=0.3) as plain:
            with pytest.raises(RTSPTimeoutError):
                await plain.send_request("OPTIONS", server.url())
        async with our_connection(server) as ours:
            assert (await ours.request("OPTIONS", server.url())).status == 200


async def test_options_without_public_plain_fails_ours_plays() -> None:
    async with RtspTestServer(Script(public=None)) as server:
        async with plain_connection(server) as plain:
            transport = TCPTransport(plain)
            await transport.prepare()
            with pytest.raises(RTSPError, match="Public"):
                await RTSPMediaSession(plain, server.url(), transport).setup()

        async with make_session(server.url(), Collector()) as session:
            assert session.public_methods == frozenset()


async def test_plain_reader_ends_quietly_ours_raises() -> None:
    """The gap: RTSPReader's packet iterator just stops when the camera hangs up."""
    script = Script(packets=VIDEO_PACKETS, close_after_play=True, public="OPTIONS, PLAY")
    async with RtspTestServer(script) as server:
        url = server.url().replace("rtsp://", "rtspt://")
        got = []
        async with RTSPReader(url, timeout=2) as reader:
            async with asyncio.timeout(10):
                async for packet in reader.iter_packets():
                    got.append(packet)
        assert len(got) <= 5  # and no exception: the caller cannot tell why it ended

        async with make_session(server.url(), Collector()) as session:
            with pytest.raises(CameraClosedError, match="closed the connection"):
                await asyncio.wait_for(session.run(), 5)


async def test_plain_rtp_timeout_loop_closes_silently_ours_never_starts_it() -> None:
    async with RtspTestServer() as server:
        async with plain_connection(server) as plain:
            transport = TCPTransport(plain, timeout=0.2)
            await transport.prepare()
            await transport.warmup()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(transport.result, 2)
            assert not plain.running  # it closed the whole RTSP connection by itself

        async with make_session(server.url(), Collector()) as session:
            assert all(t._timeout_loop is None for t in session._transports)


async def test_plain_logs_credentials_at_debug_ours_does_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    plain_logger = logging.getLogger("rtsp_client")
    plain_logger.setLevel(logging.DEBUG)
    try:
        async with RtspTestServer(Script(auth="basic")) as server:
            async with plain_connection(server, "admin", "secret") as plain:
                await plain.send_request("OPTIONS", server.url())
            leaked = "\n".join(r.getMessage() for r in caplog.records)
            assert "Authorization: Basic YWRtaW46c2VjcmV0" in leaked  # base64 of admin:secret
            caplog.clear()
            async with our_connection(server, user="admin", password="secret") as ours:
                await ours.request("OPTIONS", server.url())
    finally:
        plain_logger.setLevel(logging.WARNING)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "YWRtaW46c2VjcmV0" not in text and "secret" not in text
    assert logging.getLogger("rtsp_client").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("aiortsp.nvr").getEffectiveLevel() >= logging.WARNING
