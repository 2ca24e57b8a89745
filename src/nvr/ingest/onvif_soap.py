"""A small SOAP 1.2 client for what onvif-zeep-async cannot do.

onvif-zeep-async always signs requests with WS-Security (so ``GetSystemDateAndTime``, which
needs no login, cannot be asked plainly) and ships no Media2 (ver20) WSDL. This module posts
hand-written envelopes with aiohttp, stamps the UsernameToken with the device's clock, and
reads answers of bounded size into ElementTree through ``safe_xml`` (no DTDs, no entities).

``HttpAuth`` is the HTTP Basic/Digest side: an aiohttp client middleware that answers a 401
challenge with ``rtsp_auth``'s RFC 7616 Digest (the one implementation, RTSP's and ours) and is
shared by every service of a device, ours and onvif-zeep-async's.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import hdrs

from nvr.clock import Clock
from nvr.errors import CameraAuthError, CameraConnectError, CameraProtocolError
from nvr.ingest.rtsp_auth import Authenticator, choose_auth, parse_challenges
from nvr.ingest.safe_xml import XmlError, XmlRefused, parse

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tr2": "http://www.onvif.org/ver20/media/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
}
_WSS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-"
_WSSE = _WSS + "wssecurity-secext-1.0.xsd"
_WSU = _WSS + "wssecurity-utility-1.0.xsd"
_PASSWORD_DIGEST = _WSS + "username-token-profile-1.0#PasswordDigest"
_BASE64 = _WSS + "soap-message-security-1.0#Base64Binary"
_CONTENT_TYPE = "application/soap+xml; charset=utf-8"
MAX_REPLY_BYTES = 4 * 1024 * 1024  # a big encoder's profile list is ~100 kB
SECOND_NS = 1_000_000_000


def iso_z(wall_ns: int) -> str:
    """UTC in the ``2026-01-01T00:00:00Z`` form WS-Security and cameras agree on."""
    return dt.datetime.fromtimestamp(wall_ns // SECOND_NS, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(body: str, header: str = "") -> bytes:
    ns = " ".join(f'xmlns:{p}="{u}"' for p, u in NS.items())
    head = f"<s:Header>{header}</s:Header>" if header else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f"<s:Envelope {ns}>{head}<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def username_token(username: str, password: str, created_ns: int, nonce: bytes) -> str:
    """WS-Security UsernameToken with PasswordDigest = Base64(SHA-1(nonce + created + password))."""
    created = iso_z(created_ns)
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest())
    return (
        f'<wsse:Security xmlns:wsse="{_WSSE}" xmlns:wsu="{_WSU}"><wsse:UsernameToken>'
        f"<wsse:Username>{escape(username)}</wsse:Username>"
        f'<wsse:Password Type="{_PASSWORD_DIGEST}">{digest.decode()}</wsse:Password>'
        f'<wsse:Nonce EncodingType="{_BASE64}">{base64.b64encode(nonce).decode()}</wsse:Nonce>'
        f"<wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"
    )


@dataclass(slots=True)
class Login:
    username: str
    password: str
    offset_ns: int  # the device's clock minus ours: added to the token's Created time


class HttpAuth:
    """HTTP authentication for one device's SOAP services, as an aiohttp client middleware.

    Many cameras guard SOAP with HTTP Digest (or Basic) instead of, or besides, WS-Security:
    they answer 401 with ``WWW-Authenticate``. Once ``credentials`` are known, such a request is
    sent again with ``Authorization`` (RFC 7616: MD5 or SHA-256, ``qop=auth``, ``nc``/cnonce;
    WS-Security stays in the body), and the authenticator is kept: every later request to the
    device, from any of its services, carries it up front. A 401 with a usable challenge to a
    request sent with it (a nonce the device dropped) is answered once more, with the new
    challenge; a 401 to that retry is handed back and becomes ``CameraAuthError``. Without
    credentials, or without a challenge we can answer, requests pass through untouched.
    """

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self._auth: Authenticator | None = None

    @property
    def scheme(self) -> str | None:
        """``"Digest"`` or ``"Basic"`` once the device asked for HTTP auth; None before."""
        return None if self._auth is None else self._auth.scheme

    async def __call__(
        self, req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if self.credentials is None:
            return await handler(req)
        uri = req.url.raw_path_qs
        if self._auth is not None:
            req.headers[hdrs.AUTHORIZATION] = self._auth.authorization(req.method, uri)
        resp = await handler(req)
        if resp.status == 401:
            challenges = parse_challenges(resp.headers.getall(hdrs.WWW_AUTHENTICATE, ()))
            chosen = choose_auth(challenges, *self.credentials)
            if chosen is None:
                return resp
            self._auth = chosen
            resp.release()
            req.headers[hdrs.AUTHORIZATION] = chosen.authorization(req.method, uri)
            resp = await handler(req)
        if resp.status != 401 and self._auth is not None:
            self._auth.on_success(resp.headers.get("Authentication-Info"))
        return resp


def parse_reply(where: str, op: str, status: int, content: bytes) -> ET.Element:
    """The first element of a SOAP 1.2 Body, or the CameraError the answer amounts to."""
    if status in (401, 403) and b"NotAuthorized" not in content:
        raise CameraAuthError(f"{where} rejected the credentials ({op}: HTTP {status})")
    try:
        root = parse(content, dialect="ONVIF SOAP").root
    except XmlRefused as exc:
        raise CameraProtocolError(f"{where} answered {op} with a DTD; refused") from exc
    except XmlError as exc:
        raise CameraProtocolError(
            f"{where} answered {op} with HTTP {status} and no SOAP XML: {content[:80]!r}"
        ) from exc
    body = root.find("s:Body", NS)
    if root.tag != f"{{{NS['s']}}}Envelope" or body is None:
        raise CameraProtocolError(f"{where} answered {op} without a SOAP 1.2 envelope")
    fault = body.find("s:Fault", NS)
    if fault is not None:
        codes = [v.text or "" for v in fault.iter(f"{{{NS['s']}}}Value")]
        reason = " ".join((fault.findtext("s:Reason/s:Text", "", NS) or "").split())[:200]
        if status in (401, 403) or any(c.endswith("NotAuthorized") for c in codes):
            raise CameraAuthError(f"{where} rejected the credentials ({op}: {reason})")
        raise CameraProtocolError(
            f"{where} answered {op} with a SOAP fault: {reason} ({', '.join(codes)})"
        )
    if status != 200 or len(body) == 0:
        raise CameraProtocolError(f"{where} answered {op} with HTTP {status} and no result")
    return body[0]


class SoapClient:
    """POST SOAP 1.2 requests to one device; every failure becomes a CameraError."""

    def __init__(
        self, session: aiohttp.ClientSession, device_url: str, timeout_s: float, clock: Clock
    ) -> None:
        self.session = session
        self.device_url = device_url
        self.where = f"ONVIF device {device_url}"
        self.timeout_s = timeout_s
        self.clock = clock
        self.login: Login | None = None
        # HTTP Digest/Basic when the device asks for it; read_device shares it with zeep.
        self.http_auth = HttpAuth()

    async def call(self, url: str, op: str, body: str, *, auth: bool = True) -> ET.Element:
        header = ""
        if auth and self.login is not None:
            created_ns = self.clock.wall_ns() + self.login.offset_ns
            header = username_token(
                self.login.username, self.login.password, created_ns, os.urandom(16)
            )
        content = bytearray()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.session.post(
                    url,
                    data=envelope(body, header),
                    headers={"Content-Type": _CONTENT_TYPE},
                    middlewares=(self.http_auth,),
                ) as resp:
                    status = resp.status
                    async for chunk in resp.content.iter_chunked(65536):
                        content += chunk
                        if len(content) > MAX_REPLY_BYTES:
                            raise CameraProtocolError(
                                f"{self.where} sent over {MAX_REPLY_BYTES} bytes for {op}"
                            )
        except TimeoutError as exc:
            raise CameraConnectError(
                f"{self.where} did not answer {op} within {self.timeout_s:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise CameraConnectError(
                f"{self.where} unreachable ({op}): {type(exc).__name__}: {exc}"
            ) from exc
        return parse_reply(self.where, op, status, bytes(content))


# ---- small readers for ElementTree answers ---------------------------------------------------


def text(el: ET.Element | None, path: str) -> str | None:
    found = None if el is None else el.find(path, NS)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def positive_int(value: object) -> int | None:
    number = positive_float(value)
    return None if number is None else int(number)


def positive_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None  # anything else (str, int, Decimal) is read through its text
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None
