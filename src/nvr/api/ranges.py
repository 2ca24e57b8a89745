"""HTTP byte ranges (RFC 9110 §14) for one representation of known size, sans-IO."""

from __future__ import annotations

import re

_SPEC = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


class UnsatisfiableRange(ValueError):
    """No byte of the asked ranges exists: the answer is 416."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range, or None for the whole representation.

    A header we don't honour (another unit, several ranges, a malformed spec) is ignored, as
    the RFC allows: the whole representation is sent with 200.
    """
    if header is None:
        return None
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in specs:
        return None
    m = _SPEC.fullmatch(specs)
    if m is None or not (m[1] or m[2]):
        return None
    if not m[1]:  # suffix: the last N bytes
        n = int(m[2])
        if n == 0:
            raise UnsatisfiableRange(f"bytes=-0 of {size}")
        return max(0, size - n), size
    start = int(m[1])
    if m[2] and int(m[2]) < start:
        return None  # last-byte-pos before first-byte-pos: invalid, ignored
    if start >= size:
        raise UnsatisfiableRange(f"bytes={start}- of {size}")
    end = int(m[2]) + 1 if m[2] else size
    return start, min(end, size)
