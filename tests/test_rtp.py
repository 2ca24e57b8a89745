"""RTP header parsing and sequence tracking, on bytes alone."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvr.errors import DepacketizeError
from nvr.ingest.rtp import SeqKind, SeqStep, SequenceTracker, hexdump, parse_rtp
from nvr.media import RtpPacket


def header(
    *,
    version: int = 2,
    padding: bool = False,
    extension: bool = False,
    csrcs: int = 0,
    marker: bool = False,
    payload_type: int = 96,
    sequence: int = 1000,
    timestamp: int = 90000,
    ssrc: int = 0xDEADBEEF,
) -> bytes:
    first = (version << 6) | (0x20 if padding else 0) | (0x10 if extension else 0) | csrcs
    second = (0x80 if marker else 0) | payload_type
    return struct.pack("!BBHII", first, second, sequence, timestamp, ssrc)


def test_plain_packet() -> None:
    packet = parse_rtp(header(marker=True, payload_type=97) + b"\x65\x88")
    assert packet == RtpPacket(
        payload_type=97,
        marker=True,
        sequence=1000,
        timestamp=90000,
        ssrc=0xDEADBEEF,
        payload=b"\x65\x88",
    )


def test_csrcs_extension_and_padding_are_skipped() -> None:
    csrcs = b"\x00\x00\x00\x01\x00\x00\x00\x02"
    extension = b"\xbe\xde\x00\x02" + b"\x11" * 8
    data = header(csrcs=2, extension=True, padding=True) + csrcs + extension
    packet = parse_rtp(data + b"\x67\x42" + b"\x00\x00\x03")
    assert packet.payload == b"\x67\x42"


def test_empty_payload_is_allowed() -> None:
    assert parse_rtp(header()).payload == b""


def test_too_short() -> None:
    with pytest.raises(DepacketizeError) as info:
        parse_rtp(b"\x80\x60\x00")
    assert str(info.value) == (
        "RTP packet too short: 3 bytes, the fixed header needs 12 (bytes: 80 60 00)"
    )


def test_wrong_version() -> None:
    with pytest.raises(DepacketizeError) as info:
        parse_rtp(header(version=1) + b"\x01")
    assert str(info.value) == (
        "RTP version 1, expected 2 (13 bytes: 40 60 03 e8 00 01 5f 90 de ad be ef 01)"
    )


def test_csrc_list_overruns() -> None:
    with pytest.raises(DepacketizeError) as info:
        parse_rtp(header(csrcs=3) + b"\x00" * 8)
    assert str(info.value) == (
        "RTP packet seq=1000: 3 CSRCs need 24 header bytes, packet has 20 "
        "(83 60 03 e8 00 01 5f 90 de ad be ef 00 00 00 00 ...)"
    )


def test_extension_header_missing() -> None:
    with pytest.raises(DepacketizeError) as info:
        parse_rtp(header(extension=True) + b"\xbe\xde")
    assert str(info.value) == (
        "RTP packet seq=1000: header extension flag set but only 2 bytes follow the "
        "CSRC list (90 60 03 e8 00 01 5f 90 de ad be ef be de)"
    )


def test_extension_overruns() -> None:
    with pytest.raises(DepacketizeError) as info:
        parse_rtp(header(extension=True) + b"\xbe\xde\x00\x04" + b"\x00" * 4)
    assert str(info.value) == (
        "RTP packet seq=1000: header extension of 4 words needs 32 bytes, packet has 20 "
        "(90 60 03 e8 00 01 5f 90 de ad be ef be de 00 04 ...)"
    )


def test_padding_without_payload() -> None:
    with pytest.raises(DepacketizeError) as info:
        parse_rtp(header(padding=True))
    assert str(info.value) == (
        "RTP packet seq=1000: padding flag set but the packet ends after the header "
        "(12 bytes: a0 60 03 e8 00 01 5f 90 de ad be ef)"
    )


@pytest.mark.parametrize("count", [0, 4])
def test_bad_padding_count(count: int) -> None:
    with pytest.raises(DepacketizeError) as info:
        parse_rtp(header(padding=True) + b"\x00\x00" + bytes([count]))
    assert str(info.value) == (
        f"RTP packet seq=1000: padding count {count} does not fit the 3 bytes after the "
        f"header (a0 60 03 e8 00 01 5f 90 de ad be ef 00 00 0{count})"
    )


@given(st.binary(max_size=40))
def test_parse_never_crashes(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except DepacketizeError:
        return
    assert len(packet.payload) <= len(data) - 12


def test_hexdump_limits_length() -> None:
    assert hexdump(b"\x01\x02") == "01 02"
    assert hexdump(bytes(range(20))) == "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f ..."


def classify_all(numbers: list[int]) -> list[SeqStep]:
    tracker = SequenceTracker()
    return [tracker.classify(number) for number in numbers]


def test_sequence_in_order_across_wrap() -> None:
    steps = classify_all([65534, 65535, 0, 1])
    assert [step.kind for step in steps] == [SeqKind.FIRST] + [SeqKind.NEXT] * 3


def test_sequence_gap_counts_lost_across_wrap() -> None:
    assert classify_all([65533, 2])[1] == SeqStep(SeqKind.GAP, lost=4)


def test_sequence_duplicate_and_old() -> None:
    steps = classify_all([10, 10, 12, 11, 13])
    assert [step.kind for step in steps] == [
        SeqKind.FIRST,
        SeqKind.DUPLICATE,
        SeqKind.GAP,
        SeqKind.OLD,
        SeqKind.NEXT,
    ]
    assert [step.kind.accepted for step in steps] == [True, False, True, False, True]


def test_sequence_far_jump_needs_confirmation() -> None:
    steps = classify_all([100, 40000, 101, 40000, 40001, 40002])
    assert [step.kind for step in steps] == [
        SeqKind.FIRST,
        SeqKind.JUMP,  # not believed yet
        SeqKind.NEXT,
        SeqKind.JUMP,
        SeqKind.RESYNC,  # its successor confirms the jump
        SeqKind.NEXT,
    ]


def test_ssrc_change_is_a_resync() -> None:
    tracker = SequenceTracker()

    def packet(sequence: int, ssrc: int) -> RtpPacket:
        return RtpPacket(96, False, sequence, 0, ssrc, b"")

    assert tracker.check(packet(5, 1)).kind is SeqKind.FIRST
    assert tracker.check(packet(9000, 2)).kind is SeqKind.RESYNC
    assert tracker.check(packet(9001, 2)).kind is SeqKind.NEXT
