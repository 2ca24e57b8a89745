"""Our thin layer over aiortsp 1.4.0: the fixes the recorder needs, with typed edges.

aiortsp supplies the asyncio protocol and connect logic (``RTSPConnection``), the RTP
transports (``TCPTransport``, ``UDPTransport``) and RTCP receiver reports (``RTCPStats``).
What it gets wrong for real cameras, and where it is fixed:

- Digest ignores ``qop``, knows no ``-sess`` algorithms and never counts ``nc``:
  ``rtsp_auth.DigestAuth`` implements RFC 7616 (MD5 and SHA-256, ``qop=auth``, stale nonce).
- Basic is picked when a camera offers both: ``rtsp_auth.choose_auth`` prefers Digest.
- Percent-encoded userinfo is passed on undecoded: ``rtsp_target`` (here) decodes it and
  strips it from every URL we send.
- Unexpected bytes on the TCP stream (and a malformed RTCP packet) drop the connection:
  ``rtsp_framing.StreamSplitter`` resyncs to the next ``$`` or ``RTSP/1.0`` and counts what
  it skipped.
- Requests are logged with their ``Authorization`` header: ours log a redacted copy and
  aiortsp's own loggers are set to WARNING (here).
- Its TCP transport insists on the interleaved channels it asked for, its UDP transport
  binds IPv4 only: ``rtsp_transport.TcpRtpTransport`` follows the camera's channels,
  ``rtsp_transport.UdpRtpTransport`` binds on the address the camera sees us at.
- Its errors (and ``RTSPReader``'s silent endings) become our ``CameraError`` tree here.

This module holds the control connection (``RtspConnection``), its targets and the error
translation.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from aiortsp.rtsp.connection import RTSPConnection

from nvr.errors import (
    CameraAuthError,
    CameraClosedError,
    CameraConnectError,
    CameraError,
    CameraProtocolError,
)
from nvr.ingest.rtsp_auth import (
    Authenticator,
    DigestAuth,
    choose_auth,
    parse_challenges,
    stale_digest,
)
from nvr.ingest.rtsp_framing import InterleavedFrame, RtspMessage, StreamSplitter

logger = logging.getLogger("nvr.ingest.rtsp")

# aiortsp logs whole requests (credentials included) at DEBUG and raw bytes at ERROR.
# Its loggers default to WARNING here; the objects we create log through a child of
# "aiortsp", which inherits that level unless someone lowers it on purpose.
AIORTSP_LOGGER_NAMES = ("aiortsp", "rtsp_client", "rtp.session", "rtcp.sink")
for _name in AIORTSP_LOGGER_NAMES:
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)
_aiortsp_logger = logging.getLogger("aiortsp.nvr")

USER_AGENT = "nvr/0.1 (aiortsp)"
DEFAULT_RTSP_PORT = 554


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True, slots=True)
class RtspTarget:
    """Where to connect and as whom; ``url`` never carries credentials."""

    url: str
    host: str
    port: int
    username: str | None
    password: str | None

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def rtsp_target(url: str, username: str | None = None, password: str | None = None) -> RtspTarget:
    """Split ``url`` into a credential-free URL and decoded credentials.

    Explicit ``username``/``password`` win; otherwise userinfo in the URL is percent-decoded
    (``p%40ss`` -> ``p@ss``). IPv6 literals keep their brackets.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port or DEFAULT_RTSP_PORT
    except ValueError as exc:
        raise CameraConnectError(f"invalid RTSP URL: {exc}") from None
    if parts.scheme.lower() != "rtsp":
        raise CameraConnectError(f"unsupported URL scheme {parts.scheme!r} (only rtsp://)")
    if not host:
        raise CameraConnectError("RTSP URL has no host")
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at:
        hostinfo = parts.netloc
    if username is None and userinfo:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text)
        password = unquote(pass_text) if colon else None
    if username is not None and password is None:
        password = ""
    clean = urlunsplit((parts.scheme, hostinfo, parts.path, parts.query, ""))
    return RtspTarget(url=clean, host=host, port=port, username=username, password=password)


# --------------------------------------------------------------------------- connection


def _redact_head(head: str) -> str:
    return re.sub(r"(?im)^(authorization:\s*\S+).*$", r"\1 <redacted>", head)


class RtspConnection(RTSPConnection):  # type: ignore[misc]  # aiortsp ships no types
    """One RTSP control connection: requests with auth, interleaved channels, a close reason."""

    def __init__(
        self, target: RtspTarget, *, timeout_s: float, user_agent: str = USER_AGENT
    ) -> None:
        super().__init__(
            target.host, target.port, None, None, logger=_aiortsp_logger, timeout=timeout_s
        )
        # aiortsp sets an exception on ``result`` when the connection drops; nobody awaits
        # it, so mark it retrieved to keep asyncio from warning at garbage collection.
        self.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.target = target
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self.auth: Authenticator | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._splitter = StreamSplitter(self._channel_ok)
        self._channels: dict[int, Callable[[bytes], None]] = {}
        self._pending: dict[int, asyncio.Future[RtspMessage]] = {}
        self._next_cseq = 1
        self._logged_junk = 0

    # -- lifecycle

    async def open(self) -> None:
        """Connect; refused, unreachable or slow -> ``CameraConnectError``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                await loop.create_connection(lambda: self, self.target.host, self.target.port)
        except TimeoutError:
            raise CameraConnectError(
                f"cannot connect to {self.target.hostport}: no answer within {self.timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise CameraConnectError(
                f"cannot connect to {self.target.hostport}: {exc.strerror or exc}"
            ) from None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        reason = (
            f"connection to {self.target.hostport} lost: {exc}"
            if exc
            else f"{self.target.hostport} closed the connection"
        )
        if not self.closed.done():
            self.closed.set_result(reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CameraClosedError(reason))

    @property
    def local_address(self) -> str | None:
        transport = self._transport
        if transport is None:
            return None
        sockname = transport.get_extra_info("sockname")
        return str(sockname[0]) if sockname else None

    # -- receiving

    def _channel_ok(self, channel: int) -> bool:
        return channel in self._channels

    def set_channel(self, channel: int, handler: Callable[[bytes], None]) -> None:
        self._channels[channel] = handler

    def clear_channel(self, channel: int) -> None:
        self._channels.pop(channel, None)

    @property
    def junk_bytes(self) -> int:
        return self._splitter.junk_bytes

    def data_received(self, data: bytes) -> None:
        for item in self._splitter.feed(data):
            try:
                if isinstance(item, InterleavedFrame):
                    self._channels[item.channel](item.data)
                elif item.status:
                    self._on_response(item)
                else:
                    self._on_server_request(item)
            except Exception:
                logger.exception("error handling data from %s", self.target.hostport)
        if self._splitter.junk_bytes != self._logged_junk:
            logger.debug(
                "%s: skipped %d unexpected bytes on the RTSP stream (%d resyncs so far)",
                self.target.hostport, self._splitter.junk_bytes - self._logged_junk,
                self._splitter.resyncs,
            )
            self._logged_junk = self._splitter.junk_bytes

    def _on_response(self, response: RtspMessage) -> None:
        cseq = response.cseq
        if cseq is None and len(self._pending) == 1:
            cseq = next(iter(self._pending))  # a camera that forgets CSeq: one request is open
        fut = self._pending.get(cseq) if cseq is not None else None
        if fut is None or fut.done():
            logger.debug("%s: unmatched response %d (CSeq %s)",
                         self.target.hostport, response.status, cseq)
            return
        fut.set_result(response)

    def _on_server_request(self, request: RtspMessage) -> None:
        logger.debug("%s: server sent %s; answering 551", self.target.hostport, request.method)
        headers = f"RTSP/1.0 551 Option not supported\r\nCSeq: {request.header('cseq') or 0}\r\n"
        session = request.header("session")
        if session:
            headers += f"Session: {session}\r\n"
        self._write((headers + "\r\n").encode())

    # -- sending

    def _write(self, data: bytes) -> None:
        if self._transport is None:
            raise CameraClosedError(f"connection to {self.target.hostport} is closed")
        self._transport.write(data)

    def send_message(
        self, msg: str, cseq: int, headers: dict[str, Any], body: bytes | None = None
    ) -> None:
        """aiortsp's writer, without logging credentials (its own logs them at DEBUG)."""
        lines = [msg, f"CSeq: {cseq}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"User-Agent: {self.user_agent}")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        logger.debug(">>> %s", _redact_head(head).rstrip())
        self._write(head.encode("utf-8") + (body or b""))

    async def _exchange(
        self, method: str, url: str, headers: Mapping[str, str], timeout_s: float
    ) -> RtspMessage:
        cseq = self._next_cseq
        self._next_cseq += 1
        fut: asyncio.Future[RtspMessage] = asyncio.get_running_loop().create_future()
        self._pending[cseq] = fut
        try:
            self.send_message(f"{method} {url} RTSP/1.0", cseq, dict(headers))
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            raise CameraConnectError(
                f"{self.target.hostport} did not answer {method} within {timeout_s:g} s"
            ) from None
        finally:
            self._pending.pop(cseq, None)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> RtspMessage:
        """Send one request and return the answer, whatever its status, except 401.

        A 401 is answered once with the best scheme offered (Digest over Basic), once more
        for a stale nonce; a 401 after that -> ``CameraAuthError``.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        fresh_retry = stale_retry = False
        while True:
            sent = dict(headers or {})
            if self.auth is not None:
                sent["Authorization"] = self.auth.authorization(method, url)
            response = await self._exchange(method, url, sent, timeout_s)
            if response.status != 401:
                if self.auth is not None and 200 <= response.status < 300:
                    self.auth.on_success(response.header("authentication-info"))
                return response
            challenges = parse_challenges(response.header_all("www-authenticate"))
            username, password = self.target.username, self.target.password
            if username is None or password is None:
                raise CameraAuthError(
                    f"{self.target.hostport} requires credentials for {method} and none are "
                    "configured"
                )
            stale = stale_digest(challenges)
            if isinstance(self.auth, DigestAuth) and stale is not None and not stale_retry:
                stale_retry = True
                logger.debug("%s: stale nonce on %s; retrying", self.target.hostport, method)
                self.auth.refresh(stale)
                continue
            if fresh_retry:
                scheme = self.auth.scheme if self.auth is not None else "?"
                raise CameraAuthError(
                    f"{self.target.hostport} rejected the credentials for user {username!r} "
                    f"({scheme} auth, {method})"
                )
            fresh_retry = True
            chosen = choose_auth(challenges, username, password)
            if chosen is None:
                offered = ", ".join(sorted({c.scheme for c in challenges})) or "none"
                raise CameraAuthError(
                    f"{self.target.hostport} offers no supported auth scheme (offered: {offered})"
                )
            self.auth = chosen


def expect_ok(response: RtspMessage, method: str, target: RtspTarget) -> RtspMessage:
    if 200 <= response.status < 300:
        return response
    raise CameraProtocolError(
        f"{target.hostport} answered {method} with {response.status} {response.reason}".rstrip()
    )


def translate_error(exc: BaseException, target: RtspTarget, doing: str) -> CameraError:
    """Any foreign exception met while talking to a camera -> our tree (once, here)."""
    if isinstance(exc, CameraError):
        return exc
    if isinstance(exc, TimeoutError):
        return CameraConnectError(f"{target.hostport}: timed out during {doing}")
    if isinstance(exc, ConnectionError):
        return CameraClosedError(f"{target.hostport}: connection lost during {doing}: {exc}")
    if isinstance(exc, OSError):
        return CameraConnectError(f"{target.hostport}: {doing} failed: {exc.strerror or exc}")
    return CameraProtocolError(f"{target.hostport}: {doing} failed: {type(exc).__name__}: {exc}")
