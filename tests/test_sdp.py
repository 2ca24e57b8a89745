# ruff: noqa: E501  (SDP lines are as long as cameras write them)
"""SDP parsing against the shapes real cameras and servers send."""

from __future__ import annotations

import pytest
from aiortsp.rtsp.sdp import SDP

from nvr.errors import CameraProtocolError
from nvr.ingest.sdp import describe_base_url, parse_fmtp, parse_sdp, parse_session, resolve_control

GSTREAMER = """v=0
o=- 1188340656180883 1 IN IP4 127.0.0.1
s=Session streamed with GStreamer
i=rtsp-server
t=0 0
a=tool:GStreamer
a=type:broadcast
a=range:npt=now-
a=control:rtsp://127.0.0.1:8554/live/h264-aac
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
b=AS:2097
a=rtpmap:96 H264/90000
a=framerate:25
a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z00AHpWoLQ9puAgICBA=,aO48gA==;profile-level-id=4d001e;level-asymmetry-allowed=1
a=control:rtsp://127.0.0.1:8554/live/h264-aac/stream=0
a=ts-refclk:local
a=mediaclk:sender
m=audio 0 RTP/AVP 97
c=IN IP4 0.0.0.0
b=AS:64
a=rtpmap:97 MPEG4-GENERIC/48000/1
a=fmtp:97 streamtype=5;profile-level-id=2;mode=AAC-hbr;config=1188;sizelength=13;indexlength=3;indexdeltalength=3
a=control:rtsp://127.0.0.1:8554/live/h264-aac/stream=1
a=ts-refclk:local
a=mediaclk:sender
"""

HIKVISION = """v=0
o=- 1109162014219182 1109162014219192 IN IP4 192.0.2.64
s=Media Presentation
e=NONE
b=AS:5050
t=0 0
a=control:rtsp://192.0.2.64:554/Streaming/Channels/101/?transportmode=unicast
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
b=AS:5000
a=recvonly
a=x-dimensions:1920,1080
a=control:rtsp://192.0.2.64:554/Streaming/Channels/101/trackID=1?transportmode=unicast
a=rtpmap:96 H265/90000
a=fmtp:96 profile-id=1; sprop-sps=QgEBAWAAAAMAsAAAAwAAAwB7oAPAgBDlja5JMvTcBAQEAg==; sprop-pps=RAHA8vA8kAA=; sprop-vps=QAEMAf//AWAAAAMAsAAAAwAAAwB7rAk=
a=Media_header:MEDIAINFO=494D4B48010100000400050010710110401F000000FA000000000000000000000000000000000000;
a=appversion:1.0
m=audio 0 RTP/AVP 8
c=IN IP4 0.0.0.0
b=AS:50
a=recvonly
a=control:rtsp://192.0.2.64:554/Streaming/Channels/101/trackID=2?transportmode=unicast
a=rtpmap:8 PCMA/8000
"""

DAHUA = """v=0
o=- 2251938202 2251938202 IN IP4 0.0.0.0
s=Media Server
c=IN IP4 0.0.0.0
t=0 0
a=control:*
a=packetization-supported:DH
a=rtppayload-supported:DH
a=range:npt=now-
m=video 0 RTP/AVP 96
a=control:trackID=0
a=framerate:25.000000
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1;profile-level-id=4D002A;sprop-parameter-sets=Z00AKp2oHgCJ+WbgICAgQA==,aO48gA==
a=recvonly
m=audio 0 RTP/AVP 97
a=control:trackID=1
a=rtpmap:97 MPEG4-GENERIC/16000/1
a=fmtp:97 streamtype=5;profile-level-id=15;mode=AAC-hbr;config=1408;sizeLength=13;indexLength=3;indexDeltaLength=3
a=recvonly
"""
DAHUA_BASE = "rtsp://192.0.2.108:554/cam/realmonitor?channel=1&subtype=0/"

AXIS = """v=0
o=- 12345 1 IN IP4 192.0.2.90
s=Session streamed with GStreamer
i=rtsp-server
t=0 0
a=tool:GStreamer
a=type:broadcast
a=range:npt=now-
a=control:rtsp://192.0.2.90/axis-media/media.amp?videocodec=h264
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
b=AS:50000
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1;profile-level-id=4d0029;sprop-parameter-sets=Z00AKeKQDwBE/LgLcBAQGkHiRFQ=,aO48gA==
a=control:rtsp://192.0.2.90/axis-media/media.amp/stream=0?videocodec=h264
a=framerate:30.000000
a=transform:1,0,0;0,1,0;0,0,1
"""

REOLINK = """v=0
o=- 1680000000000000 1 IN IP4 192.0.2.10
s=Session streamed by "preview"
i=h264Preview_01_main
t=0 0
a=tool:LIVE555 Streaming Media v2013.04.08
a=type:broadcast
a=control:*
a=range:npt=0-
a=x-qt-text-nam:Session streamed by "preview"
a=x-qt-text-inf:h264Preview_01_main
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
b=AS:8192
a=rtpmap:96 H264/90000
a=range:npt=0-
a=fmtp:96 packetization-mode=1;profile-level-id=640033;sprop-parameter-sets=Z2QAM6wVFKAoAPGQ,aO48sA==
a=control:track1
m=audio 0 RTP/AVP 97
c=IN IP4 0.0.0.0
b=AS:8192
a=rtpmap:97 MPEG4-GENERIC/16000
a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1408
a=control:track2
"""
REOLINK_BASE = "rtsp://192.0.2.10:554/h264Preview_01_main/"

TAPO = """v=0
o=- 14665860 31787219 1 IN IP4 192.0.2.20
s=Session streamed by "TP-LINK RTSP Server"
t=0 0
a=smart_encoder:virtualIFrame=1
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
b=AS:4096
a=range:npt=0-
a=control:track1
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1; profile-level-id=4D4028; sprop-parameter-sets=Z01AKJWgHgCJ+WbgICAgQA==,aO48gA==
m=audio 0 RTP/AVP 8
a=rtpmap:8 PCMA/8000
a=control:track2
m=application/TP-LINK 0 RTP/AVP smart/1/90000
a=rtpmap:95 TP-LINK/90000
a=control:track3
"""
TAPO_BASE = "rtsp://192.0.2.20:554/stream1/"


def test_gstreamer_h264_aac() -> None:
    media = parse_sdp(GSTREAMER, base_url="rtsp://127.0.0.1:8554/live/h264-aac/")
    video, audio = media
    assert (video.kind, video.payload_type, video.encoding, video.clock_rate) == (
        "video",
        96,
        "H264",
        90000,
    )
    assert video.fmtp["sprop-parameter-sets"] == "Z00AHpWoLQ9puAgICBA=,aO48gA=="
    assert video.fmtp["profile-level-id"] == "4d001e"
    assert video.control == "rtsp://127.0.0.1:8554/live/h264-aac/stream=0"
    assert (audio.encoding, audio.clock_rate, audio.channels) == ("MPEG4-GENERIC", 48000, 1)
    assert audio.fmtp["config"] == "1188"
    assert audio.control == "rtsp://127.0.0.1:8554/live/h264-aac/stream=1"


def test_hikvision_h265_pcma_absolute_controls_and_vendor_lines() -> None:
    session = parse_session(HIKVISION, base_url="rtsp://192.0.2.64:554/Streaming/Channels/101")
    assert session.control == "rtsp://192.0.2.64:554/Streaming/Channels/101/?transportmode=unicast"
    video, audio = session.media
    assert video.encoding == "H265"
    assert video.fmtp["sprop-vps"] == "QAEMAf//AWAAAAMAsAAAAwAAAwB7rAk="
    assert video.fmtp["sprop-sps"].endswith("BAQEAg==")
    assert (
        video.control
        == "rtsp://192.0.2.64:554/Streaming/Channels/101/trackID=1?transportmode=unicast"
    )
    assert (audio.payload_type, audio.encoding, audio.clock_rate, audio.channels) == (
        8,
        "PCMA",
        8000,
        1,
    )


def test_dahua_relative_controls_after_query_in_content_base() -> None:
    session = parse_session(DAHUA, base_url=DAHUA_BASE)
    assert session.control == DAHUA_BASE
    video, audio = session.media
    assert video.control == DAHUA_BASE + "trackID=0"
    assert audio.control == DAHUA_BASE + "trackID=1"
    # keys lower-cased, values as written
    assert audio.fmtp["sizelength"] == "13"
    assert audio.fmtp["config"] == "1408"


def test_mpeg4_generic_with_channels_reads_clock_rate() -> None:
    (_, audio) = parse_sdp(DAHUA, base_url=DAHUA_BASE)
    assert (audio.clock_rate, audio.channels) == (16000, 1)


def test_aiortsp_misreads_mpeg4_generic_with_channels() -> None:
    """The gap: aiortsp's rtpmap regex takes `16000/1` apart wrongly (clock rate 1)."""
    sdp = SDP(DAHUA)
    assert sdp.media_clock_rate("audio") == 1  # plain aiortsp: wrong
    (_, audio) = parse_sdp(DAHUA, base_url=DAHUA_BASE)
    assert audio.clock_rate == 16000  # ours


def test_axis_session_and_media_controls_absolute() -> None:
    session = parse_session(AXIS, base_url="rtsp://192.0.2.90/axis-media/media.amp")
    assert session.control == "rtsp://192.0.2.90/axis-media/media.amp?videocodec=h264"
    (video,) = session.media
    assert video.control == "rtsp://192.0.2.90/axis-media/media.amp/stream=0?videocodec=h264"


def test_reolink_live555_aac_without_channel_count() -> None:
    video, audio = parse_sdp(REOLINK, base_url=REOLINK_BASE)
    assert video.control == REOLINK_BASE + "track1"
    assert (audio.encoding, audio.clock_rate, audio.channels) == ("MPEG4-GENERIC", 16000, 1)
    assert audio.control == REOLINK_BASE + "track2"


def test_tapo_odd_application_media_skipped_and_fmtp_with_spaces() -> None:
    media = parse_sdp(TAPO, base_url=TAPO_BASE)
    assert [m.kind for m in media] == ["video", "audio"]
    video, audio = media
    assert video.fmtp["packetization-mode"] == "1"
    assert video.fmtp["sprop-parameter-sets"] == "Z01AKJWgHgCJ+WbgICAgQA==,aO48gA=="
    assert (audio.payload_type, audio.encoding) == (8, "PCMA")
    assert video.control == TAPO_BASE + "track1"


def test_static_payload_types_without_rtpmap() -> None:
    sdp = (
        "v=0\r\ns=x\r\nt=0 0\r\n"
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 h264/90000\r\na=control:v\r\n"
        "m=audio 0 RTP/AVP 0\r\na=control:a\r\n"
        "m=audio 0 RTP/AVP 8\r\na=control:b\r\n"
    )
    video, pcmu, pcma = parse_sdp(sdp, base_url="rtsp://h/s")
    assert video.encoding == "H264"  # upper-cased
    assert (pcmu.encoding, pcmu.clock_rate, pcmu.channels) == ("PCMU", 8000, 1)
    assert (pcma.encoding, pcma.clock_rate) == ("PCMA", 8000)
    assert pcmu.control == "rtsp://h/s/a"


def test_junk_lines_and_bom_are_tolerated() -> None:
    sdp = (
        "\ufeffv=0\n"
        "this is not sdp\n"
        "\n"
        "x\n"
        "a=weird\n"
        "m=video 0 RTP/AVP 96\n"
        "a=rtpmap:96 H264/90000\n"
        "a=rtpmap:abc nonsense\n"
        "a=fmtp:96 ;;packetization-mode=1;; flag ;\n"
        "garbage=line=with=equals\n"
        "m=broken\n"
        "a=control:*\n"
    )
    (video,) = parse_sdp(sdp, base_url="rtsp://h:554/live")
    assert video.fmtp == {"packetization-mode": "1", "flag": ""}
    assert video.control == "rtsp://h:554/live"  # "*" means the base itself


def test_media_without_control_uses_session_url() -> None:
    sdp = "v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
    (video,) = parse_sdp(sdp, base_url="rtsp://h/live")
    assert video.control == "rtsp://h/live"


def test_first_of_several_formats_is_taken() -> None:
    sdp = "v=0\nm=video 0 RTP/AVP 98 96\na=rtpmap:96 H264/90000\na=rtpmap:98 H265/90000\n"
    (video,) = parse_sdp(sdp, base_url="rtsp://h/live")
    assert (video.payload_type, video.encoding) == (98, "H265")


def test_fmtp_values_keep_equals_signs() -> None:
    assert parse_fmtp("Config=AA==; sprop-parameter-sets=Z0I=,aM4=") == {
        "config": "AA==",
        "sprop-parameter-sets": "Z0I=,aM4=",
    }


@pytest.mark.parametrize(
    ("base", "control", "expected"),
    [
        ("rtsp://h/live", "trackID=1", "rtsp://h/live/trackID=1"),
        ("rtsp://h/live/", "trackID=1", "rtsp://h/live/trackID=1"),
        ("rtsp://h/live/", "*", "rtsp://h/live/"),
        ("rtsp://h/live", None, "rtsp://h/live"),
        ("rtsp://h:554/live", "/other/track", "rtsp://h:554/other/track"),
        ("rtsp://h/live", "rtsp://h2/abs/track", "rtsp://h2/abs/track"),
        ("rtsp://h/live", "rtsp://u:p@h2/abs", "rtsp://h2/abs"),
        ("rtsp://h/a?b=1", "track1", "rtsp://h/a?b=1/track1"),
        ("rtsp://[::1]:8554/live/", "stream=0", "rtsp://[::1]:8554/live/stream=0"),
    ],
)
def test_resolve_control(base: str, control: str | None, expected: str) -> None:
    assert resolve_control(base, control) == expected


def test_describe_base_url_order() -> None:
    assert describe_base_url("rtsp://h/r", "rtsp://h/base/", "rtsp://h/loc") == "rtsp://h/base/"
    assert describe_base_url("rtsp://h/r", None, "rtsp://h/loc") == "rtsp://h/loc"
    assert describe_base_url("rtsp://h/r", "  ", None) == "rtsp://h/r"
    assert describe_base_url("rtsp://h/r", "sub/", None) == "rtsp://h/r/sub/"


def test_no_usable_video_is_a_clear_error() -> None:
    sdp = "v=0\nm=video 0 RTP/AVP 26\nm=audio 0 RTP/AVP 8\n"
    with pytest.raises(
        CameraProtocolError, match=r"no usable video .*video JPEG \(pt 26\), audio PCMA \(pt 8\)"
    ):
        parse_sdp(sdp, base_url="rtsp://h/x")


def test_empty_or_garbage_body() -> None:
    with pytest.raises(CameraProtocolError, match="no media sections"):
        parse_sdp("<html>404</html>", base_url="rtsp://h/x")


def test_dynamic_payload_without_rtpmap_is_skipped() -> None:
    sdp = "v=0\nm=video 0 RTP/AVP 96\nm=video 0 RTP/AVP 97\na=rtpmap:97 H264/90000\n"
    (video,) = parse_sdp(sdp, base_url="rtsp://h/x")
    assert video.payload_type == 97
