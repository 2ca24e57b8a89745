"""Annex B and length-prefixed NAL framing, on hand-built bytes."""

from __future__ import annotations

import pytest

from nvr.storage.mp4box import Mp4FormatError
from nvr.storage.nal_framing import annexb_nal_units, annexb_to_sample, sample_nal_units


def test_annexb_and_sample_round_trip() -> None:
    nals = [
        b"\x09\xf0",
        b"\x67\x42\x00\x1e",
        b"\x68\xce",
        b"\x06\x05\x01\x80",
        b"\x65\x88\x00\x00\x03\x01\xff",
    ]
    annexb = b"".join((b"\0\0\0\x01" if i % 2 else b"\0\0\x01") + n for i, n in enumerate(nals))
    assert annexb_nal_units(annexb) == nals
    sample = annexb_to_sample(annexb)
    assert sample_nal_units(sample) == nals
    assert len(sample) == sum(4 + len(n) for n in nals)
    with pytest.raises(Mp4FormatError, match="not Annex B"):
        annexb_nal_units(b"\x65\x88")
