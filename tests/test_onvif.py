"""ONVIF device read-out against the project's test device over real loopback HTTP.

The device (tests/support/onvif_device.py) checks WS-Security digests against its own clock,
reports a LAN address (192.168.1.64) in every URI it hands out, and shows its H.265 profile
through Media2 only, as many cameras do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from nvr.clock import SimulatedClock, SystemClock
from nvr.errors import CameraAuthError, CameraConnectError, CameraProtocolError
from nvr.ingest.onvif import pick_profile, read_clock, read_device
from nvr.ingest.onvif_soap import Login, SoapClient
from support.fakecam import FakeCam
from support.onvif_device import (
    AuthFailure,
    HttpAuthMode,
    Identity,
    OnvifTestDevice,
    default_profiles,
)
from support.recording import (
    camera_toml,
    ffprobe_errors,
    ffprobe_streams,
    make_config,
    record_until,
)

PASSWORD = "hunter2:Secret/%"  # distinctive, so a leak in a message would be found
IDENTITY = Identity(
    manufacturer="Acme Optics", model="AC-2000", firmware="V5.7.3 build 250101",
    serial="AC2000-0042-7731", hardware_id="88", mac="44-19-B6-0A-0B-0C",
)  # fmt: skip
RTSP = "rtsp://127.0.0.1:8554"  # for tests that never open the streams
CLOCK = SystemClock()

MakeDevice = Callable[..., Awaitable[OnvifTestDevice]]


@pytest.fixture
async def make_device() -> AsyncIterator[MakeDevice]:
    started: list[OnvifTestDevice] = []

    async def make(**kwargs: object) -> OnvifTestDevice:
        kwargs.setdefault("identity", IDENTITY)
        kwargs.setdefault("password", PASSWORD)
        kwargs.setdefault(
            "profiles", default_profiles(f"{RTSP}/file/h264", f"{RTSP}/file/h265", f"{RTSP}/sub")
        )
        dev = OnvifTestDevice(**kwargs)  # type: ignore[arg-type]  # test-chosen fields
        await dev.start()
        started.append(dev)
        return dev

    yield make
    for dev in started:
        await dev.stop()


def _plain(value: object) -> bool:
    """Only str/int/float/bool/None, tuples and our dataclasses: no zeep objects leak out."""
    if dataclasses.is_dataclass(value):
        return all(_plain(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


async def test_read_device_reports_identity_clock_and_profiles(
    make_device: MakeDevice,
) -> None:
    dev = await make_device(clock_offset_s=5.0)
    readout = await read_device(dev.url, "admin", PASSWORD, clock=CLOCK)

    assert readout.url == dev.url
    assert _plain(readout)
    ident = readout.identity
    assert (ident.manufacturer, ident.model, ident.firmware, ident.serial, ident.hardware_id) == (
        "Acme Optics", "AC-2000", "V5.7.3 build 250101", "AC2000-0042-7731", "88",
    )  # fmt: skip
    assert ident.mac == "44:19:b6:0a:0b:0c"  # the enabled eth0, not the disabled wlan0 before it

    assert readout.clock is not None
    assert abs(readout.clock.offset_ns - 5_000_000_000) < 200_000_000, readout.clock
    assert 0 < readout.clock.round_trip_ns < 1_000_000_000
    assert abs(readout.clock.device_utc_ns - (time.time_ns() + 5_000_000_000)) < 1_000_000_000

    assert readout.media2
    by_token = {p.token: p for p in readout.profiles}
    assert list(by_token) == ["Profile_1", "Profile_2", "Profile_3"]
    main, sub, hevc = by_token["Profile_1"], by_token["Profile_2"], by_token["Profile_3"]
    assert (main.codec, main.width, main.height, main.fps, main.bitrate_kbps, main.via_media2) == (
        "h264", 1920, 1080, 25.0, 4096, False,
    )  # fmt: skip
    assert (sub.codec, sub.width, sub.height, sub.fps, sub.bitrate_kbps) == (
        "h264", 640, 360, 15.0, 512,
    )  # fmt: skip
    assert (hevc.codec, hevc.width, hevc.height, hevc.via_media2) == ("h265", 1920, 1080, True)
    # The device said 192.168.1.64 everywhere; we reached it at 127.0.0.1.
    assert main.stream_uri == f"{RTSP}/file/h264"
    assert hevc.stream_uri == f"{RTSP}/file/h265"
    assert sub.stream_uri == f"{RTSP}/sub"
    for p in readout.profiles:
        assert p.snapshot_uri == f"http://127.0.0.1:{dev.port}/onvif/snapshot?token={p.token}"
    assert "192.168.1.64" not in repr(readout)

    # The clock is asked first (it needs no login); Media before Media2.
    ops = dev.operations
    first_login = ops.index("GetDeviceInformation")
    assert set(ops[:first_login]) == {"GetSystemDateAndTime"}
    assert ops[first_login:first_login + 3] == [
        "GetDeviceInformation", "GetNetworkInterfaces", "GetServices",
    ]  # fmt: skip


async def test_snapshot_uri_answers(make_device: MakeDevice) -> None:
    dev = await make_device()
    readout = await read_device(dev.url, "admin", PASSWORD, clock=CLOCK, refine_clock_steps=0)
    uri = readout.profiles[0].snapshot_uri
    assert uri is not None
    async with aiohttp.ClientSession() as session, session.get(uri) as resp:
        assert resp.status == 200
        assert (await resp.read()).startswith(b"\xff\xd8")


async def test_clock_three_hours_off_still_authenticates(
    make_device: MakeDevice,
) -> None:
    offset_s = 3 * 3600 + 0.37
    dev = await make_device(clock_offset_s=offset_s)

    # The device does check: a digest stamped with our own clock is refused.
    async with aiohttp.ClientSession() as session:
        soap = SoapClient(session, dev.url, 5.0, CLOCK)
        soap.login = Login("admin", PASSWORD, offset_ns=0)
        with pytest.raises(CameraAuthError):
            await soap.call(dev.url, "GetDeviceInformation", "<tds:GetDeviceInformation/>")

    readout = await read_device(dev.url, "admin", PASSWORD, clock=CLOCK)
    assert readout.clock is not None
    assert abs(readout.clock.offset_ns - offset_s * 1e9) < 200_000_000, readout.clock
    assert readout.identity.serial == IDENTITY.serial  # through onvif-zeep-async (dt_diff)
    assert any(p.via_media2 for p in readout.profiles)  # through our Media2 client


async def test_read_clock_needs_no_login(make_device: MakeDevice) -> None:
    dev = await make_device(clock_offset_s=-2.5)
    reading = await read_clock(dev.url, timeout_s=5.0, clock=CLOCK)
    assert abs(reading.offset_ns + 2_500_000_000) < 200_000_000, reading
    assert set(dev.operations) == {"GetSystemDateAndTime"}
    # One reading alone is good to half a second (plus the round trip).
    rough = await read_clock(dev.url, timeout_s=5.0, clock=CLOCK, refine_steps=0)
    assert abs(rough.offset_ns + 2_500_000_000) < 600_000_000, rough


async def test_a_simulated_clock_does_not_hang_the_reading(make_device: MakeDevice) -> None:
    """The timed re-readings wait in real time; offsets are against whatever clock is given."""
    dev = await make_device(clock_offset_s=1.0)
    sim = SimulatedClock()
    reading = await read_clock(dev.url, timeout_s=5.0, clock=sim)
    expected_ns = time.time_ns() + 1_000_000_000 - sim.wall_ns()
    assert abs(reading.offset_ns - expected_ns) < 2_000_000_000


@pytest.mark.parametrize("failure", ["fault400", "fault401", "http401"])
async def test_wrong_password_is_a_clear_auth_error(
    make_device: MakeDevice, failure: AuthFailure
) -> None:
    dev = await make_device(auth_failure=failure)
    with pytest.raises(CameraAuthError) as info:
        await read_device(dev.url, "admin", "wrong-" + PASSWORD, clock=CLOCK, refine_clock_steps=0)
    message = str(info.value)
    assert dev.url in message
    assert "rejected the credentials" in message
    assert PASSWORD not in message and "wrong-" not in message
    assert "Traceback" not in message and "\n" not in message


async def test_device_down_is_a_connect_error(make_device: MakeDevice) -> None:
    dev = await make_device()
    url = dev.url
    await dev.stop()
    with pytest.raises(CameraConnectError) as info:
        await read_device(url, "admin", PASSWORD, clock=CLOCK)
    assert url in str(info.value)


async def test_device_that_never_answers_times_out() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing back, never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/onvif/device_service"
    try:
        t0 = time.monotonic()
        with pytest.raises(CameraConnectError, match="did not answer"):
            await read_device(url, "admin", PASSWORD, timeout_s=0.3, clock=CLOCK)
        assert time.monotonic() - t0 < 3
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_huge_answer_is_refused() -> None:
    async def huge(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=b"<x>" + b"A" * (6 * 1024 * 1024) + b"</x>")

    app = aiohttp.web.Application()
    app.router.add_post("/onvif/device_service", huge)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with pytest.raises(CameraProtocolError, match="bytes"):
            await read_clock(f"http://127.0.0.1:{port}", timeout_s=5.0, clock=CLOCK)
    finally:
        await runner.cleanup()


async def test_device_moved_to_another_port(make_device: MakeDevice) -> None:
    dev = await make_device()
    before = await read_device(dev.url, "admin", PASSWORD, clock=CLOCK, refine_clock_steps=0)
    old_url = dev.url
    new_url = await dev.restart()
    assert new_url != old_url
    with pytest.raises(CameraConnectError):
        await read_device(old_url, "admin", PASSWORD, clock=CLOCK, refine_clock_steps=0)
    after = await read_device(
        f"http://127.0.0.1:{dev.port}", "admin", PASSWORD, clock=CLOCK, refine_clock_steps=0
    )  # a bare host:port is completed to the device service
    assert after.url == new_url
    assert after.identity == before.identity
    assert all(f":{dev.port}/" in (p.snapshot_uri or "") for p in after.profiles)


async def test_old_device_without_get_services_or_media2(
    make_device: MakeDevice,
) -> None:
    dev = await make_device(get_services=False, media2=False)
    readout = await read_device(dev.url, "admin", PASSWORD, clock=CLOCK, refine_clock_steps=0)
    assert "GetCapabilities" in dev.operations
    assert not readout.media2
    assert [p.token for p in readout.profiles] == ["Profile_1", "Profile_2"]
    assert all(p.stream_uri and p.stream_uri.startswith(RTSP) for p in readout.profiles)


# ---- the stream URIs record ------------------------------------------------------------------


@pytest.mark.rtsp
@pytest.mark.parametrize(("want", "codec"), [("main", "h264"), ("Profile_3", "hevc")])
async def test_resolved_stream_records(
    make_device: MakeDevice, cam_none: FakeCam, tmp_path: Path, want: str, codec: str
) -> None:
    profiles = default_profiles(
        cam_none.url("/file/h264"), cam_none.url("/file/h265"), cam_none.url("/live/h264")
    )
    dev = await make_device(profiles=profiles)
    readout = await read_device(dev.url, "admin", PASSWORD, clock=CLOCK, refine_clock_steps=0)
    profile = pick_profile(readout.profiles, want)
    assert profile.stream_uri is not None and profile.stream_uri.startswith("rtsp://127.0.0.1:")

    cfg = make_config(tmp_path, camera_toml("cam", profile.stream_uri))
    _, reader = await record_until(
        cfg, "2 closed segments", lambda r: len(r.segments("cam", "closed")) >= 2
    )
    segments = reader.segments("cam")
    assert len(segments) >= 2 and all(s.state == "closed" for s in segments), segments
    for seg in segments:
        path = tmp_path / seg.path
        assert ffprobe_errors(path) == "", seg.path
        assert [s["codec_name"] for s in ffprobe_streams(path)] == [codec]


# ---- HTTP Digest on SOAP ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "algorithm"), [("digest", "MD5"), ("digest+wsse", "MD5"), ("digest", "SHA-256")]
)
async def test_http_digest_device_is_read_with_one_challenge(
    make_device: MakeDevice, mode: HttpAuthMode, algorithm: str
) -> None:
    dev = await make_device(http_auth=mode, http_algorithm=algorithm, clock_offset_s=4.0)
    readout = await read_device(dev.url, "admin", PASSWORD, clock=CLOCK, refine_clock_steps=1)

    assert readout.identity.serial == IDENTITY.serial
    assert readout.identity.mac == "44:19:b6:0a:0b:0c"
    assert readout.clock is not None  # asked without a login: this device lets it through
    assert abs(readout.clock.offset_ns - 4_000_000_000) < 600_000_000, readout.clock
    assert [p.token for p in readout.profiles] == ["Profile_1", "Profile_2", "Profile_3"]
    assert readout.media2 and readout.profiles[2].via_media2  # our SOAP client, pre-authenticated
    # One challenge for the whole device: the first login call; every later call, whichever
    # service and client (onvif-zeep-async's Device and Media, our Media2), sent Digest up front.
    assert dev.challenged == ["device_service GetDeviceInformation"], dev.challenged
    assert dev.operations.count("GetDeviceInformation") == 2
    assert dev.operations.count("GetProfiles") == 2  # Media and Media2, each once


async def test_http_digest_on_the_clock_too(make_device: MakeDevice) -> None:
    dev = await make_device(http_auth="digest", http_auth_clock=True, clock_offset_s=-3.0)
    readout = await read_device(dev.url, "admin", PASSWORD, clock=CLOCK, refine_clock_steps=2)
    assert readout.clock is not None
    assert abs(readout.clock.offset_ns + 3_000_000_000) < 600_000_000, readout.clock
    assert readout.identity.serial == IDENTITY.serial
    assert dev.challenged == ["device_service GetSystemDateAndTime"], dev.challenged

    # Without credentials the clock cannot be read from such a device: an auth error.
    with pytest.raises(CameraAuthError, match="rejected the credentials"):
        await read_clock(dev.url, timeout_s=5.0, clock=CLOCK, refine_steps=0)


async def test_http_digest_clock_with_wrong_password_is_none_then_auth_error(
    make_device: MakeDevice,
) -> None:
    dev = await make_device(http_auth="digest", http_auth_clock=True)
    with pytest.raises(CameraAuthError) as info:
        await read_device(dev.url, "admin", "wrong-" + PASSWORD, clock=CLOCK, refine_clock_steps=0)
    assert dev.url in str(info.value)
    assert set(dev.operations) == {"GetSystemDateAndTime", "GetDeviceInformation"}


@pytest.mark.parametrize("mode", ["digest", "digest+wsse"])
async def test_http_digest_wrong_password_is_a_clear_auth_error(
    make_device: MakeDevice, mode: HttpAuthMode
) -> None:
    dev = await make_device(http_auth=mode)
    with pytest.raises(CameraAuthError) as info:
        await read_device(dev.url, "admin", "wrong-" + PASSWORD, clock=CLOCK, refine_clock_steps=0)
    message = str(info.value)
    assert dev.url in message and "rejected the credentials" in message
    assert PASSWORD not in message and "wrong-" not in message
    assert "\n" not in message
    # Asked, challenged, answered with Digest once, refused: no retrying beyond that.
    assert dev.challenged == ["device_service GetDeviceInformation"] * 2, dev.challenged


async def test_digest_and_wsse_device_wants_both(make_device: MakeDevice) -> None:
    """HTTP Digest alone does not get past a device that also checks WS-Security."""
    dev = await make_device(http_auth="digest+wsse")
    async with aiohttp.ClientSession() as session:
        soap = SoapClient(session, dev.url, 5.0, CLOCK)
        soap.http_auth.credentials = ("admin", PASSWORD)
        with pytest.raises(CameraAuthError):  # no WS-Security login in the body
            await soap.call(dev.url, "GetDeviceInformation", "<tds:GetDeviceInformation/>")
        assert soap.http_auth.scheme == "Digest"
        soap.login = Login("admin", PASSWORD, offset_ns=0)
        resp = await soap.call(dev.url, "GetDeviceInformation", "<tds:GetDeviceInformation/>")
        assert resp.tag.endswith("GetDeviceInformationResponse")
    assert dev.challenged == ["device_service GetDeviceInformation"]
