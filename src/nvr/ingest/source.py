"""Where a camera's stream comes from: a fixed RTSP URL, or an ONVIF device asked for it.

An ONVIF camera is recorded by identity. Its stream URI is resolved at start and again after
repeated RTSP failures; a private host in the URIs it returns is replaced by the host we reach
it at (cameras behind NAT); and when it stops answering at its address, WS-Discovery looks for
the same serial number (or MAC) elsewhere and the recorder follows it there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from nvr.clock import Clock
from nvr.config import CameraConfig
from nvr.errors import CameraConnectError, CameraError, CameraProtocolError, NvrError
from nvr.ingest.discovery import probe
from nvr.ingest.onvif import (
    DeviceIdentity,
    DeviceReadout,
    pick_profile,
    read_clock,
    read_device,
    rewrite_private_host,
)
from nvr.redact import redact_url

log = logging.getLogger(__name__)

RESOLVE_AFTER_FAILURES = 3  # consecutive RTSP failures before the stream URI is asked again


class CameraMovedError(CameraError):
    """The ONVIF camera now answers at another address; the session restarts there."""


class StreamSource(Protocol):
    async def stream_url(self) -> str:
        """The RTSP URL for the next session (may ask the camera)."""
        ...

    def session_ended(self, *, streamed: bool) -> None:
        """How the last session went: re-resolution after repeated failures hangs on this."""
        ...

    async def watch(self) -> None:
        """Runs beside a session; raises CameraMovedError when the camera moved."""
        ...

    @property
    def clock_offset_ns(self) -> int | None: ...


class FixedSource:
    def __init__(self, url: str) -> None:
        self._url = url

    async def stream_url(self) -> str:
        return self._url

    def session_ended(self, *, streamed: bool) -> None:
        pass

    async def watch(self) -> None:
        await asyncio.Event().wait()

    @property
    def clock_offset_ns(self) -> int | None:
        return None


@dataclass(frozen=True, slots=True)
class Identity:
    serial: str
    mac: str | None

    @classmethod
    def of(cls, ident: DeviceIdentity) -> Identity:
        return cls(ident.serial, ident.mac.lower() if ident.mac else None)

    def matches(self, other: DeviceIdentity) -> bool:
        if self.serial and other.serial:
            return self.serial == other.serial
        return self.mac is not None and other.mac is not None and self.mac == other.mac.lower()


def device_service_url(address: str) -> str:
    """``http://host[:port]`` -> ``http://host[:port]/onvif/device_service``; a path is kept."""
    parts = urlsplit(address)
    path = parts.path if parts.path not in ("", "/") else "/onvif/device_service"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class OnvifSource:
    def __init__(
        self,
        cfg: CameraConfig,
        clock: Clock,
        *,
        on_identity: Callable[[DeviceIdentity], Awaitable[None]] | None = None,
    ) -> None:
        assert cfg.onvif is not None
        self.cfg = cfg
        self._clock = clock
        self.device_url = device_service_url(cfg.onvif)
        self._on_identity = on_identity
        self._identity: Identity | None = None
        self._stream_uri: str | None = None
        self._failures = 0
        self._clock_offset_ns: int | None = None

    @property
    def clock_offset_ns(self) -> int | None:
        return self._clock_offset_ns

    async def stream_url(self) -> str:
        if self._stream_uri is None or self._failures >= RESOLVE_AFTER_FAILURES:
            await self._resolve()
        assert self._stream_uri is not None
        return self._stream_uri

    def session_ended(self, *, streamed: bool) -> None:
        self._failures = 0 if streamed else self._failures + 1

    async def watch(self) -> None:
        """Check the device every ``onvif_check_s``; its clock offset is refreshed each time."""
        while True:
            await self._clock.sleep(self.cfg.onvif_check_s)
            try:
                reading = await read_clock(self.device_url, timeout_s=self.cfg.connect_timeout_s,
                                           clock=self._clock)  # fmt: skip
            except CameraConnectError as exc:
                log.warning("camera=%s ONVIF device %s does not answer (%s); looking for it",
                            self.cfg.id, self.device_url, exc)  # fmt: skip
                old = self.device_url
                if await self._rediscover():
                    self._stream_uri = None
                    raise CameraMovedError(
                        f"camera moved from {old} to {self.device_url}"
                    ) from None
                continue
            except CameraError as exc:  # answering, but oddly: keep recording, say so
                log.warning("camera=%s ONVIF clock check failed: %s", self.cfg.id, exc)
                continue
            self._clock_offset_ns = reading.offset_ns

    async def _resolve(self) -> None:
        user, password = self.cfg.credentials()
        try:
            readout = await self._read(user, password)
        except CameraConnectError:
            if self._identity is None or not await self._rediscover():
                raise
            readout = await self._read(user, password)
        if self._accept(readout) and self._on_identity is not None:
            await self._on_identity(readout.identity)

    async def _read(self, user: str | None, password: str | None) -> DeviceReadout:
        return await read_device(self.device_url, user or "", password or "",
                                 timeout_s=self.cfg.connect_timeout_s,
                                 clock=self._clock)  # fmt: skip

    def _accept(self, readout: DeviceReadout) -> bool:
        """Take a read-out's stream URI and clock; True the first time a device is seen."""
        ident = readout.identity
        if self._identity is not None and not self._identity.matches(ident):
            raise CameraProtocolError(
                f"{self.device_url} is now a different device (serial {ident.serial!r}, "
                f"expected {self._identity.serial!r}); not recording it as {self.cfg.id}"
            )
        first = self._identity is None
        self._identity = Identity.of(ident)
        profile = pick_profile(readout.profiles, self.cfg.profile)
        if profile.stream_uri is None:
            raise CameraProtocolError(f"{self.device_url}: profile {profile.token!r} has no "
                                      "RTSP stream URI")  # fmt: skip
        host = urlsplit(self.device_url).hostname or ""
        uri = rewrite_private_host(profile.stream_uri, host)
        if uri != self._stream_uri:
            log.info("camera=%s stream %s (profile %s, %s %sx%s)", self.cfg.id, redact_url(uri),
                     profile.token, profile.codec, profile.width, profile.height)  # fmt: skip
        self._stream_uri = uri
        self._failures = 0
        if readout.clock is not None:
            self._clock_offset_ns = readout.clock.offset_ns
        if first:
            log.info("camera=%s is %s %s, serial %s, MAC %s, firmware %s", self.cfg.id,
                     ident.manufacturer, ident.model, ident.serial, ident.mac,
                     ident.firmware)  # fmt: skip
        return first

    async def _rediscover(self) -> bool:
        """Look for the same device by WS-Discovery; True when found at a new address."""
        if self._identity is None:
            return False
        user, password = self.cfg.credentials()
        try:
            matches = await probe(multicast=self.cfg.discovery_multicast,
                                  targets=self.cfg.discovery_targets,
                                  timeout_s=min(5.0, self.cfg.connect_timeout_s))  # fmt: skip
        except NvrError as exc:
            log.warning("camera=%s re-discovery failed: %s", self.cfg.id, exc)
            return False
        for match in matches:
            for xaddr in match.xaddrs:
                if xaddr == self.device_url:
                    continue
                try:
                    readout = await read_device(xaddr, user or "", password or "",
                                                timeout_s=self.cfg.connect_timeout_s,
                                                clock=self._clock)  # fmt: skip
                except CameraError:
                    continue
                if self._identity.matches(readout.identity):
                    log.warning("camera=%s moved: ONVIF device %s now answers at %s",
                                self.cfg.id, self.device_url, xaddr)  # fmt: skip
                    self.device_url = xaddr
                    self._accept(readout)
                    return True
        return False
