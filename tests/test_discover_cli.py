"""`nvr discover` end to end on loopback: unicast probe, read-out, table, JSON, config entries."""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nvr.config import parse_config
from support.onvif_device import Identity, OnvifTestDevice, default_profiles
from support.wsd_responder import WsdResponder

HOST = "127.0.0.11"
PASSWORD = "p@ss:w0rd"


@pytest.fixture
async def device() -> AsyncIterator[tuple[OnvifTestDevice, int]]:
    dev = OnvifTestDevice(
        identity=Identity(serial="SN-DISCOVER-1", model="AC-2000"),
        username="admin",
        password=PASSWORD,
        profiles=default_profiles("rtsp://127.0.0.1:554/main", "rtsp://127.0.0.1:554/hevc",
                                  "rtsp://127.0.0.1:554/sub"),
        clock_offset_s=-4.0,
    )
    url = await dev.start()
    responder = WsdResponder(HOST, 0, endpoint_ref="urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                             xaddrs=[url],
                             scopes=["onvif://www.onvif.org/name/Market%20gate"])  # fmt: skip
    await responder.start()
    try:
        yield dev, responder.bound_port
    finally:
        await responder.stop()
        await dev.stop()


async def nvr(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nvr", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


JSON_KEYS = {"url", "sources", "scopes_name", "clock_offset_ns", "readout", "error"}
READOUT_KEYS = {"url", "identity", "clock", "media2", "profiles"}
IDENTITY_KEYS = {"manufacturer", "model", "firmware", "serial", "hardware_id", "mac"}
CLOCK_KEYS = {"device_utc_ns", "offset_ns", "round_trip_ns"}
PROFILE_KEYS = {"token", "name", "codec", "width", "height", "fps", "bitrate_kbps", "stream_uri",
                "snapshot_uri", "via_media2"}  # fmt: skip


async def test_discover_reads_out_what_answers(
    device: tuple[OnvifTestDevice, int], tmp_path: Path
) -> None:
    dev, port = device
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    common = ["discover", "--no-multicast", "--target", f"{HOST}:{port}", "--timeout", "2",
              "--user", "admin", "--password-file", str(secret)]  # fmt: skip

    code, out, _ = await nvr(*common)
    assert code == 0
    assert dev.url in out and "Acme Optics AC-2000" in out and "serial SN-DISCOVER-1" in out
    assert "clock -4.0 s" in out or "clock -3.9 s" in out or "clock -4.1 s" in out
    assert "profile Profile_3" in out and "h265" in out

    code, out, _ = await nvr(*common, "--json")
    assert code == 0
    [found] = json.loads(out)
    assert found["readout"]["identity"]["serial"] == "SN-DISCOVER-1"
    assert found["scopes_name"] == "Market gate"
    assert PASSWORD not in out
    # The keys scripts rely on, at every level (docs/onvif.md): a rename must fail here.
    assert set(found) == JSON_KEYS
    readout = found["readout"]
    assert set(readout) == READOUT_KEYS
    assert set(readout["identity"]) == IDENTITY_KEYS
    assert set(readout["clock"]) == CLOCK_KEYS
    assert readout["profiles"] and all(set(p) == PROFILE_KEYS for p in readout["profiles"])
    assert isinstance(found["clock_offset_ns"], int) and found["error"] is None
    assert found["sources"] == [HOST] and readout["url"] == dev.url

    code, out, _ = await nvr(*common, "--write-config")
    assert code == 0 and PASSWORD not in out
    cfg = parse_config('[storage]\npath = "/tmp/x"\n' + out)
    [cam] = cfg.cameras
    assert cam.onvif == dev.url and cam.password_file is not None
    assert tomllib.loads(out)["cameras"][0]["name"] == "Market gate"


async def test_wrong_password_names_the_device(
    device: tuple[OnvifTestDevice, int], tmp_path: Path
) -> None:
    dev, _ = device
    secret = tmp_path / "pw"
    secret.write_text("wrong")
    code, out, err = await nvr("discover", "--host", f"http://127.0.0.1:{dev.port}",
                               "--user", "admin", "--password-file", str(secret))  # fmt: skip
    assert code == 0
    assert f"! ONVIF device {dev.url} rejected the credentials" in out
    assert "Traceback" not in out + err and "wrong" not in out


async def test_bad_target_is_a_clear_error() -> None:
    code, _, err = await nvr("discover", "--no-multicast", "--target", "10.0.0.0/8")
    assert code == 2 and "10.0.0.0/8" in err and "Traceback" not in err
