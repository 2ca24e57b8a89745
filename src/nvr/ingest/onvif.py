"""ONVIF device read-out: who a camera is, how far its clock is off, and its media profiles.

The asyncio layer over onvif-zeep-async. The Device and Media (ver10) services go through the
library and its bundled WSDLs (no network needed to load them). Two things it cannot do are done
here with a small SOAP 1.2 client of our own on aiohttp:

* ``GetSystemDateAndTime`` without a login (the library always adds WS-Security, and cannot be
  built without a user), timed precisely (see ``read_clock``);
* Media2 (ver20), which 4.3.0 ships no WSDL for, and which is the only way to see H.265 profiles.

WS-Security UsernameToken digests are stamped with the *device's* clock: its measured offset is
handed to the library as ``dt_diff`` (added to its ``Created`` time) and added to ours, so a
camera whose clock is hours off still accepts the digest.

Every foreign exception (aiohttp, zeep, onvif, XML) is turned into ``CameraAuthError``,
``CameraConnectError`` or ``CameraProtocolError`` here, naming the device URL and never the
password. Nothing typed ``Any`` leaves this module.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

import aiohttp

from nvr.clock import Clock
from nvr.errors import CameraAuthError, CameraConnectError, CameraError, CameraProtocolError
from nvr.ingest.onvif_soap import (
    NS,
    ClockBracket,
    Login,
    SoapClient,
    device_utc_floor_ns,
    positive_float,
    positive_int,
    text,
)
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

_CLOCK_GOAL_NS = 200_000_000  # stop refining once the offset is pinned to ±100 ms


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
class MediaProfile:
    token: str
    name: str
    codec: str  # "h264", "h265", or the device's encoding name in lower case ("jpeg", ...)
    width: int | None
    height: int | None
    fps: float | None
    bitrate_kbps: int | None
    stream_uri: str | None  # RTSP, private hosts already rewritten to the host we reached
    snapshot_uri: str | None
    via_media2: bool  # only Media2 showed this profile (H.265 profiles, typically)


@dataclass(frozen=True, slots=True)
class ClockReading:
    device_utc_ns: int  # the device's UTC clock at the moment of the (last) reading
    offset_ns: int  # device minus NVR wall clock, corrected by half the round trip
    round_trip_ns: int  # the shortest request/answer round trip seen


@dataclass(frozen=True, slots=True)
class DeviceReadout:
    url: str  # the device service URL we reached (no credentials in it)
    identity: DeviceIdentity
    clock: ClockReading | None  # None when the device would not tell its time without login
    media2: bool  # the device offers a working Media2 service
    profiles: tuple[MediaProfile, ...]


# ---------------------------------------------------------------------------------------------
# Pure helpers


def rewrite_private_host(uri: str, reached_host: str) -> str:
    """Put ``reached_host`` in place of a private, loopback, link-local or unspecified host.

    A camera behind NAT reports the LAN address it believes it has (192.168.1.64) in its
    XAddrs and stream URIs; we must use the address we reached it at. Host names and public
    addresses are left alone, as are the scheme, credentials, port, path and query. A URI that
    does not parse comes back unchanged (the RTSP client will then say what is wrong with it).
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport.startswith("["):
        host, bracket, port_part = hostport[1:].partition("]")
        if not bracket:
            return uri
    else:
        host, colon, port = hostport.partition(":")
        port_part = colon + port
    if not _is_private_ip(host):
        return uri
    new_host = reached_host.strip("[]")
    if ":" in new_host:
        new_host = f"[{new_host}]"
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{new_host}{port_part}"))


_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_IPV6_ULA = ipaddress.ip_network("fc00::/7")


def _is_private_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False  # a host name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return True
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in _RFC1918)
    return ip in _IPV6_ULA


def pick_profile(profiles: Sequence[MediaProfile], want: str) -> MediaProfile:
    """The profile to record: ``"main"`` (largest picture), ``"sub"`` (smallest), or a token.

    For ``main`` and ``sub`` only profiles with a stream URI count; ties go to the earlier
    profile, and Media profiles come before Media2-only ones, so an H.264 main stream wins
    over an H.265 one of the same size. A token matches exactly.
    """
    if want in ("main", "sub"):
        usable = [p for p in profiles if p.stream_uri]
        if usable:
            area = [(p.width or 0) * (p.height or 0) for p in usable]
            if want == "main":
                return usable[area.index(max(area))]
            known = [a for a in area if a > 0]
            return usable[area.index(min(known))] if known else usable[0]
    else:
        for p in profiles:
            if p.token == want:
                return p
    choices = ", ".join(
        f"{p.token} ({p.codec} {p.width or '?'}x{p.height or '?'})" for p in profiles
    )
    raise CameraProtocolError(
        f"no ONVIF profile {want!r} with a stream: choose 'main', 'sub' or a token"
        + (f" ({choices})" if choices else " (the device offers no profiles)")
    )


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


def _rewrite_xaddr(xaddr: str, device_url: str) -> str:
    """A service address on a private host becomes one on the host and port we reached.

    Unlike stream URIs (RTSP has its own forwarded port), a camera serves all its SOAP
    services on one HTTP port, so behind a port forward the port must follow too.
    """
    reached = urlsplit(device_url)
    try:
        parts = urlsplit(xaddr)
        host = parts.hostname or ""
    except ValueError as exc:
        raise CameraProtocolError(f"ONVIF device {device_url} sent a bad XAddr {xaddr!r}") from exc
    if host == reached.hostname or not _is_private_ip(host):
        return xaddr
    return urlunsplit(parts._replace(scheme=reached.scheme, netloc=reached.netloc))


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


async def _measure_clock(soap: SoapClient, clock: Clock, refine_steps: int) -> ClockReading:
    """One reading of the device's clock, then up to ``refine_steps`` timed ones (ClockBracket)."""
    anchor_ns = clock.wall_ns() - clock.monotonic_ns()  # wall = anchor + monotonic: no steps

    async def sample() -> tuple[int, int, int]:
        send = clock.monotonic_ns()
        resp = await soap.call(
            soap.device_url, "GetSystemDateAndTime", "<tds:GetSystemDateAndTime/>", auth=False
        )
        recv = clock.monotonic_ns()
        return device_utc_floor_ns(resp, soap.where), anchor_ns + send, anchor_ns + recv

    bracket = ClockBracket(*await sample())
    for _ in range(refine_steps):
        if bracket.width_ns <= _CLOCK_GOAL_NS:
            break
        # A real-time wait on purpose: it paces requests against the device's clock, and must
        # not hang when the caller's clock is a simulated one that only moves when told to.
        await asyncio.sleep(bracket.delay_ns(anchor_ns + clock.monotonic_ns()) / 1e9)
        if not bracket.add(*await sample()):
            log.info("%s: its clock stepped while being read", soap.where)
            break
    return ClockReading(
        device_utc_ns=bracket.last_mid_ns + bracket.offset_ns,
        offset_ns=bracket.offset_ns,
        round_trip_ns=bracket.round_trip_ns,
    )


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
        return await _measure_clock(soap, clock, refine_steps)


# ---------------------------------------------------------------------------------------------
# onvif-zeep-async, wrapped


def _import_onvif() -> Any:
    """Import ``onvif.client`` without letting it configure the root logger.

    The module calls ``logging.basicConfig(level=INFO)`` when imported; put back what was there.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import onvif.client  # noqa: PLC0415  # see the docstring

        return onvif.client
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


_BINDINGS = {
    "devicemgmt": ("devicemgmt.wsdl", "{http://www.onvif.org/ver10/device/wsdl}DeviceBinding"),
    "media": ("media.wsdl", "{http://www.onvif.org/ver10/media/wsdl}MediaBinding"),
}


def _zeep_error(exc: Exception, where: str, op: str) -> CameraError | None:
    """Translate what a zeep/onvif call raised; None for exceptions that are our own bugs."""
    import zeep.exceptions  # noqa: PLC0415  # loaded with onvif, on first use

    if isinstance(exc, CameraError):
        return exc
    if isinstance(exc, TimeoutError):
        return CameraConnectError(f"{where} did not answer {op} in time")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return CameraConnectError(f"{where} unreachable ({op}): {type(exc).__name__}: {exc}")
    if isinstance(exc, zeep.exceptions.Fault):
        codes = [str(getattr(c, "text", c)) for c in (getattr(exc, "subcodes", None) or [])]
        codes.append(str(getattr(exc, "code", "") or ""))
        message = " ".join(str(getattr(exc, "message", "") or "").split())[:200]
        if any("NotAuthorized" in c for c in codes) or "not authorized" in message.lower():
            return CameraAuthError(f"{where} rejected the credentials ({op}: {message})")
        return CameraProtocolError(f"{where} answered {op} with a SOAP fault: {message}")
    if isinstance(exc, zeep.exceptions.TransportError):
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return CameraAuthError(f"{where} rejected the credentials ({op}: HTTP {status})")
        return CameraProtocolError(f"{where} answered {op} with HTTP {status}, not SOAP")
    if isinstance(exc, zeep.exceptions.Error):
        return CameraProtocolError(
            f"{where} answered {op} with something unreadable: {type(exc).__name__}"
        )
    onvif = _import_onvif()
    if isinstance(exc, onvif.ONVIFError | ValueError):
        # Malformed values that zeep only notices while converting them.
        return CameraProtocolError(f"{where} answered {op} with something unreadable: {exc}")
    return None


class _Zeep:
    """The onvif-zeep-async services of one read-out: calls bounded in time, errors translated."""

    def __init__(
        self, where: str, username: str, password: str, offset_ns: int | None, timeout_s: float
    ) -> None:
        self.where = where
        self.username = username
        self.password = password
        # UsernameDigestTokenDtDiff adds dt_diff to its Created time: the device's clock.
        self.dt_diff = None if offset_ns is None else dt.timedelta(microseconds=offset_ns / 1000)
        self.timeout_s = timeout_s
        self._services: list[Any] = []

    async def service(self, kind: str, xaddr: str) -> Any:
        onvif = _import_onvif()
        wsdl, binding = _BINDINGS[kind]
        svc = onvif.ONVIFService(
            xaddr,
            self.username,
            self.password,
            str(Path(onvif.__file__).parent / "wsdl" / wsdl),
            encrypt=True,  # PasswordDigest, never the password in clear
            no_cache=True,  # the WSDLs are local files; no sqlite cache in the home directory
            dt_diff=self.dt_diff,
            binding_name=binding,
            read_timeout=math.ceil(self.timeout_s),
        )
        self._services.append(svc)
        await svc.setup()
        return svc

    async def call(self, svc: Any, op: str, params: dict[str, object] | None = None) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await getattr(svc, op)(params)
        except Exception as exc:
            translated = _zeep_error(exc, self.where, op)
            if translated is None or translated is exc:
                raise
            raise translated from exc

    async def close(self) -> None:
        for svc in self._services:
            await svc.close()


def _get(obj: object, *path: str) -> object:
    """Walk attributes of a zeep result; None where any step is missing."""
    for name in path:
        if obj is None:
            return None
        try:
            obj = getattr(obj, name)
        except (AttributeError, KeyError):
            return None
    return obj


def _str(obj: object, *path: str) -> str | None:
    value = _get(obj, *path)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value).strip()
    return None


def _items(obj: object) -> list[object]:
    if obj is None:
        return []
    if isinstance(obj, list | tuple):
        return list(obj)
    return [obj]


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
        reading: ClockReading | None
        try:
            reading = await _measure_clock(soap, clock, refine_clock_steps)
        except (CameraAuthError, CameraProtocolError) as exc:
            log.warning("%s: no clock reading without login (%s)", where, exc)
            reading = None
        offset_ns = reading.offset_ns if reading is not None else None
        soap.login = Login(username, password, offset_ns or 0)
        zeep = _Zeep(where, username, password, offset_ns, timeout_s)
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
    zeep: _Zeep, device_url: str, reached_host: str
) -> tuple[DeviceIdentity, str | None, str | None, list[MediaProfile]]:
    where = zeep.where
    dev = await zeep.service("devicemgmt", device_url)
    info = await zeep.call(dev, "GetDeviceInformation")
    if info is None:
        raise CameraProtocolError(f"{where} answered GetDeviceInformation with nothing")

    mac: str | None = None
    try:
        interfaces = _items(await zeep.call(dev, "GetNetworkInterfaces"))
    except CameraProtocolError as exc:
        log.info("%s: no network interfaces (%s)", where, exc)
        interfaces = []
    for iface in interfaces:
        if _get(iface, "Enabled") is True or str(_get(iface, "Enabled")).lower() == "true":
            mac = _mac(_str(iface, "Info", "HwAddress"))
            if mac is not None:
                break
    identity = DeviceIdentity(
        manufacturer=_str(info, "Manufacturer") or "",
        model=_str(info, "Model") or "",
        firmware=_str(info, "FirmwareVersion") or "",
        serial=_str(info, "SerialNumber") or "",
        hardware_id=_str(info, "HardwareId") or "",
        mac=mac,
    )

    media_xaddr: str | None = None
    media2_xaddr: str | None = None
    try:
        services = _items(await zeep.call(dev, "GetServices", {"IncludeCapability": False}))
    except CameraProtocolError as exc:  # an old device: GetCapabilities knows Media only
        log.info("%s: GetServices failed (%s); asking GetCapabilities", where, exc)
        caps = await zeep.call(dev, "GetCapabilities", {"Category": "All"})
        xaddr = _str(caps, "Media", "XAddr")
        media_xaddr = _rewrite_xaddr(xaddr, device_url) if xaddr else None
        services = []
    for svc in services:
        namespace, xaddr = _str(svc, "Namespace"), _str(svc, "XAddr")
        if namespace == NS["trt"] and xaddr:
            media_xaddr = _rewrite_xaddr(xaddr, device_url)
        elif namespace == NS["tr2"] and xaddr:
            media2_xaddr = _rewrite_xaddr(xaddr, device_url)

    profiles: list[MediaProfile] = []
    if media_xaddr is not None:
        media = await zeep.service("media", media_xaddr)
        for prof in _items(await zeep.call(media, "GetProfiles")):
            token = _str(prof, "token")
            vec = _get(prof, "VideoEncoderConfiguration")
            if not token or vec is None:
                continue  # audio-only or metadata profiles are not recordable video
            setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
            stream = await _optional_uri(
                zeep, media, "GetStreamUri", {"StreamSetup": setup, "ProfileToken": token}
            )
            snap = await _optional_uri(zeep, media, "GetSnapshotUri", {"ProfileToken": token})
            profiles.append(
                MediaProfile(
                    token=token,
                    name=_str(prof, "Name") or token,
                    codec=_codec(_str(vec, "Encoding")),
                    width=positive_int(_get(vec, "Resolution", "Width")),
                    height=positive_int(_get(vec, "Resolution", "Height")),
                    fps=positive_float(_get(vec, "RateControl", "FrameRateLimit")),
                    bitrate_kbps=positive_int(_get(vec, "RateControl", "BitrateLimit")),
                    stream_uri=rewrite_private_host(stream, reached_host) if stream else None,
                    snapshot_uri=rewrite_private_host(snap, reached_host) if snap else None,
                    via_media2=False,
                )
            )
    return identity, media_xaddr, media2_xaddr, profiles


async def _optional_uri(zeep: _Zeep, svc: Any, op: str, params: dict[str, object]) -> str | None:
    """A Media URI, or None when the device faults for this profile (login errors still raise)."""
    try:
        return _str(await zeep.call(svc, op, params), "Uri") or None
    except CameraProtocolError as exc:
        log.info("%s: %s", zeep.where, exc)
        return None


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
