"""The two framings of H.264/H.265 NAL units: Annex B start codes and MP4 length prefixes.

The depacketizers hand the segmenter Annex B access units; an MP4 sample holds the same NAL
units, each behind a 4-byte big-endian length (``avcC``/``hvcC`` with lengthSizeMinusOne 3).
Sans-IO; malformed input raises ``Mp4FormatError``.
"""

from __future__ import annotations

from collections.abc import Sequence

from nvr.storage.mp4box import Mp4FormatError


def annexb_nal_units(data: bytes) -> list[bytes]:
    """Split an Annex B byte string at its start codes.

    A NAL unit never ends in a zero byte and never contains ``00 00 00``/``00 00 01``
    (emulation prevention), so the split is exact: zeros before a start code are the
    start code's leading zero or trailing padding, never NAL bytes. Bytes before the
    first start code are not a NAL unit and are rejected.
    """
    units: list[bytes] = []
    pos = data.find(b"\x00\x00\x01")
    if pos < 0 or data[:pos].strip(b"\x00"):
        raise Mp4FormatError(f"not Annex B: no start code at the beginning ({data[:8].hex()})")
    start = pos + 3
    while True:
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        nal = data[start:end].rstrip(b"\x00")
        if nal:
            units.append(nal)
        if nxt < 0:
            return units
        start = nxt + 3


def annexb_to_sample(data: bytes) -> bytes:
    """Annex B access unit to an MP4 sample: every NAL unit, 4-byte length prefixed."""
    return nal_units_to_sample(annexb_nal_units(data))


def sample_nal_units(sample: bytes, length_size: int = 4) -> list[bytes]:
    """An MP4 sample (length-prefixed NAL units) back to its NAL units."""
    units: list[bytes] = []
    pos = 0
    while pos < len(sample):
        if pos + length_size > len(sample):
            raise Mp4FormatError(f"sample truncated in a NAL length at +{pos}")
        size = int.from_bytes(sample[pos : pos + length_size], "big")
        pos += length_size
        if pos + size > len(sample):
            raise Mp4FormatError(f"NAL unit of {size} bytes at +{pos} overruns the sample")
        units.append(sample[pos : pos + size])
        pos += size
    return units


def nal_units_to_sample(nal_units: Sequence[bytes]) -> bytes:
    """NAL units as one MP4 sample: each prefixed with its 4-byte big-endian length."""
    return b"".join(len(nal).to_bytes(4, "big") + nal for nal in nal_units)
