"""RTP/RTCP transports for an RTSP session: interleaved TCP and a UDP port pair.

aiortsp's TCP transport insists on the interleaved channels it asked for and its UDP transport
binds IPv4 only: ``TcpRtpTransport`` follows the camera's channels, ``UdpRtpTransport`` binds
on the address the camera sees us at (``bind_udp_pair``). Both hand raw RTP and integer sender
reports to a ``MediaSink`` and never raise on an odd packet (a malformed RTCP packet used to
drop the connection).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, Literal, Protocol

from aiortsp.rtcp.parser import RTCP
from aiortsp.transport.tcp import TCPTransport
from aiortsp.transport.udp import RTCPSink, RTPSink, UDPTransport

from nvr.errors import CameraConnectError
from nvr.ingest.rtsp_client import RtspConnection

logger = logging.getLogger("nvr.ingest.rtsp")
# A child of "aiortsp", whose level rtsp_client sets (see AIORTSP_LOGGER_NAMES there).
_aiortsp_logger = logging.getLogger("aiortsp.nvr")

NTP_UNIX_OFFSET_S = 2_208_988_800


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

    stats: Any
    _rtcp_loop: Any

    def __init__(self, connection: RtspConnection, *, stream_index: int, sink: MediaSink) -> None:
        # The aiortsp transport comes next in the subclasses' MRO; mypy sees only object.
        super().__init__(connection, logger=_aiortsp_logger, timeout=0)  # type: ignore[call-arg]
        self.stream_index = stream_index
        self.sink = sink
        self._source_ssrc: int | None = None
        self._conn = connection

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
        super().__init__(connection, stream_index=stream_index, sink=sink)
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
        super().__init__(connection, stream_index=stream_index, sink=sink)
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
