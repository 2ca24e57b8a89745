"""A test ONVIF device: an aiohttp SOAP 1.2 service on loopback, shaped like a real camera's.

    dev = OnvifTestDevice(password="s3cret", profiles=default_profiles(h264_url, h265_url, sub_url))
    url = await dev.start()           # http://127.0.0.1:PORT/onvif/device_service
    ...
    url = await dev.restart()         # the same device on another port ("it moved")
    await dev.stop()

It answers the Device operations (GetSystemDateAndTime without a login, GetDeviceInformation,
GetNetworkInterfaces, GetServices, GetCapabilities), Media (GetProfiles, GetStreamUri,
GetSnapshotUri) and Media2 (GetProfiles, GetStreamUri, GetSnapshotUri). Everything but the clock
needs a WS-Security UsernameToken with a PasswordDigest whose Created time is within
``max_skew_s`` of the device's own clock (real time + ``clock_offset_s``), as cameras check it.
XAddrs and stream URIs carry ``lan_host`` instead of 127.0.0.1, as a camera behind NAT would.

``http_auth`` makes it guard SOAP with HTTP Digest (RFC 7616, ``qop=auth``, ``http_algorithm``
MD5 or SHA-256) as newer Hikvision, Dahua and Uniview cameras do: ``"digest"`` wants Digest on
every call (``GetSystemDateAndTime`` too when ``http_auth_clock``) and ignores WS-Security,
``"digest+wsse"`` wants both. Every 401 challenge it sends is logged in ``challenged``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

from aiohttp import web

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tr2": "http://www.onvif.org/ver20/media/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "ter": "http://www.onvif.org/ver10/error",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
}
_XMLNS = " ".join(f'xmlns:{p}="{u}"' for p, u in NS.items() if p not in ("wsse", "wsu"))

# How a device refuses a bad password: a SOAP fault with HTTP 400 (the SOAP 1.2 rule for a
# Sender fault), the same fault with HTTP 401 (Hikvision), or a bare HTTP 401 without a body.
AuthFailure = Literal["fault400", "fault401", "http401"]
HttpAuthMode = Literal["none", "digest", "digest+wsse"]
_DIGEST_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_AUTH_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class Identity:
    manufacturer: str = "Acme Optics"
    model: str = "AC-2000"
    firmware: str = "V5.7.3 build 250101"
    serial: str = "AC2000-0042-7731"
    hardware_id: str = "88"
    mac: str = "44:19:B6:0A:0B:0C"


@dataclass(frozen=True, slots=True)
class Profile:
    token: str
    name: str
    encoding: str  # as ONVIF spells it: "H264", "H265"
    width: int
    height: int
    fps: float
    bitrate_kbps: int
    stream_url: str  # where the stream really is (rtsp://127.0.0.1:PORT/...)
    media1: bool = True
    media2: bool = True


def default_profiles(h264_url: str, h265_url: str, sub_url: str) -> list[Profile]:
    """H.264 main (Media and Media2), H.265 main (Media2 only), an H.264 sub stream."""
    return [
        Profile("Profile_1", "mainStream", "H264", 1920, 1080, 25.0, 4096, h264_url),
        Profile("Profile_3", "mainStreamHEVC", "H265", 1920, 1080, 25.0, 2048, h265_url,
                media1=False),
        Profile("Profile_2", "subStream", "H264", 640, 360, 15.0, 512, sub_url),
    ]  # fmt: skip


@dataclass
class OnvifTestDevice:
    identity: Identity = field(default_factory=Identity)
    username: str = "admin"
    password: str = "admin"
    profiles: list[Profile] = field(default_factory=list)
    clock_offset_s: float = 0.0
    lan_host: str = "192.168.1.64"
    auth_failure: AuthFailure = "fault400"
    get_services: bool = True  # False: an old device that only knows GetCapabilities
    media2: bool = True
    max_skew_s: float = 30.0
    http_auth: HttpAuthMode = "none"
    http_auth_clock: bool = False  # HTTP Digest on GetSystemDateAndTime too (some devices)
    http_algorithm: Literal["MD5", "SHA-256"] = "MD5"
    realm: str = "IP Camera(C3097)"
    operations: list[str] = field(default_factory=list)  # every operation asked, in order
    challenged: list[str] = field(default_factory=list)  # "service op" of every 401 challenge
    _http_nonce: str = field(default_factory=lambda: os.urandom(16).hex())
    _http_nc: dict[str, int] = field(default_factory=dict)  # cnonce -> the last nc seen
    _runner: web.AppRunner | None = None
    _port: int = 0
    _nonces: set[str] = field(default_factory=set)

    # ---- lifecycle ----
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/onvif/device_service"

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        for path in ("device_service", "media_service", "media2_service"):
            app.router.add_post(f"/onvif/{path}", self._handle)
        app.router.add_get("/onvif/snapshot", self._snapshot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])  # the port bound when 0 was asked
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, port: int = 0) -> str:
        """The same device (identity, profiles) answering at another port than before."""
        old = self._port
        await self.stop()
        url = await self.start(port)
        while not port and self._port == old:  # port 0 may hand the old port back
            await self.stop()
            url = await self.start()
        return url

    # ---- helpers ----
    def device_now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(time.time() + self.clock_offset_s, dt.UTC)

    def _lan(self, url: str) -> str:
        """``url`` with its host replaced by the LAN address a NATed camera believes it has."""
        parts = urlsplit(url)
        netloc = self.lan_host if parts.port is None else f"{self.lan_host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _xaddr(self, service: str) -> str:
        return f"http://{self.lan_host}:{self._port}/onvif/{service}"

    # ---- SOAP ----
    async def _handle(self, request: web.Request) -> web.Response:
        try:
            env = ET.fromstring(await request.read())
        except ET.ParseError:
            return _fault(400, "Sender", "ter:WellFormed", "Not well-formed XML")
        body = env.find("s:Body", NS)
        if body is None or len(body) == 0:
            return _fault(400, "Sender", "ter:WellFormed", "No SOAP 1.2 Body")
        op = body[0].tag.rpartition("}")[2]
        self.operations.append(op)
        service = request.path.rsplit("/", 1)[1]
        clock = op == "GetSystemDateAndTime"
        http_needed = self.http_auth != "none" and (self.http_auth_clock or not clock)
        if http_needed and not self._http_authorized(request):
            self.challenged.append(f"{service} {op}")
            challenge = (
                f'Digest realm="{self.realm}", qop="auth", nonce="{self._http_nonce}", '
                f'opaque="5ccc069c403ebaf9", algorithm={self.http_algorithm}'
            )
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        if not clock and self.http_auth != "digest" and not self._authorized(env):
            if self.auth_failure == "http401":
                return web.Response(status=401, headers={"WWW-Authenticate": 'Digest realm="x"'})
            status = 401 if self.auth_failure == "fault401" else 400
            return _fault(status, "Sender", "ter:NotAuthorized", "Sender not Authorized")
        handler = getattr(self, f"_{service}_{op}", None)
        if handler is None or (service == "media2_service" and not self.media2):
            return _fault(500, "Receiver", "ter:ActionNotSupported", f"{op} not supported")
        if op == "GetServices" and not self.get_services:
            return _fault(500, "Receiver", "ter:ActionNotSupported", "GetServices not supported")
        return _ok(handler(body[0]))

    def _http_authorized(self, request: web.Request) -> bool:
        """RFC 7616 Digest with qop=auth, checked here independently of the recorder's code."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            return False
        params = {m[1].lower(): m[2] or m[3] for m in _AUTH_PARAM.finditer(header[7:])}
        hash_fn = _DIGEST_HASH[self.http_algorithm]

        def h(text: str) -> str:
            return hash_fn(text.encode()).hexdigest()

        try:
            nc = int(params.get("nc", ""), 16)
        except ValueError:
            return False
        cnonce = params.get("cnonce", "")
        if (
            params.get("username") != self.username
            or params.get("realm") != self.realm
            or params.get("nonce") != self._http_nonce
            or params.get("uri") != request.path_qs
            or params.get("qop") != "auth"
            or not cnonce
            or nc <= self._http_nc.get(cnonce, 0)  # a replayed nonce count is refused
        ):
            return False
        ha1 = h(f"{self.username}:{self.realm}:{self.password}")
        ha2 = h(f"{request.method}:{request.path_qs}")
        expected = h(f"{ha1}:{self._http_nonce}:{params['nc']}:{cnonce}:auth:{ha2}")
        if params.get("response") != expected:
            return False
        self._http_nc[cnonce] = nc
        return True

    def _authorized(self, env: ET.Element) -> bool:
        token = env.find("s:Header/wsse:Security/wsse:UsernameToken", NS)
        if token is None:
            return False
        user = token.findtext("wsse:Username", "", NS)
        digest = token.findtext("wsse:Password", "", NS)
        nonce_b64 = token.findtext("wsse:Nonce", "", NS)
        created = token.findtext("wsu:Created", "", NS)
        try:
            nonce = base64.b64decode(nonce_b64, validate=True)
            when = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return False
        if when.tzinfo is None or nonce_b64 in self._nonces:
            return False  # a replayed nonce is refused, as the spec asks
        skew_s = abs((when - self.device_now()).total_seconds())
        expected = base64.b64encode(
            hashlib.sha1(nonce + created.encode() + self.password.encode()).digest()
        ).decode()
        if user != self.username or digest != expected or skew_s > self.max_skew_s:
            return False
        self._nonces.add(nonce_b64)
        return True

    async def _snapshot(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xd8\xff\xd9", content_type="image/jpeg")

    # ---- Device ----
    def _device_service_GetSystemDateAndTime(self, req: ET.Element) -> str:
        now = self.device_now()
        return (
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
            "<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>"
            "<tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime>{_datetime(now)}</tt:UTCDateTime>"
            f"<tt:LocalDateTime>{_datetime(now)}</tt:LocalDateTime>"
            "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    def _device_service_GetDeviceInformation(self, req: ET.Element) -> str:
        i = self.identity
        return (
            "<tds:GetDeviceInformationResponse>"
            f"<tds:Manufacturer>{escape(i.manufacturer)}</tds:Manufacturer>"
            f"<tds:Model>{escape(i.model)}</tds:Model>"
            f"<tds:FirmwareVersion>{escape(i.firmware)}</tds:FirmwareVersion>"
            f"<tds:SerialNumber>{escape(i.serial)}</tds:SerialNumber>"
            f"<tds:HardwareId>{escape(i.hardware_id)}</tds:HardwareId>"
            "</tds:GetDeviceInformationResponse>"
        )

    def _device_service_GetNetworkInterfaces(self, req: ET.Element) -> str:
        # A disabled Wi-Fi interface first: the reader must take the first *enabled* one.
        def iface(token: str, enabled: bool, mac: str) -> str:
            return (
                f'<tds:NetworkInterfaces token="{token}">'
                f"<tt:Enabled>{str(enabled).lower()}</tt:Enabled>"
                f"<tt:Info><tt:Name>{token}</tt:Name><tt:HwAddress>{mac}</tt:HwAddress>"
                "<tt:MTU>1500</tt:MTU></tt:Info>"
                f"<tt:IPv4><tt:Enabled>{str(enabled).lower()}</tt:Enabled><tt:Config>"
                f"<tt:Manual><tt:Address>{self.lan_host}</tt:Address>"
                "<tt:PrefixLength>24</tt:PrefixLength></tt:Manual>"
                "<tt:DHCP>false</tt:DHCP></tt:Config></tt:IPv4></tds:NetworkInterfaces>"
            )

        return (
            "<tds:GetNetworkInterfacesResponse>"
            + iface("wlan0", False, "02:00:00:00:00:01")
            + iface("eth0", True, self.identity.mac)
            + "</tds:GetNetworkInterfacesResponse>"
        )

    def _services(self) -> list[tuple[str, str]]:
        out = [(NS["tds"], "device_service"), (NS["trt"], "media_service")]
        if self.media2:
            out.append((NS["tr2"], "media2_service"))
        return out

    def _device_service_GetServices(self, req: ET.Element) -> str:
        items = "".join(
            f"<tds:Service><tds:Namespace>{ns}</tds:Namespace>"
            f"<tds:XAddr>{self._xaddr(path)}</tds:XAddr>"
            "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version>"
            "</tds:Service>"
            for ns, path in self._services()
        )
        return f"<tds:GetServicesResponse>{items}</tds:GetServicesResponse>"

    def _device_service_GetCapabilities(self, req: ET.Element) -> str:
        return (
            "<tds:GetCapabilitiesResponse><tds:Capabilities>"
            f"<tt:Device><tt:XAddr>{self._xaddr('device_service')}</tt:XAddr></tt:Device>"
            f"<tt:Media><tt:XAddr>{self._xaddr('media_service')}</tt:XAddr>"
            "<tt:StreamingCapabilities><tt:RTPMulticast>false</tt:RTPMulticast>"
            "<tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP>"
            "</tt:StreamingCapabilities></tt:Media>"
            "</tds:Capabilities></tds:GetCapabilitiesResponse>"
        )

    # ---- Media (ver10) ----
    def _profile(self, req: ET.Element, prefix: str) -> Profile:
        token = req.findtext(f"{prefix}:ProfileToken", "", NS)
        for p in self.profiles:
            if p.token == token and (p.media1 if prefix == "trt" else p.media2):
                return p
        raise web.HTTPBadRequest(
            body=_envelope(_fault_body("Sender", "ter:NoProfile", "No such profile")),
            content_type="application/soap+xml",
        )

    def _media_service_GetProfiles(self, req: ET.Element) -> str:
        out = []
        for p in (p for p in self.profiles if p.media1):
            out.append(
                f'<trt:Profiles token="{p.token}" fixed="true"><tt:Name>{p.name}</tt:Name>'
                '<tt:VideoSourceConfiguration token="VideoSourceConfig_1"><tt:Name>vs</tt:Name>'
                "<tt:UseCount>3</tt:UseCount><tt:SourceToken>VideoSource_1</tt:SourceToken>"
                '<tt:Bounds x="0" y="0" width="1920" height="1080"/>'
                "</tt:VideoSourceConfiguration>"
                f'<tt:VideoEncoderConfiguration token="VEC_{p.token}">'
                f"<tt:Name>{p.name}</tt:Name><tt:UseCount>1</tt:UseCount>"
                f"<tt:Encoding>{p.encoding}</tt:Encoding>"
                f"<tt:Resolution><tt:Width>{p.width}</tt:Width>"
                f"<tt:Height>{p.height}</tt:Height></tt:Resolution><tt:Quality>4</tt:Quality>"
                f"<tt:RateControl><tt:FrameRateLimit>{int(p.fps)}</tt:FrameRateLimit>"
                "<tt:EncodingInterval>1</tt:EncodingInterval>"
                f"<tt:BitrateLimit>{p.bitrate_kbps}</tt:BitrateLimit></tt:RateControl>"
                "<tt:H264><tt:GovLength>50</tt:GovLength><tt:H264Profile>Main</tt:H264Profile>"
                "</tt:H264><tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type>"
                "<tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address><tt:Port>0</tt:Port>"
                "<tt:TTL>1</tt:TTL><tt:AutoStart>false</tt:AutoStart></tt:Multicast>"
                "<tt:SessionTimeout>PT60S</tt:SessionTimeout></tt:VideoEncoderConfiguration>"
                "</trt:Profiles>"
            )
        return f"<trt:GetProfilesResponse>{''.join(out)}</trt:GetProfilesResponse>"

    @staticmethod
    def _media_uri(tag: str, uri: str) -> str:
        return (
            f"<trt:{tag}><trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri>"
            "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot>"
            f"<tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:{tag}>"
        )

    def _media_service_GetStreamUri(self, req: ET.Element) -> str:
        p = self._profile(req, "trt")
        stream = req.findtext("trt:StreamSetup/tt:Stream", "", NS)
        proto = req.findtext("trt:StreamSetup/tt:Transport/tt:Protocol", "", NS)
        assert (stream, proto) == ("RTP-Unicast", "RTSP"), (stream, proto)
        return self._media_uri("GetStreamUriResponse", self._lan(p.stream_url))

    def _snapshot_uri(self, p: Profile) -> str:
        return f"http://{self.lan_host}:{self._port}/onvif/snapshot?token={p.token}"

    def _media_service_GetSnapshotUri(self, req: ET.Element) -> str:
        p = self._profile(req, "trt")
        return self._media_uri("GetSnapshotUriResponse", self._snapshot_uri(p))

    # ---- Media2 (ver20) ----
    def _media2_service_GetProfiles(self, req: ET.Element) -> str:
        out = []
        for p in (p for p in self.profiles if p.media2):
            out.append(
                f'<tr2:Profiles token="{p.token}" fixed="true"><tr2:Name>{p.name}</tr2:Name>'
                '<tr2:Configurations><tr2:VideoSource token="VideoSourceConfig_1">'
                "<tt:Name>vs</tt:Name><tt:UseCount>3</tt:UseCount>"
                "<tt:SourceToken>VideoSource_1</tt:SourceToken>"
                '<tt:Bounds x="0" y="0" width="1920" height="1080"/></tr2:VideoSource>'
                f'<tr2:VideoEncoder token="VEC2_{p.token}" GovLength="50" Profile="Main">'
                f"<tt:Name>{p.name}</tt:Name><tt:UseCount>1</tt:UseCount>"
                f"<tt:Encoding>{p.encoding}</tt:Encoding>"
                f"<tt:Resolution><tt:Width>{p.width}</tt:Width>"
                f"<tt:Height>{p.height}</tt:Height></tt:Resolution>"
                f'<tt:RateControl ConstantBitRate="false"><tt:FrameRateLimit>{p.fps}'
                f"</tt:FrameRateLimit><tt:BitrateLimit>{p.bitrate_kbps}</tt:BitrateLimit>"
                "</tt:RateControl><tt:Quality>4</tt:Quality></tr2:VideoEncoder>"
                "</tr2:Configurations></tr2:Profiles>"
            )
        return f"<tr2:GetProfilesResponse>{''.join(out)}</tr2:GetProfilesResponse>"

    def _media2_service_GetStreamUri(self, req: ET.Element) -> str:
        p = self._profile(req, "tr2")
        proto = req.findtext("tr2:Protocol", "", NS)
        assert proto == "RtspUnicast", proto
        uri = escape(self._lan(p.stream_url))
        return f"<tr2:GetStreamUriResponse><tr2:Uri>{uri}</tr2:Uri></tr2:GetStreamUriResponse>"

    def _media2_service_GetSnapshotUri(self, req: ET.Element) -> str:
        uri = escape(self._snapshot_uri(self._profile(req, "tr2")))
        return f"<tr2:GetSnapshotUriResponse><tr2:Uri>{uri}</tr2:Uri></tr2:GetSnapshotUriResponse>"


def _datetime(t: dt.datetime) -> str:
    return (
        f"<tt:Time><tt:Hour>{t.hour}</tt:Hour><tt:Minute>{t.minute}</tt:Minute>"
        f"<tt:Second>{t.second}</tt:Second></tt:Time>"
        f"<tt:Date><tt:Year>{t.year}</tt:Year><tt:Month>{t.month}</tt:Month>"
        f"<tt:Day>{t.day}</tt:Day></tt:Date>"
    )


def _envelope(body: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope {_XMLNS}>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    )


def _ok(body: str) -> web.Response:
    return web.Response(text=_envelope(body), content_type="application/soap+xml")


def _fault_body(code: str, subcode: str, reason: str) -> str:
    return (
        f"<s:Fault><s:Code><s:Value>s:{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en">{reason}</s:Text></s:Reason>'
        "</s:Fault>"
    )


def _fault(status: int, code: str, subcode: str, reason: str) -> web.Response:
    return web.Response(
        status=status, text=_envelope(_fault_body(code, subcode, reason)),
        content_type="application/soap+xml",
    )  # fmt: skip
