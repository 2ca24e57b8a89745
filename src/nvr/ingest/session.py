"""One RTSP session with a camera: DESCRIBE, SETUP video (and audio), PLAY, keepalive.

Built on the aiortsp layer in ``rtsp_client`` and ``rtsp_transport``. Raw RTP goes to
``on_packet`` from the event loop; parsing, depacketizing, stall detection and reconnecting
belong to the caller.

    async with RtspSession(url, username=u, password=p, on_packet=cb, clock=clock) as s:
        await s.run()  # returns only by raising CameraError
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, NoReturn

from nvr.clock import Clock
from nvr.errors import CameraClosedError, CameraError, CameraProtocolError
from nvr.ingest.rtsp_client import (
    RtspConnection,
    RtspTarget,
    expect_ok,
    rtsp_target,
    translate_error,
)
from nvr.ingest.rtsp_transport import RtpTransport, TcpRtpTransport, UdpRtpTransport
from nvr.ingest.sdp import (
    AUDIO_ENCODINGS,
    VIDEO_ENCODINGS,
    describe_base_url,
    parse_session,
)
from nvr.media import MediaDescription
from nvr.redact import redact_url

logger = logging.getLogger("nvr.ingest.session")

DEFAULT_SESSION_TIMEOUT_S = 60.0
TEARDOWN_TIMEOUT_S = 2.0
VIDEO, AUDIO = 0, 1


def parse_session_header(value: str) -> tuple[str, float | None]:
    """``12345678;timeout=60`` -> ("12345678", 60.0); the id is kept exactly as sent."""
    session_id, *params = value.split(";")
    timeout_s: float | None = None
    for param in params:
        key, _, val = param.strip().partition("=")
        if key.strip().lower() == "timeout":
            try:
                timeout_s = float(val.strip())
            except ValueError:
                timeout_s = None
            if timeout_s is not None and timeout_s <= 0:
                timeout_s = None
    return session_id.strip(), timeout_s


class RtspSession:
    """Async context manager around one playing RTSP session (see module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None,
        password: str | None,
        transport: Literal["tcp", "udp"] = "tcp",
        want_audio: bool = True,
        timeout_s: float = 10.0,
        on_packet: Callable[[int, bytes, int], None],
        on_sender_report: Callable[[int, int, int], None] | None = None,
        clock: Clock,
    ) -> None:
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp', not {transport!r}")
        self._url = url
        self._username = username
        self._password = password
        self._transport_kind = transport
        self._want_audio = want_audio
        self._timeout_s = timeout_s
        self._on_packet = on_packet
        self._on_sender_report = on_sender_report
        self._clock = clock
        self._target: RtspTarget | None = None
        self._conn: RtspConnection | None = None
        self._transports: list[RtpTransport] = []
        self._session_id: str | None = None
        self._control_url = ""
        self._ended: asyncio.Future[str] | None = None
        self._video: MediaDescription | None = None
        self.audio: MediaDescription | None = None
        self.session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
        self.public_methods: frozenset[str] = frozenset()
        self.rtp_info: str | None = None  # the PLAY answer's RTP-Info header, as sent

    @property
    def video(self) -> MediaDescription:
        if self._video is None:
            raise RuntimeError("RtspSession.video is known only inside 'async with'")
        return self._video

    @property
    def junk_bytes(self) -> int:
        """Unexpected bytes skipped on the RTSP TCP stream so far."""
        return self._conn.junk_bytes if self._conn is not None else 0

    # -- MediaSink (called by the transports)

    def rtp(self, stream_index: int, data: bytes) -> None:
        self._on_packet(stream_index, data, self._clock.monotonic_ns())

    def sender_report(self, stream_index: int, ntp_ns: int, rtp_timestamp: int) -> None:
        if self._on_sender_report is not None:
            self._on_sender_report(stream_index, ntp_ns, rtp_timestamp)

    def bye(self, stream_index: int) -> None:
        kind = "video" if stream_index == VIDEO else "audio"
        self._end(f"camera sent RTCP BYE on the {kind} stream")

    def _end(self, reason: str) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(reason)

    # -- lifecycle

    async def __aenter__(self) -> RtspSession:
        try:
            await self._start()
        except BaseException as exc:
            await self._close(teardown=False)
            if isinstance(exc, CameraError | asyncio.CancelledError):
                raise
            if self._target is None or not isinstance(exc, Exception):
                raise
            raise translate_error(exc, self._target, "session start") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(teardown=True)

    async def _start(self) -> None:
        target = rtsp_target(self._url, self._username, self._password)
        self._target = target
        self._ended = asyncio.get_running_loop().create_future()
        logger.info("connecting to %s over %s", redact_url(target.url), self._transport_kind)
        conn = RtspConnection(target, timeout_s=self._timeout_s)
        self._conn = conn
        await conn.open()
        conn.closed.add_done_callback(lambda f: self._end(f.result()))

        options = await conn.request("OPTIONS", target.url)
        if 200 <= options.status < 300:
            public = options.header("public") or ""
            self.public_methods = frozenset(
                m.strip().upper() for m in public.split(",") if m.strip()
            )
        else:
            logger.debug("%s: OPTIONS answered %d; carrying on", target.hostport, options.status)

        describe = expect_ok(
            await conn.request("DESCRIBE", target.url, {"Accept": "application/sdp"}),
            "DESCRIBE",
            target,
        )
        base_url = describe_base_url(
            target.url, describe.header("content-base"), describe.header("content-location")
        )
        sdp = parse_session(describe.body.decode("utf-8", errors="replace"), base_url=base_url)
        self._control_url = sdp.control
        video = sdp.first("video", VIDEO_ENCODINGS)
        assert video is not None  # parse_session guarantees usable video
        self._video = video
        await self._setup(VIDEO, video)

        audio = sdp.first("audio", AUDIO_ENCODINGS) if self._want_audio else None
        if audio is not None:
            try:
                await self._setup(AUDIO, audio)
                self.audio = audio
            except CameraProtocolError as exc:
                logger.warning("%s: audio not set up, recording video only: %s",
                               target.hostport, exc)
        await self._play()

    async def _setup(self, index: int, media: MediaDescription) -> None:
        conn, target = self._require()
        transport: RtpTransport
        if self._transport_kind == "tcp":
            transport = TcpRtpTransport(conn, stream_index=index, sink=self)
        else:
            transport = UdpRtpTransport(conn, stream_index=index, sink=self)
        await transport.prepare()
        self._transports.append(transport)
        headers = {"Transport": transport.transport_request()}
        if self._session_id is not None:
            headers["Session"] = self._session_id
        response = await conn.request("SETUP", media.control, headers)
        if response.status == 461:
            self._transports.remove(transport)
            transport.close()
            mode = "UDP" if self._transport_kind == "udp" else "TCP-interleaved"
            raise CameraProtocolError(
                f"{target.hostport} refused {mode} transport for SETUP {media.kind} "
                f"(461 Unsupported Transport)"
                + ("; try transport 'tcp'" if self._transport_kind == "udp" else "")
            )
        try:
            expect_ok(response, f"SETUP {media.kind}", target)
        except CameraProtocolError:
            self._transports.remove(transport)
            transport.close()
            raise
        session = response.header("session")
        if self._session_id is None:
            if not session:
                raise CameraProtocolError(f"{target.hostport} answered SETUP without a Session")
            self._session_id, timeout_s = parse_session_header(session)
            self.session_timeout_s = timeout_s or DEFAULT_SESSION_TIMEOUT_S
        transport.apply_transport_response(response.header("transport") or "")
        logger.debug("%s: SETUP %s %s -> %s", target.hostport, media.kind, media.encoding,
                     response.header("transport"))

    async def _play(self) -> None:
        conn, target = self._require()
        headers = {"Session": self._session_id or "", "Range": "npt=0.000-"}
        response = await conn.request("PLAY", self._control_url, headers)
        if response.status in (457, 501, 551):
            # Some servers refuse a Range on live streams: ask again without one.
            del headers["Range"]
            response = await conn.request("PLAY", self._control_url, headers)
        expect_ok(response, "PLAY", target)
        self.rtp_info = response.header("rtp-info")
        for transport in self._transports:
            await transport.warmup()
        logger.info(
            "playing %s: video %s%s, session timeout %g s",
            redact_url(target.url), self.video.encoding,
            f", audio {self.audio.encoding}" if self.audio else "", self.session_timeout_s,
        )

    def _require(self) -> tuple[RtspConnection, RtspTarget]:
        if self._conn is None or self._target is None:
            raise RuntimeError("RtspSession used outside 'async with'")
        return self._conn, self._target

    async def run(self) -> NoReturn:
        """Keep the session alive until it ends; always ends by raising.

        ``CameraClosedError`` when the connection or the stream ends (the reason in the
        message), ``CameraProtocolError`` when a keepalive is refused or unanswered.
        """
        conn, target = self._require()
        assert self._ended is not None
        ended = self._ended
        method = "GET_PARAMETER" if "GET_PARAMETER" in self.public_methods else "OPTIONS"
        interval_s = max(self.session_timeout_s / 2, 0.5)
        while True:
            sleeper: asyncio.Future[Any] = asyncio.ensure_future(self._clock.sleep(interval_s))
            waiters: list[asyncio.Future[Any]] = [sleeper, ended]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
            if ended.done():
                raise CameraClosedError(ended.result())
            try:
                response = await conn.request(
                    method, self._control_url, {"Session": self._session_id or ""}
                )
            except CameraClosedError:
                raise
            except CameraError as exc:
                raise CameraProtocolError(f"keepalive {method} failed: {exc}") from exc
            if not 200 <= response.status < 300:
                raise CameraProtocolError(
                    f"{target.hostport} answered keepalive {method} with "
                    f"{response.status} {response.reason}".rstrip()
                )

    async def _close(self, *, teardown: bool) -> None:
        conn = self._conn
        try:
            if teardown and conn is not None and conn.running and self._session_id is not None:
                timeout_s = min(TEARDOWN_TIMEOUT_S, self._timeout_s)
                try:
                    await conn.request(
                        "TEARDOWN", self._control_url or conn.target.url,
                        {"Session": self._session_id}, timeout_s=timeout_s,
                    )
                except (CameraError, OSError) as exc:
                    logger.debug("TEARDOWN failed (ignored): %s", exc)
        finally:
            for transport in self._transports:
                transport.close()
            self._transports.clear()
            if conn is not None:
                conn.close()
