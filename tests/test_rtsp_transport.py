"""RTP transports: the UDP port pair (where plain aiortsp cannot bind) and RTCP sender reports.

Channel following and the absent RTP timeout loop are shown on a live session in
``test_rtsp_client``.
"""

from __future__ import annotations

import pytest
from aiortsp.transport.udp import UDPTransport

from nvr.ingest.rtsp_transport import bind_udp_pair, rtcp_sender_reports
from support.rtsp_server import rtcp_sender_report


def test_udp_pair_binds_ipv6_where_plain_cannot() -> None:
    with pytest.raises(OSError):
        UDPTransport.get_socket_pair("::1", retry=1)
    rtp, rtcp = bind_udp_pair("::1")
    try:
        assert rtp.getsockname()[1] % 2 == 0
        assert rtcp.getsockname()[1] == rtp.getsockname()[1] + 1
    finally:
        rtp.close()
        rtcp.close()


def test_rtcp_sender_report_to_integer_ns() -> None:
    ntp_ns = 1_767_225_600_000_000_001
    data = rtcp_sender_report(7, ntp_ns, 123) + b"\x81\xcb\x00\x01\x00\x00\x00\x07"
    ((got_ns, rtp_ts),) = rtcp_sender_reports(data)
    assert rtp_ts == 123 and abs(got_ns - ntp_ns) <= 1
    assert rtcp_sender_reports(b"\x80\xc8\x00\x50") == []
