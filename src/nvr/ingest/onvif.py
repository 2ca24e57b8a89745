"""ONVIF device read-out: who a camera is, how far its clock is off, and its media profiles.

The asyncio layer over onvif-zeep-async. The Device and Media (ver10) services go through the
library and its bundled WSDLs (no network needed to load them). Two things it cannot do are done
here with a small SOAP 1.2 client of our own on aiohttp:

* ``GetSystemDateAndTime`` without a login (the library always adds WS-Security, and cannot be
  built without a user), timed precisely (``onvif_clock``);
* Media2 (ver20), which 4.3.0 ships no WSDL for, and which is the only way to see H.265 profiles.

The library itself is wrapped in ``onvif_zeep``; profiles, the choice among them and the
rewriting of private hosts are in ``onvif_profiles``. The names callers use are re-exported here.

WS-Security UsernameToken digests are stamped with the *device's* clock: its measured offset is
handed to the library as ``dt_diff`` (added to its ``Created`` time) and added to ours, so a
camera whose clock is hours off still accepts the digest.

Every foreign exception (aiohttp, zeep, onvif, XML) is turned into ``CameraAuthError``,
``CameraConnectError`` or ``CameraProtocolError`` (here and in the modules above), naming the
device URL and never the password. Nothing typed ``Any`` leaves this module.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

import aiohttp

from nvr.clock import Clock
from nvr.errors import CameraAuthError, CameraConnectError, CameraProtocolError
from nvr.ingest.onvif_clock import ClockReading, measure_clock
from nvr.ingest.onvif_profiles import (
    MediaProfile,
    pick_profile,
    rewrite_private_host,
    rewrite_xaddr,
)
from nvr.ingest.onvif_soap import NS, Login, SoapClient, positive_float, positive_int, text
from nvr.ingest.onvif_zeep import ZeepServices, as_list, attr, attr_text
from nvr.redact import redact_url

log = logging.getLogger(__name__)

__all__ = [
    "ClockReading",
    "DeviceIdentity",
    "DeviceReadout",
    "MediaProfile",
    "pick_profile",
    "read_clock",
    "read_device",
    "rewrite_private_host",
]


# ---------------------------------------------------------------------------------------------
# What the read-out returns


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    manufacturer: str
    model: str
    firmware: str
    serial: str
    hardware_id: str
    mac: str | None  # lower-case, colon-separated; the first enabled interface's


@dataclass(frozen=True, slots=True)
class DeviceReadout:
    url: str  # the device service URL we reached (no credentials in it)
    identity: DeviceIdentity
    clock: ClockReading | None  # None when the device would not tell its time without login
    media2: bool  # the device offers a working Media2 service
    profiles: tuple[MediaProfile, ...]


# ---------------------------------------------------------------------------------------------
# Pure helpers


def _device_service_url(url: str) -> str:
    """``http://host[:port]`` -> ``http://host[:port]/onvif/device_service``; credentials out."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise CameraConnectError(f"not an ONVIF device URL: {redact_url(url)}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise CameraConnectError(f"not an ONVIF device URL (http or https): {redact_url(url)}")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = parts.path if parts.path not in ("", "/") else "/onvif/device_service"
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


def _codec(encoding: str | None) -> str:
    name = (encoding or "").strip()
    key = name.upper().replace(".", "").replace("-", "")
    return {"H264": "h264", "AVC": "h264", "H265": "h265", "HEVC": "h265"}.get(key, name.lower())


def _mac(raw: str | None) -> str | None:
    if not raw:
        return None
    digits = re.sub(r"[^0-9A-Fa-f]", "", raw)
    if len(digits) != 12:
        return raw.strip().lower() or None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2)).lower()


# ---------------------------------------------------------------------------------------------
# The clock


async def read_clock(
    url: str, *, timeout_s: float, clock: Clock, refine_steps: int = 3
) -> ClockReading:
    """The device's clock offset from ``GetSystemDateAndTime``, asked without a login.

    The answer has whole seconds only: ``refine_steps`` further readings, each timed (a wait of
    up to a second) to catch the device's seconds ticking over, narrow it to about ±60 ms plus
    half a round trip; 0 gives one reading, good to ±0.5 s. Offsets are against ``clock``.
    """
    device_url = _device_service_url(url)
    async with aiohttp.ClientSession() as session:
        soap = SoapClient(session, device_url, timeout_s, clock)
        return await measure_clock(soap, clock, refine_steps)


# ---------------------------------------------------------------------------------------------
# The read-out


async def read_device(
    url: str,
    username: str,
    password: str,
    *,
    timeout_s: float = 10.0,
    clock: Clock,
    refine_clock_steps: int = 3,
) -> DeviceReadout:
    """Read identity, clock offset and media profiles from the ONVIF device at ``url``.

    ``url`` is the device service (``http://host[:port][/onvif/device_service]``). Each request
    is bounded by ``timeout_s``. Raises ``CameraAuthError`` when the credentials are refused,
    ``CameraConnectError`` when the device cannot be reached, ``CameraProtocolError`` when it
    answers something unusable.
    """
    device_url = _device_service_url(url)
    where = f"ONVIF device {device_url}"
    reached_host = urlsplit(device_url).hostname or ""
    async with aiohttp.ClientSession() as session:
        soap = SoapClient(session, device_url, timeout_s, clock)
        # HTTP Digest/Basic is answered (and then sent up front) on every call, even the clock's.
        soap.http_auth.credentials = (username, password)
        reading: ClockReading | None
        try:
            reading = await measure_clock(soap, clock, refine_clock_steps)
        except (CameraAuthError, CameraProtocolError) as exc:
            log.warning("%s: no clock reading without login (%s)", where, exc)
            reading = None
        offset_ns = reading.offset_ns if reading is not None else None
        soap.login = Login(username, password, offset_ns or 0)
        zeep = ZeepServices(
            where, username, password, offset_ns, timeout_s, http_auth=soap.http_auth
        )
        try:
            identity, media_xaddr, media2_xaddr, profiles = await _read_with_zeep(
                zeep, device_url, reached_host
            )
            media2 = False
            if media2_xaddr is not None:
                known = {p.token for p in profiles}
                try:
                    profiles += await _read_media2(soap, media2_xaddr, reached_host, known)
                except CameraProtocolError as exc:
                    log.warning("%s: Media2 offered but unusable: %s", where, exc)
                else:
                    media2 = True
        finally:
            await zeep.close()
    if media_xaddr is None and media2_xaddr is None:
        log.warning("%s offers no Media service: no profiles", where)
    return DeviceReadout(
        url=device_url, identity=identity, clock=reading, media2=media2, profiles=tuple(profiles)
    )


async def _read_with_zeep(
    zeep: ZeepServices, device_url: str, reached_host: str
) -> tuple[DeviceIdentity, str | None, str | None, list[MediaProfile]]:
    where = zeep.where
    dev = await zeep.service("devicemgmt", device_url)
    info = await zeep.call(dev, "GetDeviceInformation")
    if info is None:
        raise CameraProtocolError(f"{where} answered GetDeviceInformation with nothing")

    mac: str | None = None
    try:
        interfaces = as_list(await zeep.call(dev, "GetNetworkInterfaces"))
    except CameraProtocolError as exc:
        log.info("%s: no network interfaces (%s)", where, exc)
        interfaces = []
    for iface in interfaces:
        if attr(iface, "Enabled") is True or str(attr(iface, "Enabled")).lower() == "true":
            mac = _mac(attr_text(iface, "Info", "HwAddress"))
            if mac is not None:
                break
    identity = DeviceIdentity(
        manufacturer=attr_text(info, "Manufacturer") or "",
        model=attr_text(info, "Model") or "",
        firmware=attr_text(info, "FirmwareVersion") or "",
        serial=attr_text(info, "SerialNumber") or "",
        hardware_id=attr_text(info, "HardwareId") or "",
        mac=mac,
    )

    media_xaddr: str | None = None
    media2_xaddr: str | None = None
    try:
        services = as_list(await zeep.call(dev, "GetServices", {"IncludeCapability": False}))
    except CameraProtocolError as exc:  # an old device: GetCapabilities knows Media only
        log.info("%s: GetServices failed (%s); asking GetCapabilities", where, exc)
        caps = await zeep.call(dev, "GetCapabilities", {"Category": "All"})
        xaddr = attr_text(caps, "Media", "XAddr")
        media_xaddr = rewrite_xaddr(xaddr, device_url) if xaddr else None
        services = []
    for svc in services:
        namespace, xaddr = attr_text(svc, "Namespace"), attr_text(svc, "XAddr")
        if namespace == NS["trt"] and xaddr:
            media_xaddr = rewrite_xaddr(xaddr, device_url)
        elif namespace == NS["tr2"] and xaddr:
            media2_xaddr = rewrite_xaddr(xaddr, device_url)

    profiles: list[MediaProfile] = []
    if media_xaddr is not None:
        media = await zeep.service("media", media_xaddr)
        for prof in as_list(await zeep.call(media, "GetProfiles")):
            token = attr_text(prof, "token")
            vec = attr(prof, "VideoEncoderConfiguration")
            if not token or vec is None:
                continue  # audio-only or metadata profiles are not recordable video
            setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
            stream = await zeep.optional_uri(
                media, "GetStreamUri", {"StreamSetup": setup, "ProfileToken": token}
            )
            snap = await zeep.optional_uri(media, "GetSnapshotUri", {"ProfileToken": token})
            profiles.append(
                MediaProfile(
                    token=token,
                    name=attr_text(prof, "Name") or token,
                    codec=_codec(attr_text(vec, "Encoding")),
                    width=positive_int(attr(vec, "Resolution", "Width")),
                    height=positive_int(attr(vec, "Resolution", "Height")),
                    fps=positive_float(attr(vec, "RateControl", "FrameRateLimit")),
                    bitrate_kbps=positive_int(attr(vec, "RateControl", "BitrateLimit")),
                    stream_uri=rewrite_private_host(stream, reached_host) if stream else None,
                    snapshot_uri=rewrite_private_host(snap, reached_host) if snap else None,
                    via_media2=False,
                )
            )
    return identity, media_xaddr, media2_xaddr, profiles


async def _read_media2(
    soap: SoapClient, xaddr: str, reached_host: str, known: set[str]
) -> list[MediaProfile]:
    """The Media2 profiles whose tokens Media did not already show (H.265 ones, typically)."""
    resp = await soap.call(
        xaddr, "Media2 GetProfiles", "<tr2:GetProfiles><tr2:Type>All</tr2:Type></tr2:GetProfiles>"
    )
    out: list[MediaProfile] = []
    for prof in resp.findall("tr2:Profiles", NS):
        token = (prof.get("token") or "").strip()
        enc = prof.find("tr2:Configurations/tr2:VideoEncoder", NS)
        if not token or enc is None or token in known:
            continue
        uris: list[str | None] = []
        for op, extra in (
            ("GetStreamUri", "<tr2:Protocol>RtspUnicast</tr2:Protocol>"),
            ("GetSnapshotUri", ""),
        ):
            ref = f"<tr2:ProfileToken>{escape(token)}</tr2:ProfileToken>"
            body = f"<tr2:{op}>{extra}{ref}</tr2:{op}>"
            try:
                uri = text(await soap.call(xaddr, f"Media2 {op}", body), "tr2:Uri")
            except CameraProtocolError as exc:
                log.info("%s: %s", soap.device_url, exc)
                uri = None
            uris.append(rewrite_private_host(uri, reached_host) if uri else None)
        out.append(
            MediaProfile(
                token=token,
                name=text(prof, "tr2:Name") or token,
                codec=_codec(text(enc, "tt:Encoding")),
                width=positive_int(text(enc, "tt:Resolution/tt:Width")),
                height=positive_int(text(enc, "tt:Resolution/tt:Height")),
                fps=positive_float(text(enc, "tt:RateControl/tt:FrameRateLimit")),
                bitrate_kbps=positive_int(text(enc, "tt:RateControl/tt:BitrateLimit")),
                stream_uri=uris[0],
                snapshot_uri=uris[1],
                via_media2=True,
            )
        )
    return out
