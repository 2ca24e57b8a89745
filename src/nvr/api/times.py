"""RFC 3339 times at the API edge <-> integer 90 kHz wall time inside.

Times in must carry an explicit offset (``2026-11-28T21:00:00+07:00`` or ``...Z``): a time
without one is ambiguous across a province's sites and is refused. Times out are written with
the offset the caller used, so an officer in UTC+7 reads UTC+7 back.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache

TICKS_PER_S = 90_000

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


class TimeFormatError(ValueError):
    """A time parameter that is not RFC 3339 with an explicit offset."""


def parse_rfc3339(text: str, name: str) -> tuple[int, timezone]:
    """``(wall_90k, offset)``; TimeFormatError names the parameter and the value."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise TimeFormatError(
            f"{name}={text!r} is not an RFC 3339 time with an offset, "
            "e.g. 2026-11-28T21:00:00+07:00"
        )
    fraction = match.group(1) or ""
    base = text.strip()[: match.start(1)] if fraction else text.strip()[: match.start(2)]
    zone = match.group(2)
    try:
        whole = datetime.fromisoformat(base.replace("t", "T").replace(" ", "T"))
    except ValueError as exc:
        raise TimeFormatError(f"{name}={text!r}: {exc}") from None
    if zone in ("Z", "z"):
        tz = UTC
    else:
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise TimeFormatError(f"{name}={text!r}: the offset {zone} is out of range")
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    moment = whole.replace(tzinfo=tz)
    try:
        moment.astimezone(UTC)  # it must be writable in UTC too (years 1 to 9999)
    except OverflowError:
        raise TimeFormatError(f"{name}={text!r} is out of range") from None
    seconds = int(moment.timestamp())
    nanos = int((fraction[1:] + "000000000")[:9]) if fraction else 0
    return seconds * TICKS_PER_S + nanos * 9 // 100_000, tz


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_S = 86_400


@lru_cache(maxsize=64)
def _zone(tz: timezone) -> tuple[int, str]:
    """The zone's fixed offset in seconds, and how it is written."""
    offset = tz.utcoffset(None)
    total_min = int(offset.total_seconds()) // 60
    if total_min == 0:
        return 0, "Z"
    sign = "+" if total_min >= 0 else "-"
    hours, minutes = divmod(abs(total_min), 60)
    return total_min * 60, f"{sign}{hours:02d}:{minutes:02d}"


@lru_cache(maxsize=512)
def _day_text(days_since_epoch: int) -> str:
    day = date.fromordinal(days_since_epoch + _EPOCH_ORDINAL)  # ValueError outside years 1-9999
    # Not strftime: its %Y does not pad years below 1000 to four digits on every platform.
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}T"


def format_rfc3339(wall_90k: int, tz: timezone = UTC) -> str:
    """Millisecond precision, in ``tz``, with its offset (``Z`` for UTC).

    Integer arithmetic below the day, and the day's text cached: a 1-day timeline writes
    about 2,900 of these (datetime for each was half of that request's handler time)."""
    offset_s, suffix = _zone(tz)
    seconds, ticks = divmod(wall_90k, TICKS_PER_S)
    days, second_of_day = divmod(seconds + offset_s, _DAY_S)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    millis = ticks * 1000 // TICKS_PER_S
    return f"{_day_text(days)}{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}{suffix}"
