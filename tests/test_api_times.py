"""RFC 3339 at the API edge, to and from integer 90 kHz time."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

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
