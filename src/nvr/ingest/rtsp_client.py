"""Our thin layer over aiortsp 1.4.0: the fixes the recorder needs, with typed edges.

aiortsp supplies the asyncio protocol and connect logic (``RTSPConnection``), the RTP
transports (``TCPTransport``, ``UDPTransport``) and RTCP receiver reports (``RTCPStats``).
What it gets wrong for real cameras, and where it is fixed here:

- Digest ignores ``qop``, knows no ``-sess`` algorithms and never counts ``nc``:
  ``DigestAuth`` implements RFC 7616 (MD5 and SHA-256, ``qop=auth``, stale nonce).
- Basic is picked when a camera offers both: ``choose_auth`` prefers Digest.
- Percent-encoded userinfo is passed on undecoded: ``rtsp_target`` decodes it and strips it
  from every URL we send.
- Unexpected bytes on the TCP stream (and a malformed RTCP packet) drop the connection:
  ``StreamSplitter`` resyncs to the next ``$`` or ``RTSP/1.0`` and counts what it skipped.
- Requests are logged with their ``Authorization`` header: ours log a redacted copy and
  aiortsp's own loggers are set to WARNING.
- Its TCP transport insists on the interleaved channels it asked for, its UDP transport
  binds IPv4 only: ``TcpRtpTransport`` follows the camera's channels, ``UdpRtpTransport``
  binds on the address the camera sees us at.
- Its errors (and ``RTSPReader``'s silent endings) become our ``CameraError`` tree here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import struct
from base64 import b64encode
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from aiortsp.rtcp.parser import RTCP
from aiortsp.rtsp.connection import RTSPConnection
from aiortsp.transport.tcp import TCPTransport
from aiortsp.transport.udp import RTCPSink, RTPSink, UDPTransport

from nvr.errors import (
    CameraAuthError,
    CameraClosedError,
    CameraConnectError,
    CameraError,
    CameraProtocolError,
)

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
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
NTP_UNIX_OFFSET_S = 2_208_988_800


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


# --------------------------------------------------------------------------- auth


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower-case: "basic", "digest", ...
    params: Mapping[str, str]  # lower-case names, unquoted values


_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values; one value may hold several challenges."""
    out: list[Challenge] = []
    for value in values:
        scheme: str | None = None
        params: dict[str, str] = {}
        i, n = 0, len(value)
        while i < n:
            if value[i] in " \t,":
                i += 1
                continue
            m = _TOKEN_RE.match(value, i)
            if m is None:
                i += 1
                continue
            name, j = m.group(0), m.end()
            k = j
            while k < n and value[k] in " \t":
                k += 1
            if k < n and value[k] == "=" and scheme is not None:
                k += 1
                while k < n and value[k] in " \t":
                    k += 1
                text, i = _param_value(value, k)
                params[name.lower()] = text
                continue
            if scheme is not None:
                out.append(Challenge(scheme, params))
            scheme, params, i = name.lower(), {}, j
        if scheme is not None:
            out.append(Challenge(scheme, params))
    return out


def _param_value(value: str, i: int) -> tuple[str, int]:
    if i < len(value) and value[i] == '"':
        chars: list[str] = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            chars.append(value[i])
            i += 1
        return "".join(chars), i + 1
    end = value.find(",", i)
    end = len(value) if end < 0 else end
    return value[i:end].strip(), end


class Authenticator(Protocol):
    scheme: str

    def authorization(self, method: str, uri: str) -> str: ...

    def on_success(self, authentication_info: str | None) -> None: ...


class BasicAuth:
    scheme = "Basic"

    def __init__(self, username: str, password: str) -> None:
        token = b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._header = f"Basic {token}"

    def authorization(self, method: str, uri: str) -> str:
        return self._header

    def on_success(self, authentication_info: str | None) -> None:
        return None


_DIGEST_HASHES: dict[str, Callable[[bytes], Any]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestAuth:
    """RFC 7616 Digest: MD5/SHA-256 (and ``-sess``), ``qop=auth`` with cnonce and ``nc``."""

    scheme = "Digest"

    def __init__(
        self, username: str, password: str, challenge: Challenge, *, cnonce: str | None = None
    ) -> None:
        self._username = username
        self._password = password
        self._fixed_cnonce = cnonce
        self._params: Mapping[str, str] = {}
        self._nc = 0
        self._cnonce = ""
        self.refresh(challenge)

    @staticmethod
    def supports(challenge: Challenge) -> bool:
        algorithm = challenge.params.get("algorithm", "MD5").upper().removesuffix("-SESS")
        return (
            challenge.scheme == "digest"
            and algorithm in _DIGEST_HASHES
            and "nonce" in challenge.params
        )

    def refresh(self, challenge: Challenge) -> None:
        """Take a new challenge (a new or stale nonce): ``nc`` starts over."""
        self._params = dict(challenge.params)
        self._nc = 0
        self._cnonce = self._fixed_cnonce or os.urandom(16).hex()

    @property
    def algorithm(self) -> str:
        return self._params.get("algorithm", "MD5").upper()

    def _qop(self) -> str | None:
        offered = {q.strip().lower() for q in self._params.get("qop", "").split(",")}
        if "auth" in offered:
            return "auth"
        if "auth-int" in offered:
            return "auth-int"
        return None

    def authorization(self, method: str, uri: str) -> str:
        algorithm = self.algorithm
        hash_fn = _DIGEST_HASHES[algorithm.removesuffix("-SESS")]

        def h(text: str) -> str:
            return str(hash_fn(text.encode("utf-8")).hexdigest())

        realm = self._params.get("realm", "")
        nonce = self._params.get("nonce", "")
        qop = self._qop()
        ha1 = h(f"{self._username}:{realm}:{self._password}")
        if algorithm.endswith("-SESS"):
            ha1 = h(f"{ha1}:{nonce}:{self._cnonce}")
        # Our requests have no body, so auth-int hashes the empty entity.
        ha2 = h(f"{method}:{uri}:{h('')}") if qop == "auth-int" else h(f"{method}:{uri}")
        fields = [
            f"username={_quote(self._username)}",
            f"realm={_quote(realm)}",
            f"nonce={_quote(nonce)}",
            f"uri={_quote(uri)}",
        ]
        if qop is None:
            response = h(f"{ha1}:{nonce}:{ha2}")
        else:
            self._nc += 1
            nc = f"{self._nc:08x}"
            response = h(f"{ha1}:{nonce}:{nc}:{self._cnonce}:{qop}:{ha2}")
            fields += [f"qop={qop}", f"nc={nc}", f"cnonce={_quote(self._cnonce)}"]
        fields.append(f"response={_quote(response)}")
        if "algorithm" in self._params:
            fields.append(f"algorithm={self._params['algorithm']}")
        if "opaque" in self._params:
            fields.append(f"opaque={_quote(self._params['opaque'])}")
        return "Digest " + ", ".join(fields)

    def on_success(self, authentication_info: str | None) -> None:
        if not authentication_info:
            return
        info = parse_challenges([f"Digest {authentication_info}"])
        nextnonce = info[0].params.get("nextnonce") if info else None
        if nextnonce:
            self._params = {**self._params, "nonce": nextnonce}
            self._nc = 0


def choose_auth(challenges: list[Challenge], username: str, password: str) -> Authenticator | None:
    """Digest over Basic, SHA-256 over MD5; None when nothing offered is supported."""
    digests = [c for c in challenges if DigestAuth.supports(c)]
    digests.sort(key=lambda c: 0 if c.params.get("algorithm", "").upper().startswith("SHA") else 1)
    if digests:
        return DigestAuth(username, password, digests[0])
    if any(c.scheme == "basic" for c in challenges):
        return BasicAuth(username, password)
    return None


def stale_digest(challenges: list[Challenge]) -> Challenge | None:
    for c in challenges:
        if c.scheme == "digest" and c.params.get("stale", "").lower() == "true":
            return c
    return None


# --------------------------------------------------------------------------- framing


@dataclass(frozen=True, slots=True)
class InterleavedFrame:
    """One ``$``-framed RTP/RTCP packet of an interleaved TCP stream (RFC 2326 §10.12)."""

    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RtspMessage:
    """A response (``status`` > 0) or a request from the server (``method`` set)."""

    status: int
    reason: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]  # lower-case names, in order, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> tuple[str, ...]:
        name = name.lower()
        return tuple(value for key, value in self.headers if key == name)

    @property
    def cseq(self) -> int | None:
        value = self.header("cseq")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None


_RESPONSE_TOKEN = b"RTSP/1.0 "
_REQUEST_TOKENS = tuple(
    m + b" "
    for m in (b"OPTIONS", b"DESCRIBE", b"ANNOUNCE", b"SETUP", b"PLAY", b"PAUSE", b"TEARDOWN",
              b"GET_PARAMETER", b"SET_PARAMETER", b"REDIRECT", b"RECORD")
)
_SYNC_TOKENS = (_RESPONSE_TOKEN, *_REQUEST_TOKENS)
_LONGEST_TOKEN = max(len(t) for t in _SYNC_TOKENS)


class StreamSplitter:
    """Sans-IO: the bytes of an RTSP TCP connection in, messages and interleaved frames out.

    Bytes that start neither a ``$`` frame on a known channel nor an RTSP message are
    skipped up to the next plausible start; ``junk_bytes`` and ``resyncs`` count them.
    While resyncing, a ``$`` frame must also look like RTP/RTCP (version 2) to be taken.
    """

    def __init__(self, channel_ok: Callable[[int], bool]) -> None:
        self._channel_ok = channel_ok
        self._buf = bytearray()
        self._resyncing = False
        self.junk_bytes = 0
        self.resyncs = 0

    def feed(self, data: bytes) -> list[InterleavedFrame | RtspMessage]:
        buf = self._buf
        buf += data
        out: list[InterleavedFrame | RtspMessage] = []
        pos, n = 0, len(buf)
        while pos < n:
            first = buf[pos]
            if first == 0x24:  # "$"
                if n - pos < 4:
                    break
                channel = buf[pos + 1]
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if not self._channel_ok(channel) or (
                    self._resyncing and length and n - pos > 4 and buf[pos + 4] & 0xC0 != 0x80
                ):
                    pos = self._skip(buf, pos)
                    continue
                if n - pos - 4 < length:
                    break
                out.append(InterleavedFrame(channel, bytes(buf[pos + 4 : pos + 4 + length])))
                pos += 4 + length
                self._resyncing = False
                continue
            if first in (0x0D, 0x0A) and not self._resyncing:
                pos += 1  # stray line ends between messages
                continue
            if buf.startswith(_SYNC_TOKENS, pos):
                head_end = buf.find(b"\r\n\r\n", pos)
                if head_end < 0:
                    if n - pos > MAX_HEAD_BYTES:
                        pos = self._skip(buf, pos)
                        continue
                    break
                message = _parse_head(bytes(buf[pos:head_end]))
                if message is None:
                    pos = self._skip(buf, pos)
                    continue
                body_len = _content_length(message)
                if body_len > MAX_BODY_BYTES:
                    pos = self._skip(buf, pos)
                    continue
                body_start = head_end + 4
                if n - body_start < body_len:
                    break
                out.append(
                    RtspMessage(
                        message.status, message.reason, message.method, message.url,
                        message.headers, bytes(buf[body_start : body_start + body_len]),
                    )
                )
                pos = body_start + body_len
                self._resyncing = False
                continue
            rest = bytes(buf[pos : pos + _LONGEST_TOKEN])
            if len(rest) < _LONGEST_TOKEN and any(t.startswith(rest) for t in _SYNC_TOKENS):
                break  # maybe the start of a message: wait for more
            pos = self._skip(buf, pos)
        del buf[:pos]
        return out

    def _skip(self, buf: bytearray, pos: int) -> int:
        """Skip junk at ``pos`` up to the next candidate start; returns the new position."""
        candidates = [buf.find(b"$", pos + 1)]
        candidates += [buf.find(t, pos + 1) for t in _SYNC_TOKENS]
        found = [c for c in candidates if c >= 0]
        new_pos = min(found) if found else max(pos + 1, len(buf) - _LONGEST_TOKEN + 1)
        self.junk_bytes += new_pos - pos
        if not self._resyncing:
            self.resyncs += 1
        self._resyncing = True
        return new_pos


def _parse_head(head: bytes) -> RtspMessage | None:
    text = head.decode("utf-8", errors="replace")
    lines = text.split("\r\n")
    start = lines[0].split(None, 2)
    status, reason, method, url = 0, "", "", ""
    if lines[0].startswith("RTSP/1.0 "):
        if len(start) < 2 or not start[1].isdigit():
            return None
        status, reason = int(start[1]), start[2].strip() if len(start) > 2 else ""
    elif len(start) == 3 and start[2].strip() == "RTSP/1.0":
        method, url = start[0], start[1]
    else:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers.pop()
            headers.append((name, f"{value} {line.strip()}"))
            continue
        name, colon, value = line.partition(":")
        if colon and name.strip():
            headers.append((name.strip().lower(), value.strip()))
    return RtspMessage(status, reason, method, url, tuple(headers), b"")


def _content_length(message: RtspMessage) -> int:
    try:
        return max(0, int(message.header("content-length") or "0"))
    except ValueError:
        return 0


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


# --------------------------------------------------------------------------- RTP/RTCP


def rtcp_sender_reports(data: bytes) -> list[tuple[int, int]]:
    """``(ntp_ns_since_unix_epoch, rtp_timestamp)`` of every SR in a compound RTCP packet."""
    out: list[tuple[int, int]] = []
    for packet_type, body in _rtcp_packets(data):
        if packet_type == 200 and len(body) >= 20:
            _ssrc, ntp_s, ntp_frac, rtp_ts = struct.unpack_from("!IIII", body)
            ntp_ns = (ntp_s - NTP_UNIX_OFFSET_S) * 10**9 + ((ntp_frac * 10**9) >> 32)
            out.append((ntp_ns, rtp_ts))
    return out


def rtcp_has_bye(data: bytes) -> bool:
    return any(packet_type == 203 for packet_type, _ in _rtcp_packets(data))


def _rtcp_packets(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 4 <= len(data):
        first, packet_type, words = struct.unpack_from("!BBH", data, pos)
        end = pos + 4 + 4 * words
        if first & 0xC0 != 0x80 or end > len(data):
            break
        out.append((packet_type, data[pos + 4 : end]))
        pos = end
    return out


class MediaSink(Protocol):
    """Where a transport hands what it receives (the session implements this)."""

    def rtp(self, stream_index: int, data: bytes) -> None: ...

    def sender_report(self, stream_index: int, ntp_ns: int, rtp_timestamp: int) -> None: ...

    def bye(self, stream_index: int) -> None: ...


class _SeqTs:
    """The two fields aiortsp's ``RTCPStats.update`` reads, without a dpkt parse."""

    __slots__ = ("seq", "ts")

    def __init__(self, seq: int, ts: int) -> None:
        self.seq = seq
        self.ts = ts


class _Delivery:
    """Shared by our two transports: raw RTP out, SRs parsed to integers, aiortsp's stats fed.

    aiortsp's own receive path parses with dpkt and raises on odd packets; ours never raises,
    and it never starts aiortsp's RTP timeout loop (the caller's watchdog owns stalls).
    """

    stream_index: int
    sink: MediaSink
    stats: Any
    _rtcp_loop: Any
    _source_ssrc: int | None

    def handle_rtp_data(self, data: bytes) -> None:
        self.sink.rtp(self.stream_index, data)
        if len(data) >= 12 and data[0] & 0xC0 == 0x80:
            seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
            self._source_ssrc = ssrc
            try:
                self.stats.update(_SeqTs(seq, ts))
            except Exception:
                logger.debug("RTCP statistics update failed", exc_info=True)

    def handle_rtcp_data(self, data: bytes) -> None:
        for ntp_ns, rtp_ts in rtcp_sender_reports(data):
            self.sink.sender_report(self.stream_index, ntp_ns, rtp_ts)
        if rtcp_has_bye(data):
            self.sink.bye(self.stream_index)
        try:
            self.stats.handle_rtcp(RTCP.unpack(data))
        except Exception:
            logger.debug("unparseable RTCP packet (%d bytes) ignored", len(data))
            return
        if self._rtcp_loop is None and self._can_report():
            self._rtcp_loop = asyncio.ensure_future(self.rtcp_loop())  # type: ignore[attr-defined]

    def _can_report(self) -> bool:
        return True

    def _fix_report(self, rtcp: Any) -> bytes:
        # aiortsp puts its own SSRC in the report block; it must name the source.
        if self._source_ssrc is not None:
            for packet in rtcp.packets:
                for block in getattr(packet, "reports", []):
                    block.ssrc = self._source_ssrc
        return bytes(rtcp)


def parse_transport(header: str) -> dict[str, str]:
    """``RTP/AVP/TCP;unicast;interleaved=0-1`` -> {"rtp/avp/tcp": "", "interleaved": "0-1"...}."""
    fields: dict[str, str] = {}
    for item in header.split(",", maxsplit=1)[0].split(";"):
        key, _, value = item.strip().partition("=")
        if key:
            fields[key.lower()] = value.strip()
    return fields


def _port_pair(text: str) -> tuple[int, int] | None:
    try:
        first, _, second = text.partition("-")
        a = int(first)
        return a, int(second) if second else a + 1
    except ValueError:
        return None


class TcpRtpTransport(_Delivery, TCPTransport):  # type: ignore[misc]  # aiortsp has no types
    """RTP over the RTSP connection; stream N asks for channels 2N and 2N+1."""

    def __init__(self, connection: RtspConnection, *, stream_index: int, sink: MediaSink) -> None:
        super().__init__(connection, logger=_aiortsp_logger, timeout=0)
        self.stream_index = stream_index
        self.sink = sink
        self._source_ssrc = None
        self._conn = connection
        self.rtp_idx = 2 * stream_index
        self.rtcp_idx = 2 * stream_index + 1

    async def prepare(self) -> None:
        self._conn.set_channel(self.rtp_idx, self.handle_rtp_data)
        self._conn.set_channel(self.rtcp_idx, self.handle_rtcp_data)

    def transport_request(self) -> str:
        return f"RTP/AVP/TCP;unicast;interleaved={self.rtp_idx}-{self.rtcp_idx}"

    def apply_transport_response(self, header: str) -> None:
        """Follow the channels the camera chose, when it chose others than we asked for."""
        pair = _port_pair(parse_transport(header).get("interleaved", ""))
        if pair is None or pair == (self.rtp_idx, self.rtcp_idx):
            return
        logger.debug("%s: camera chose interleaved channels %d-%d instead of %d-%d",
                     self._conn.target.hostport, *pair, self.rtp_idx, self.rtcp_idx)
        self._conn.clear_channel(self.rtp_idx)
        self._conn.clear_channel(self.rtcp_idx)
        self.rtp_idx, self.rtcp_idx = pair
        self._conn.set_channel(self.rtp_idx, self.handle_rtp_data)
        self._conn.set_channel(self.rtcp_idx, self.handle_rtcp_data)

    def _can_report(self) -> bool:
        return bool(self._conn.running)

    async def send_rtcp_report(self, rtcp: Any) -> None:
        if self._conn.running:
            self._conn.send_binary(self.rtcp_idx, self._fix_report(rtcp))

    def close(self, error: Exception | None = None) -> None:
        # TCPTransport.close would close the shared connection; the session does that.
        super(TCPTransport, self).close(error)
        self._conn.clear_channel(self.rtp_idx)
        self._conn.clear_channel(self.rtcp_idx)


class _FilteredRtpSink(RTPSink):  # type: ignore[misc]  # aiortsp has no types
    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.receiver.accept_from(addr):
            self.receiver.handle_rtp_data(data)


class _FilteredRtcpSink(RTCPSink):  # type: ignore[misc]  # aiortsp has no types
    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.receiver.accept_from(addr):
            self.receiver.handle_rtcp(data, addr)


def bind_udp_pair(address: str, attempts: int = 20) -> tuple[socket.socket, socket.socket]:
    """An even RTP port and the next odd one for RTCP, on ``address`` (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(attempts):
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        rtcp: socket.socket | None = None
        try:
            rtp.bind((address, 0))
            port = rtp.getsockname()[1]
            if port % 2:
                rtp.close()
                continue
            rtcp = socket.socket(family, socket.SOCK_DGRAM)
            rtcp.bind((address, port + 1))
            return rtp, rtcp
        except OSError:
            rtp.close()
            if rtcp is not None:
                rtcp.close()
    raise CameraConnectError(f"could not bind an RTP/RTCP UDP port pair on {address}")


class UdpRtpTransport(_Delivery, UDPTransport):  # type: ignore[misc]  # aiortsp has no types
    """RTP and RTCP on a UDP port pair bound where the camera reaches us."""

    def __init__(self, connection: RtspConnection, *, stream_index: int, sink: MediaSink) -> None:
        super().__init__(connection, logger=_aiortsp_logger, timeout=0)
        self.stream_index = stream_index
        self.sink = sink
        self._source_ssrc = None
        self._conn = connection
        self.dropped_datagrams = 0
        self._peer = _normal_ip(connection.target.host)

    async def prepare(self) -> None:
        loop = asyncio.get_running_loop()
        rtp_sock, rtcp_sock = bind_udp_pair(self._conn.local_address or "0.0.0.0")
        _, self.rtp_sink = await loop.create_datagram_endpoint(
            lambda: _FilteredRtpSink(self), sock=rtp_sock
        )
        _, self.rtcp_sink = await loop.create_datagram_endpoint(
            lambda: _FilteredRtcpSink(self), sock=rtcp_sock
        )

    def accept_from(self, addr: tuple[Any, ...]) -> bool:
        if _normal_ip(str(addr[0])) == self._peer:
            return True
        self.dropped_datagrams += 1
        return False

    def transport_request(self) -> str:
        return (
            f"RTP/AVP;unicast;client_port={self.rtp_sink.local_port}-{self.rtcp_sink.local_port}"
        )

    def apply_transport_response(self, header: str) -> None:
        pair = _port_pair(parse_transport(header).get("server_port", ""))
        if pair is not None:
            self.server_rtp, self.server_rtcp = pair

    async def send_rtcp_report(self, rtcp: Any) -> None:
        target = self.rtcp_sender
        if target is None and self.server_rtcp is not None:
            target = (self._conn.target.host, self.server_rtcp)
        if target is not None:
            self.rtcp_sink.sendto(self._fix_report(rtcp), target)

    def close(self, error: Exception | None = None) -> None:
        if self.rtp_sink is None or self.rtcp_sink is None:
            super(UDPTransport, self).close(error)
            for sink in (self.rtp_sink, self.rtcp_sink):
                if sink is not None:
                    sink.close()
            return
        super().close(error)


def _normal_ip(host: str) -> str:
    host = host.removeprefix("::ffff:")
    try:
        info = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except OSError:
        return host
    return str(info[0][4][0]) if info else host


RtpTransport = TcpRtpTransport | UdpRtpTransport
TransportKind = Literal["tcp", "udp"]


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
