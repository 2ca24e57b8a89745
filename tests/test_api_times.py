"""RFC 3339 at the API edge, to and from integer 90 kHz time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvr.api.times import TimeFormatError, format_rfc3339, parse_rfc3339

ICT = timezone(timedelta(hours=7))


def test_offsets_and_fractions() -> None:
    local, tz = parse_rfc3339("2026-11-28T21:00:00+07:00", "start")
    utc, _ = parse_rfc3339("2026-11-28T14:00:00Z", "start")
    assert local == utc and tz == ICT
    frac, _ = parse_rfc3339("2026-11-28T14:00:00.5Z", "start")
    assert frac - utc == 45_000
    assert format_rfc3339(local, ICT) == "2026-11-28T21:00:00.000+07:00"
    assert format_rfc3339(frac) == "2026-11-28T14:00:00.500Z"


@pytest.mark.parametrize(
    "bad", ["2026-11-28T21:00:00", "2026-11-28", "yesterday", "2026-13-01T00:00:00Z", ""]
)
def test_times_without_an_offset_or_malformed_are_refused(bad: str) -> None:
    with pytest.raises(TimeFormatError, match="start="):
        parse_rfc3339(bad, "start")


@given(st.integers(0, 4_000_000_000 * 90_000), st.sampled_from([UTC, ICT]))
def test_round_trip_to_the_millisecond(wall_90k: int, tz: timezone) -> None:
    back, _ = parse_rfc3339(format_rfc3339(wall_90k, tz), "t")
    assert back == wall_90k - wall_90k % 90_000 + (wall_90k % 90_000) * 1000 // 90_000 * 90


_SECOND = 90_000
_YEAR_1 = -62_135_596_800 * _SECOND  # 0001-01-01T00:00:00Z
_YEAR_10000 = 253_402_300_800 * _SECOND  # 10000-01-01T00:00:00Z


@given(
    st.integers(_YEAR_1 + 2 * 86_400 * _SECOND, _YEAR_10000 - 2 * 86_400 * _SECOND - 1),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)
def test_formatting_agrees_with_datetime(wall_90k: int, offset_min: int) -> None:
    """The integer formatting gives what datetime gives, over years 1-9999 and every offset."""
    tz = timezone(timedelta(minutes=offset_min))
    seconds, ticks = divmod(wall_90k, _SECOND)
    moment = datetime.fromtimestamp(0, UTC) + timedelta(seconds=seconds)
    local = moment.astimezone(tz)
    expected = (f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:"
                f"{local.minute:02d}:{local.second:02d}.{ticks * 1000 // _SECOND:03d}")  # fmt: skip
    if offset_min == 0:
        expected += "Z"
    else:
        sign, h_m = ("+" if offset_min > 0 else "-"), divmod(abs(offset_min), 60)
        expected += f"{sign}{h_m[0]:02d}:{h_m[1]:02d}"
    assert format_rfc3339(wall_90k, tz) == expected
