# ruff: noqa: E501  (SDP lines are as long as cameras write them)
"""A small scriptable RTSP server on loopback, for the client and session tests.

Each test describes the camera it wants in a ``Script`` (auth mode, quirks, canned packets)
and runs ``RtspTestServer(script)`` as an async context manager. The server records every
request it got, so tests can assert on what the client sent.

    async with RtspTestServer(Script(auth="digest", qop=True)) as server:
        url = server.url("/live")
        ...
        request = await server.wait_for("PLAY")
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import struct
from base64 import b64decode
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from nvr.clock import Clock, SystemClock
from nvr.ingest.session import RtspSession

LOOPBACK = "127.0.0.1"
NTP_UNIX_OFFSET_S = 2_208_988_800

DEFAULT_SDP = """v=0
o=- 1188340656180883 1 IN IP4 127.0.0.1
s=Session streamed by the test server
t=0 0
a=control:*
a=range:npt=now-
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1;profile-level-id=4D0029;sprop-parameter-sets=Z00AKeKQFAe2AtwEBAaQeJEV,aO48gA==
a=control:trackID=0
m=audio 0 RTP/AVP 97
c=IN IP4 0.0.0.0
a=rtpmap:97 MPEG4-GENERIC/16000/1
a=fmtp:97 streamtype=5;profile-level-id=15;mode=AAC-hbr;config=1408;sizeLength=13;indexLength=3;indexDeltaLength=3
a=control:trackID=1
"""

AuthMode = Literal["none", "basic", "digest", "both"]


def rtp_packet(
    seq: int,
    ts: int,
    payload: bytes = b"\x65\x88",
    *,
    pt: int = 96,
    ssrc: int = 0x1234,
    marker: bool = True,
) -> bytes:
    return (
        struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
        )
        + payload
    )


def rtcp_sender_report(ssrc: int, ntp_ns: int, rtp_ts: int) -> bytes:
    secs, rem_ns = divmod(ntp_ns, 10**9)
    frac = (rem_ns << 32) // 10**9
    body = struct.pack("!IIIIII", ssrc, secs + NTP_UNIX_OFFSET_S, frac, rtp_ts, 10, 1000)
    return struct.pack("!BBH", 0x80, 200, len(body) // 4) + body


def rtcp_bye(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x81, 203, 1, ssrc)


@dataclass
class Script:
    """How the simulated camera behaves. Defaults: no auth, H.264 + AAC, well-behaved."""

    auth: AuthMode = "none"
    username: str = "admin"
    password: str = "secret"
    qop: bool = False  # Digest challenge carries qop="auth" and the answer must use it
    algorithm: str | None = None  # Digest algorithm parameter ("MD5", "SHA-256"); None: omit
    basic_first: bool = True  # with auth="both": which challenge comes first
    one_header: bool = False  # with auth="both": both challenges in one WWW-Authenticate
    stale_after: int | None = None  # after N authorized requests, answer once "stale=true"
    public: str | None = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
    session_id: str = "4F2A11C9"
    session_timeout_s: int | None = None
    refuse_udp: bool = False
    interleaved_answer: dict[int, str] = field(default_factory=dict)  # stream -> "6-7"
    sdp: str = DEFAULT_SDP
    content_base: bool = True
    rtp_info: bool = False
    packets: list[tuple[int, bytes]] = field(default_factory=list)  # after PLAY: (stream, rtp)
    rtcp: list[tuple[int, bytes]] = field(default_factory=list)  # after the packets
    junk_between_packets: bytes = b""
    junk_before: dict[str, bytes] = field(default_factory=dict)  # method -> bytes first
    statuses: dict[str, int] = field(default_factory=dict)  # method -> forced status
    silent: set[str] = field(default_factory=set)  # methods never answered
    omit_cseq: set[str] = field(default_factory=set)  # methods answered without CSeq
    close_after_play: bool = False


@dataclass(frozen=True)
class Recorded:
    method: str
    url: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "


def _h(algorithm: str, text: str) -> str:
    fn = hashlib.sha256 if algorithm.upper().startswith("SHA-256") else hashlib.md5
    return fn(text.encode("utf-8")).hexdigest()


def _params(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in re.finditer(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))', value):
        raw = m.group(2) if m.group(2) is not None else m.group(3)
        out[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw)
    return out


class RtspTestServer:
    def __init__(self, script: Script | None = None, host: str = LOOPBACK) -> None:
        self.script = script or Script()
        self.host = host
        self.port = 0
        self.requests: list[Recorded] = []
        self.auth_schemes: list[str] = []  # scheme of every Authorization header received
        self.nc_seen: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._nonce_counter = 0
        self._nonce = self._new_nonce()
        self._authorized = 0
        self._stale_sent = False
        self._udp_targets: dict[int, tuple[str, int, int]] = {}  # stream -> (ip, rtp, rtcp)
        self._udp_socks: list[socket.socket] = []
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RtspTestServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close_clients()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for sock in self._udp_socks:
            sock.close()

    def url(self, path: str = "/live", userinfo: str | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = f"{userinfo}@" if userinfo else ""
        return f"rtsp://{prefix}{host}:{self.port}{path}"

    async def close_clients(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    def send_raw(self, data: bytes) -> None:
        for writer in self.writers:
            writer.write(data)

    def send_interleaved(self, channel: int, data: bytes) -> None:
        self.send_raw(struct.pack("!cBH", b"$", channel, len(data)) + data)

    async def wait_for(self, method: str, count: int = 1, timeout_s: float = 5.0) -> Recorded:
        """The ``count``-th request with this method, waiting for it if need be."""
        async with asyncio.timeout(timeout_s):
            while True:
                seen = [r for r in self.requests if r.method == method]
                if len(seen) >= count:
                    return seen[count - 1]
                self._changed.clear()
                await self._changed.wait()

    # -- protocol

    def _new_nonce(self) -> str:
        self._nonce_counter += 1
        return hashlib.md5(f"nonce-{id(self)}-{self._nonce_counter}".encode()).hexdigest()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                first = await reader.readexactly(1)
                if first == b"$":  # the client's RTCP receiver reports
                    _channel, length = struct.unpack("!BH", await reader.readexactly(3))
                    await reader.readexactly(length)
                    continue
                head = first + await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("utf-8").split("\r\n")
                method, url, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        k = k.strip().lower()
                        headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
                if int(headers.get("content-length", "0")):
                    await reader.readexactly(int(headers["content-length"]))
                self.requests.append(Recorded(method, url, headers))
                self._changed.set()
                await self._answer(writer, method, url, headers)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _challenges(self, stale: bool = False) -> list[str]:
        s = self.script
        digest = f'Digest realm="test-cam", nonce="{self._nonce}"'
        if s.algorithm:
            digest += f", algorithm={s.algorithm}"
        if s.qop:
            digest += ', qop="auth"'
        digest += ', opaque="5ccc069c403ebaf9f0171e9517f40e41"'
        if stale:
            digest += ", stale=TRUE"
        basic = 'Basic realm="test-cam"'
        if s.auth == "basic":
            return [basic]
        if s.auth == "digest" or stale:
            return [digest]
        pair = [basic, digest] if s.basic_first else [digest, basic]
        return [", ".join(pair)] if s.one_header else pair

    def _check_auth(self, method: str, url: str, header: str | None) -> bool | Literal["stale"]:
        s = self.script
        if header is None:
            return False
        scheme, _, rest = header.partition(" ")
        self.auth_schemes.append(scheme)
        if scheme == "Basic" and s.auth in ("basic", "both"):
            user, _, password = b64decode(rest).decode("utf-8").partition(":")
            return user == s.username and password == s.password
        if scheme != "Digest" or s.auth not in ("digest", "both"):
            return False
        p = _params(rest)
        algorithm = s.algorithm or "MD5"
        if p.get("username") != s.username or p.get("uri") != url:
            return False
        ha1 = _h(algorithm, f"{s.username}:test-cam:{s.password}")
        ha2 = _h(algorithm, f"{method}:{url}")
        if s.qop:
            if p.get("qop") != "auth" or "nc" not in p or "cnonce" not in p:
                return False
            self.nc_seen.append(p["nc"])
            expected = _h(algorithm, f"{ha1}:{p.get('nonce')}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
        else:
            expected = _h(algorithm, f"{ha1}:{p.get('nonce')}:{ha2}")
        if p.get("response") != expected:
            return False
        if p.get("nonce") != self._nonce:
            return "stale"
        return True

    async def _answer(
        self, writer: asyncio.StreamWriter, method: str, url: str, headers: dict[str, str]
    ) -> None:
        s = self.script
        if method in s.silent:
            return
        out: list[tuple[str, str]] = []
        if method not in s.omit_cseq:
            out.append(("CSeq", headers.get("cseq", "0")))
        body = b""
        status, reason = 200, "OK"

        if s.auth != "none":
            verdict = self._check_auth(method, url, headers.get("authorization"))
            if (
                verdict is True
                and s.stale_after is not None
                and not self._stale_sent
                and self._authorized >= s.stale_after
            ):
                self._stale_sent = True
                self._nonce = self._new_nonce()
                verdict = "stale"
            if verdict is not True:
                for challenge in self._challenges(stale=verdict == "stale"):
                    out.append(("WWW-Authenticate", challenge))
                self._write(writer, method, 401, "Unauthorized", out, b"")
                return
            self._authorized += 1

        if method in s.statuses:
            status, reason = s.statuses[method], "Forced"
        elif method == "OPTIONS":
            if s.public is not None:
                out.append(("Public", s.public))
        elif method == "DESCRIBE":
            body = s.sdp.replace("\n", "\r\n").encode()
            if s.content_base:
                out.append(("Content-Base", url.rstrip("/") + "/"))
            out.append(("Content-Type", "application/sdp"))
        elif method == "SETUP":
            stream = 1 if url.rstrip("/").endswith("1") else 0
            transport = headers.get("transport", "")
            session = s.session_id + (
                f";timeout={s.session_timeout_s}" if s.session_timeout_s else ""
            )
            out.append(("Session", session))
            if "interleaved=" in transport:
                requested = transport.split("interleaved=")[1].split(";")[0]
                channels = s.interleaved_answer.get(stream, requested)
                out.append(("Transport", f"RTP/AVP/TCP;unicast;interleaved={channels}"))
            elif s.refuse_udp:
                status, reason = 461, "Unsupported Transport"
                out = [o for o in out if o[0] != "Session"]
            else:
                ports = transport.split("client_port=")[1].split(";")[0]
                rtp_port, rtcp_port = (int(x) for x in ports.split("-"))
                peer = writer.get_extra_info("peername")[0]
                self._udp_targets[stream] = (peer, rtp_port, rtcp_port)
                sock = socket.socket(
                    socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM
                )
                sock.bind((self.host, 0))
                self._udp_socks.append(sock)
                server_port = sock.getsockname()[1]
                out.append(
                    (
                        "Transport",
                        f"RTP/AVP;unicast;client_port={ports};"
                        f"server_port={server_port}-{server_port + 1}",
                    )
                )
        elif method == "PLAY":
            out.append(("Session", s.session_id))
            out.append(("Range", "npt=0.000-"))
            if s.rtp_info:
                out.append(
                    (
                        "RTP-Info",
                        f"url={url}trackID=0;seq=1000;rtptime=90000,"
                        f"url={url}trackID=1;seq=2000;rtptime=16000",
                    )
                )
        elif method in ("GET_PARAMETER", "TEARDOWN"):
            out.append(("Session", s.session_id))

        if method in s.junk_before:
            writer.write(s.junk_before[method])
        self._write(writer, method, status, reason, out, body)
        if method == "PLAY" and status == 200:
            await writer.drain()
            self._send_media(writer)
            if s.close_after_play:
                await writer.drain()
                writer.close()

    def _write(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> None:
        lines = [f"RTSP/1.0 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _send_media(self, writer: asyncio.StreamWriter) -> None:
        s = self.script
        items = [(stream, False, data) for stream, data in s.packets]
        items += [(stream, True, data) for stream, data in s.rtcp]
        for stream, is_rtcp, data in items:
            if stream in self._udp_targets:
                ip, rtp_port, rtcp_port = self._udp_targets[stream]
                sock = self._udp_socks[min(stream, len(self._udp_socks) - 1)]
                sock.sendto(data, (ip, rtcp_port if is_rtcp else rtp_port))
            else:
                channel = 2 * stream + (1 if is_rtcp else 0)
                answer = s.interleaved_answer.get(stream)
                if answer:
                    channel = int(answer.split("-")[1 if is_rtcp else 0])
                writer.write(struct.pack("!cBH", b"$", channel, len(data)) + data)
                if s.junk_between_packets:
                    writer.write(s.junk_between_packets)


class Collector:
    """Callbacks for ``RtspSession`` that tests can wait on (no sleeps)."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes, int]] = []
        self.sender_reports: list[tuple[int, int, int]] = []
        self._changed = asyncio.Event()

    def on_packet(self, stream_index: int, data: bytes, recv_mono_ns: int) -> None:
        self.packets.append((stream_index, data, recv_mono_ns))
        self._changed.set()

    def on_sender_report(self, stream_index: int, ntp_ns: int, rtp_timestamp: int) -> None:
        self.sender_reports.append((stream_index, ntp_ns, rtp_timestamp))
        self._changed.set()

    def count(self, stream_index: int) -> int:
        return sum(1 for p in self.packets if p[0] == stream_index)

    async def wait(
        self, video: int = 0, audio: int = 0, reports: int = 0, timeout_s: float = 5.0
    ) -> None:
        async with asyncio.timeout(timeout_s):
            while (
                self.count(0) < video or self.count(1) < audio or len(self.sender_reports) < reports
            ):
                self._changed.clear()
                await self._changed.wait()


def make_session(
    url: str,
    collector: Collector,
    *,
    username: str | None = None,
    password: str | None = None,
    clock: Clock | None = None,
    **options: object,
) -> RtspSession:
    """An ``RtspSession`` of ``url`` that hands packets and sender reports to ``collector``;
    ``options`` are the session's others (transport, want_audio, timeout_s)."""
    return RtspSession(
        url,
        username=username,
        password=password,
        on_packet=collector.on_packet,
        on_sender_report=collector.on_sender_report,
        clock=clock or SystemClock(),
        **options,  # type: ignore[arg-type]  # tests pass them as parametrized, untyped
    )
