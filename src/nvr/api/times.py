"""RFC 3339 times at the API edge <-> integer 90 kHz wall time inside.

Times in must carry an explicit offset (``2026-11-28T21:00:00+07:00`` or ``...Z``): a time
without one is ambiguous across a province's sites and is refused. Times out are written with
the offset the caller used, so an officer in UTC+7 reads UTC+7 back.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

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


def format_rfc3339(wall_90k: int, tz: timezone = UTC) -> str:
    """Millisecond precision, in ``tz``, with its offset (``Z`` for UTC)."""
    seconds, ticks = divmod(wall_90k, TICKS_PER_S)
    millis = ticks * 1000 // TICKS_PER_S
    moment = datetime.fromtimestamp(seconds, tz)
    # Not strftime: its %Y does not pad years below 1000 to four digits on every platform.
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{millis:03d}")  # fmt: skip
    offset = moment.utcoffset() or timedelta(0)
    if offset == timedelta(0):
        return text + "Z"
    total_min = int(offset.total_seconds()) // 60
    sign = "+" if total_min >= 0 else "-"
    hours, minutes = divmod(abs(total_min), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"
