"""The device-clock arithmetic, on numbers and SOAP answers alone."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvr.errors import CameraProtocolError
from nvr.ingest.onvif_clock import ClockBracket, device_utc_floor_ns, posix_tz_west_ns
from nvr.ingest.onvif_soap import SECOND_NS, envelope, parse_reply

WHERE = "ONVIF device http://192.0.2.1/onvif/device_service"
T0_NS = 1_767_225_600 * SECOND_NS  # 2026-01-01T00:00:00Z


def _floor(device_ns: int) -> int:
    return device_ns - device_ns % SECOND_NS


@given(
    offset_ns=st.integers(-(10**13), 10**13),
    start_ns=st.integers(0, 10 * SECOND_NS),
    rtt_ns=st.integers(0, 20_000_000),
)
def test_clock_bracket_narrows_to_the_true_offset(
    offset_ns: int, start_ns: int, rtt_ns: int
) -> None:
    """A simulated device that floors its clock to whole seconds and stamps mid-request."""

    def reading(send_ns: int) -> tuple[int, int, int]:
        recv_ns = send_ns + rtt_ns
        return _floor((send_ns + recv_ns) // 2 + offset_ns), send_ns, recv_ns

    now = T0_NS + start_ns
    bracket = ClockBracket(*reading(now))
    assert bracket.lo_ns <= offset_ns <= bracket.hi_ns
    now += rtt_ns
    for _ in range(3):
        now += bracket.delay_ns(now)
        assert bracket.add(*reading(now))
        assert bracket.lo_ns <= offset_ns <= bracket.hi_ns
        now += rtt_ns
    # Each timed reading halves the bracket (plus the round trip): 1 s / 8 after three.
    assert bracket.width_ns <= SECOND_NS // 8 + 2 * rtt_ns + 3
    assert abs(bracket.offset_ns - offset_ns) <= SECOND_NS // 16 + rtt_ns + 2
    assert bracket.round_trip_ns == rtt_ns


def test_clock_bracket_refuses_a_contradicting_reading() -> None:
    bracket = ClockBracket(T0_NS + 5 * SECOND_NS, T0_NS, T0_NS + 1_000_000)
    lo, hi = bracket.lo_ns, bracket.hi_ns
    # The device's clock jumped back a minute between two readings.
    assert not bracket.add(T0_NS - 55 * SECOND_NS, T0_NS + SECOND_NS, T0_NS + SECOND_NS + 10)
    assert (bracket.lo_ns, bracket.hi_ns) == (lo, hi)


def _sdt(inner: str) -> ET.Element:
    xml = envelope(
        f"<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>{inner}"
        "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
    )
    return parse_reply(WHERE, "GetSystemDateAndTime", 200, xml)


def _dt(tag: str, y: int, mo: int, d: int, h: int, mi: int, s: int) -> str:
    return (
        f"<tt:{tag}><tt:Time><tt:Hour>{h}</tt:Hour><tt:Minute>{mi}</tt:Minute>"
        f"<tt:Second>{s}</tt:Second></tt:Time><tt:Date><tt:Year>{y}</tt:Year>"
        f"<tt:Month>{mo}</tt:Month><tt:Day>{d}</tt:Day></tt:Date></tt:{tag}>"
    )


def test_device_time_prefers_utc() -> None:
    resp = _sdt(
        "<tt:TimeZone><tt:TZ>CST-8</tt:TZ></tt:TimeZone>"
        + _dt("UTCDateTime", 2026, 1, 1, 0, 0, 7)
        + _dt("LocalDateTime", 2026, 1, 1, 8, 0, 7)
    )
    assert device_utc_floor_ns(resp, WHERE) == T0_NS + 7 * SECOND_NS


@pytest.mark.parametrize(
    ("tz", "dst", "local_hour", "utc_hour"),
    [
        ("CST-8", False, 8, 0),  # China: local is UTC+8
        ("EST5EDT,M3.2.0,M11.1.0", False, 19, 0),
        ("EST5EDT,M3.2.0,M11.1.0", True, 20, 0),  # summer time: an hour further ahead
        ("<+0530>-5:30", False, 5, 0),  # India, with the minutes: local 05:30
        ("GMT0BST", True, 1, 0),
        ("nonsense", False, 0, 0),  # unreadable: taken as UTC
    ],
)
def test_device_time_from_local_time_and_zone(
    tz: str, dst: bool, local_hour: int, utc_hour: int
) -> None:
    day = 31 if local_hour >= 12 else 1
    month, year = (12, 2025) if day == 31 else (1, 2026)
    minute = 30 if tz.startswith("<+0530>") else 0
    resp = _sdt(
        f"<tt:DaylightSavings>{str(dst).lower()}</tt:DaylightSavings>"
        f"<tt:TimeZone><tt:TZ>{escape(tz)}</tt:TZ></tt:TimeZone>"
        + _dt("LocalDateTime", year, month, day, local_hour, minute, 0)
    )
    assert device_utc_floor_ns(resp, WHERE) == T0_NS + utc_hour * 3600 * SECOND_NS


def test_posix_tz_offsets() -> None:
    assert posix_tz_west_ns("UTC0", False) == 0
    assert posix_tz_west_ns("CET-1CEST,M3.5.0,M10.5.0/3", True) == -2 * 3600 * SECOND_NS
    assert posix_tz_west_ns("NZST-12NZDT-13", True) == -13 * 3600 * SECOND_NS


def test_impossible_device_time_is_a_protocol_error() -> None:
    with pytest.raises(CameraProtocolError, match="impossible"):
        device_utc_floor_ns(_sdt(_dt("UTCDateTime", 2026, 13, 1, 0, 0, 0)), WHERE)
    with pytest.raises(CameraProtocolError, match="neither"):
        device_utc_floor_ns(_sdt("<tt:DateTimeType>NTP</tt:DateTimeType>"), WHERE)
