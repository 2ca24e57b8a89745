"""ONVIF profiles: choosing one to record, and private hosts rewritten to the one we reached."""

from __future__ import annotations

import pytest

from nvr.errors import CameraProtocolError
from nvr.ingest.onvif_profiles import (
    MediaProfile,
    pick_profile,
    rewrite_private_host,
    rewrite_xaddr,
)


def _profile(
    token: str,
    w: int | None,
    h: int | None,
    codec: str = "h264",
    *,
    uri: bool = True,
    media2: bool = False,
) -> MediaProfile:
    return MediaProfile(
        token=token, name=token, codec=codec, width=w, height=h, fps=25.0, bitrate_kbps=1000,
        stream_uri=f"rtsp://10.0.0.1/{token}" if uri else None, snapshot_uri=None,
        via_media2=media2,
    )  # fmt: skip


PROFILES = [
    _profile("Profile_1", 1920, 1080),
    _profile("Profile_2", 640, 360),
    _profile("Profile_3", 1920, 1080, "h265", media2=True),
    _profile("Profile_4", 3840, 2160, uri=False),  # no stream URI: not chosen for main
    _profile("Profile_5", None, None),
]


@pytest.mark.parametrize(
    ("want", "token"),
    [("main", "Profile_1"), ("sub", "Profile_2"), ("Profile_3", "Profile_3"),
     ("Profile_4", "Profile_4")],
)  # fmt: skip
def test_pick_profile(want: str, token: str) -> None:
    assert pick_profile(PROFILES, want).token == token


def test_pick_profile_names_the_choices() -> None:
    with pytest.raises(CameraProtocolError) as info:
        pick_profile(PROFILES, "Profile_9")
    message = str(info.value)
    assert "'Profile_9'" in message and "'main', 'sub'" in message
    assert "Profile_1 (h264 1920x1080)" in message and "Profile_5 (h264 ?x?)" in message
    with pytest.raises(CameraProtocolError, match="no profiles"):
        pick_profile([], "main")
    with pytest.raises(CameraProtocolError):
        pick_profile([_profile("p", 1, 1, uri=False)], "sub")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rtsp://192.168.1.64:554/Streaming/Channels/101", "rtsp://203.0.113.9:554/Streaming/Channels/101"),
        ("rtsp://10.1.2.3/live?channel=1&subtype=0", "rtsp://203.0.113.9/live?channel=1&subtype=0"),
        ("rtsp://172.16.0.1:8554/a", "rtsp://203.0.113.9:8554/a"),
        ("rtsp://172.31.255.254/a", "rtsp://203.0.113.9/a"),
        ("rtsp://127.0.0.1:554/a", "rtsp://203.0.113.9:554/a"),
        ("rtsp://169.254.10.20/a", "rtsp://203.0.113.9/a"),
        ("rtsp://0.0.0.0:554/a", "rtsp://203.0.113.9:554/a"),
        ("rtsp://[fe80::1]:554/a", "rtsp://203.0.113.9:554/a"),
        ("rtsp://[fd12:3456::5]/a", "rtsp://203.0.113.9/a"),
        ("rtsp://[::1]:8554/a", "rtsp://203.0.113.9:8554/a"),
        ("rtsp://user:p%40ss@192.168.0.9:554/a", "rtsp://user:p%40ss@203.0.113.9:554/a"),
        ("http://192.168.1.64/onvif/snapshot", "http://203.0.113.9/onvif/snapshot"),
        # left alone: public addresses, the space next to RFC 1918, names, garbage
        ("rtsp://8.8.8.8:554/a", "rtsp://8.8.8.8:554/a"),
        ("rtsp://172.32.0.1/a", "rtsp://172.32.0.1/a"),
        ("rtsp://192.169.1.1/a", "rtsp://192.169.1.1/a"),
        ("rtsp://camera.example.org:554/a", "rtsp://camera.example.org:554/a"),
        ("rtsp://[2001:db8::1]:554/a", "rtsp://[2001:db8::1]:554/a"),
        ("not a uri", "not a uri"),
    ],
)  # fmt: skip
def test_rewrite_private_host(uri: str, expected: str) -> None:
    assert rewrite_private_host(uri, "203.0.113.9") == expected


def test_service_xaddrs_follow_the_port_we_reached() -> None:
    """SOAP services share the device's one HTTP port: behind a port forward, so must we."""
    reached = "http://203.0.113.9:8080/onvif/device_service"
    assert rewrite_xaddr("http://192.168.1.64/onvif/Media", reached) == (
        "http://203.0.113.9:8080/onvif/Media"
    )
    assert rewrite_xaddr("http://198.51.100.7/onvif/Media", reached) == (
        "http://198.51.100.7/onvif/Media"
    )
    lan = "http://192.168.1.64:80/onvif/device_service"  # on the LAN: left as the device says
    assert rewrite_xaddr("http://192.168.1.64:8000/onvif/Media", lan) == (
        "http://192.168.1.64:8000/onvif/Media"
    )


def test_rewrite_private_host_to_ipv6_and_names() -> None:
    assert rewrite_private_host("rtsp://192.168.1.64:554/a", "2001:db8::7") == (
        "rtsp://[2001:db8::7]:554/a"
    )
    assert (
        rewrite_private_host("rtsp://192.168.1.64/a", "[2001:db8::7]") == "rtsp://[2001:db8::7]/a"
    )
    assert rewrite_private_host("rtsp://192.168.1.64/a", "cam.example.org") == (
        "rtsp://cam.example.org/a"
    )
