"""The device's clock, as ONVIF ``GetSystemDateAndTime`` tells it: whole seconds, made finer.

``device_utc_floor_ns`` reads one answer (UTC, or local time and a POSIX zone); ``ClockBracket``
is the sans-IO part that turns whole-second readings into a sub-second offset; ``measure_clock``
asks the device (without a login) until the offset is pinned down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from nvr.clock import Clock
from nvr.errors import CameraProtocolError
from nvr.ingest.onvif_soap import NS, SECOND_NS, SoapClient, text

log = logging.getLogger(__name__)

_CLOCK_GOAL_NS = 200_000_000  # stop refining once the offset is pinned to ±100 ms


@dataclass(frozen=True, slots=True)
class ClockReading:
    device_utc_ns: int  # the device's UTC clock at the moment of the (last) reading
    offset_ns: int  # device minus NVR wall clock, corrected by half the round trip
    round_trip_ns: int  # the shortest request/answer round trip seen


def _date_time_ns(el: ET.Element, where: str) -> int:
    fields = [
        text(el, f"tt:{p}")
        for p in ("Date/tt:Year", "Date/tt:Month", "Date/tt:Day",
                  "Time/tt:Hour", "Time/tt:Minute", "Time/tt:Second")
    ]  # fmt: skip
    try:
        y, mo, d, h, mi, s = (int(f or "") for f in fields)
        day = dt.datetime(y, mo, d, tzinfo=dt.UTC)
    except ValueError as exc:
        raise CameraProtocolError(f"{where} sent an impossible date/time {fields}") from exc
    if not (0 <= h <= 24 and 0 <= mi <= 59 and 0 <= s <= 60):
        raise CameraProtocolError(f"{where} sent an impossible time of day {fields}")
    # Added as seconds, so a leap second (ss = 60) does not make the reading fail.
    return (int(day.timestamp()) + h * 3600 + mi * 60 + s) * SECOND_NS


_POSIX_TZ = re.compile(
    r"^(?:<[^>]*>|[A-Za-z]{3,})(?P<sign>[+-]?)(?P<h>\d{1,2})(?::(?P<m>\d{1,2}))?(?::\d{1,2})?"
    r"(?P<dst>(?:<[^>]*>|[A-Za-z]{3,})(?P<dsign>[+-]?)(?P<dh>\d{1,2})?(?::(?P<dm>\d{1,2}))?)?"
)


def posix_tz_west_ns(tz: str, daylight: bool) -> int:
    """How far behind UTC a POSIX TZ string puts local time (``CET-1CEST`` -> -1 h).

    Best effort, for devices that give only their local time: an unreadable zone counts as UTC.
    """
    m = _POSIX_TZ.match(tz.strip())
    if m is None:
        return 0
    west_s = int(m["h"]) * 3600 + int(m["m"] or 0) * 60
    west_s = -west_s if m["sign"] == "-" else west_s
    if daylight and m["dst"]:
        if m["dh"] is not None:
            dst_s = int(m["dh"]) * 3600 + int(m["dm"] or 0) * 60
            west_s = -dst_s if m["dsign"] == "-" else dst_s
        else:
            west_s -= 3600  # the POSIX default: summer time is an hour ahead
    return west_s * SECOND_NS


def device_utc_floor_ns(resp: ET.Element, where: str) -> int:
    """The device's UTC time (whole seconds) from a GetSystemDateAndTimeResponse."""
    sdt = resp.find("tds:SystemDateAndTime", NS)
    if sdt is None:
        raise CameraProtocolError(f"{where} sent no SystemDateAndTime")
    utc = sdt.find("tt:UTCDateTime", NS)
    if utc is not None:
        return _date_time_ns(utc, where)
    local = sdt.find("tt:LocalDateTime", NS)
    if local is None:
        raise CameraProtocolError(f"{where} sent neither UTCDateTime nor LocalDateTime")
    daylight = (text(sdt, "tt:DaylightSavings") or "").lower() == "true"
    tz = text(sdt, "tt:TimeZone/tt:TZ") or ""
    return _date_time_ns(local, where) + posix_tz_west_ns(tz, daylight)


class ClockBracket:
    """Bounds on a device clock's offset from readings that tell whole seconds only.

    A device reading ``F`` (seconds, floored) answered between our wall times ``send`` and
    ``recv`` proves ``F - recv <= offset < F + 1 s - send``. ``delay_ns`` says when to send the
    next request so that, were the offset the middle of the bounds, the device's seconds would
    tick over just as it reads its clock: whichever second it reports halves the bounds.
    """

    def __init__(self, device_floor_ns: int, send_ns: int, recv_ns: int) -> None:
        self.lo_ns = device_floor_ns - recv_ns
        self.hi_ns = device_floor_ns + SECOND_NS - send_ns
        self.round_trip_ns = recv_ns - send_ns
        self.last_mid_ns = (send_ns + recv_ns) // 2

    @property
    def width_ns(self) -> int:
        return self.hi_ns - self.lo_ns

    @property
    def offset_ns(self) -> int:
        return (self.lo_ns + self.hi_ns) // 2

    def delay_ns(self, now_ns: int) -> int:
        return (-(now_ns + self.round_trip_ns // 2 + self.offset_ns)) % SECOND_NS

    def add(self, device_floor_ns: int, send_ns: int, recv_ns: int) -> bool:
        """Narrow the bounds; False (and nothing changed) when the reading contradicts them."""
        lo = max(self.lo_ns, device_floor_ns - recv_ns)
        hi = min(self.hi_ns, device_floor_ns + SECOND_NS - send_ns)
        if lo > hi:
            return False  # the device's clock stepped, or it answered from a stale clock
        self.lo_ns, self.hi_ns = lo, hi
        self.round_trip_ns = min(self.round_trip_ns, recv_ns - send_ns)
        self.last_mid_ns = (send_ns + recv_ns) // 2
        return True


async def measure_clock(soap: SoapClient, clock: Clock, refine_steps: int) -> ClockReading:
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
