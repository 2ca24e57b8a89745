"""onvif-zeep-async, wrapped: its services bounded in time, its exceptions translated.

Every foreign exception a call raises (aiohttp, zeep, onvif) becomes ``CameraAuthError``,
``CameraConnectError`` or ``CameraProtocolError`` naming the device, never the password; the
``attr``/``attr_text``/``as_list`` readers walk zeep results without letting ``Any`` out.

The library's services post through an aiohttp session of their own that knows no HTTP auth;
each service here gets the library's transport over *our* session instead, one per read-out,
carrying the device's ``HttpAuth`` middleware (HTTP Digest/Basic on a 401 challenge, then up
front), shared with our own SOAP client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from pathlib import Path
from typing import Any

import aiohttp

from nvr.errors import CameraAuthError, CameraConnectError, CameraError, CameraProtocolError
from nvr.ingest.onvif_soap import HttpAuth

log = logging.getLogger(__name__)


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


class ZeepServices:
    """The onvif-zeep-async services of one read-out: calls bounded in time, errors translated."""

    def __init__(
        self,
        where: str,
        username: str,
        password: str,
        offset_ns: int | None,
        timeout_s: float,
        *,
        http_auth: HttpAuth | None = None,
    ) -> None:
        self.where = where
        self.username = username
        self.password = password
        # UsernameDigestTokenDtDiff adds dt_diff to its Created time: the device's clock.
        self.dt_diff = None if offset_ns is None else dt.timedelta(microseconds=offset_ns / 1000)
        self.timeout_s = timeout_s
        self.http_auth = http_auth or HttpAuth((username, password))
        self._services: list[Any] = []
        self._session: aiohttp.ClientSession | None = None

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # As the library's own session: cameras' HTTPS certificates are self-signed.
                connector=aiohttp.TCPConnector(ssl=False),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                middlewares=(self.http_auth,),
            )
        return self._session

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
        # Before setup(), which hands the transport to zeep: ours carries HTTP auth.
        svc.transport = onvif.AsyncTransportProtocolErrorHandler(
            session=self._http_session(), verify_ssl=False, cache=None
        )
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

    async def optional_uri(self, svc: Any, op: str, params: dict[str, object]) -> str | None:
        """A Media URI; None when the device faults for this profile (login errors still raise)."""
        try:
            return attr_text(await self.call(svc, op, params), "Uri") or None
        except CameraProtocolError as exc:
            log.info("%s: %s", self.where, exc)
            return None

    async def close(self) -> None:
        try:
            for svc in self._services:
                await svc.close()
        finally:
            if self._session is not None:
                await self._session.close()


def attr(obj: object, *path: str) -> object:
    """Walk attributes of a zeep result; None where any step is missing."""
    for name in path:
        if obj is None:
            return None
        try:
            obj = getattr(obj, name)
        except (AttributeError, KeyError):
            return None
    return obj


def attr_text(obj: object, *path: str) -> str | None:
    value = attr(obj, *path)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value).strip()
    return None


def as_list(obj: object) -> list[object]:
    if obj is None:
        return []
    if isinstance(obj, list | tuple):
        return list(obj)
    return [obj]
