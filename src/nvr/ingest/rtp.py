"""RTP header parsing (RFC 3550) and sequence-number bookkeeping, without I/O.

``parse_rtp`` turns one datagram (or one RFC 4571 / interleaved frame) into an
``RtpPacket``; ``SequenceTracker`` tells the depacketizers whether a packet is the
next one, a duplicate, an old (reordered) one, or follows lost packets.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from nvr.errors import DepacketizeError
from nvr.media import RtpPacket

RTP_HEADER_LEN = 12
RTP_VERSION = 2
HEXDUMP_BYTES = 16

_SEQ_MOD = 1 << 16
# RFC 3550 appendix A.1: a forward jump up to MAX_DROPOUT is loss, a step back up to
# MAX_MISORDER is a late (reordered or duplicated) packet; anything else is a jump of
# the sender's sequence that is believed only when the next packet confirms it.
MAX_DROPOUT = 3000
MAX_MISORDER = 100

_FIXED_HEADER = struct.Struct("!BBHII")


def hexdump(data: bytes, limit: int = HEXDUMP_BYTES) -> str:
    """The first ``limit`` bytes as spaced hex, with ``...`` when there is more."""
    head = data[:limit].hex(" ")
    return f"{head} ..." if len(data) > limit else head


def parse_rtp(data: bytes) -> RtpPacket:
    """Decode one RTP packet; raises ``DepacketizeError`` naming what is wrong."""
    size = len(data)
    if size < RTP_HEADER_LEN:
        raise DepacketizeError(
            f"RTP packet too short: {size} bytes, the fixed header needs 12 "
            f"(bytes: {hexdump(data)})"
        )
    first, second, sequence, timestamp, ssrc = _FIXED_HEADER.unpack_from(data)
    version = first >> 6
    if version != RTP_VERSION:
        raise DepacketizeError(f"RTP version {version}, expected 2 ({size} bytes: {hexdump(data)})")
    csrc_count = first & 0x0F
    offset = RTP_HEADER_LEN + 4 * csrc_count
    if offset > size:
        raise DepacketizeError(
            f"RTP packet seq={sequence}: {csrc_count} CSRCs need {offset} header bytes, "
            f"packet has {size} ({hexdump(data)})"
        )
    if first & 0x10:
        offset = _skip_extension(data, offset, sequence)
    end = size
    if first & 0x20:
        end = _strip_padding(data, offset, sequence)
    return RtpPacket(
        payload_type=second & 0x7F,
        marker=bool(second & 0x80),
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
    )


def _skip_extension(data: bytes, offset: int, sequence: int) -> int:
    size = len(data)
    if offset + 4 > size:
        raise DepacketizeError(
            f"RTP packet seq={sequence}: header extension flag set but only "
            f"{size - offset} bytes follow the CSRC list ({hexdump(data)})"
        )
    words = int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = offset + 4 + 4 * words
    if end > size:
        raise DepacketizeError(
            f"RTP packet seq={sequence}: header extension of {words} words needs "
            f"{end} bytes, packet has {size} ({hexdump(data)})"
        )
    return end


def _strip_padding(data: bytes, offset: int, sequence: int) -> int:
    size = len(data)
    if size == offset:
        raise DepacketizeError(
            f"RTP packet seq={sequence}: padding flag set but the packet ends after "
            f"the header ({size} bytes: {hexdump(data)})"
        )
    padding = data[-1]
    if padding == 0 or padding > size - offset:
        raise DepacketizeError(
            f"RTP packet seq={sequence}: padding count {padding} does not fit the "
            f"{size - offset} bytes after the header ({hexdump(data)})"
        )
    return size - padding


@dataclass(slots=True)
class DepacketizerStats:
    """Running counters of one depacketizer, read by metrics and logs."""

    packets: int = 0  # every packet pushed
    lost: int = 0  # sequence numbers that never arrived
    duplicates: int = 0  # packets repeating the previous sequence number, ignored
    reordered: int = 0  # packets older than the previous one (or an unconfirmed jump), dropped
    discarded: int = 0  # accepted packets thrown away while resynchronising
    dropped_units: int = 0  # complete units not emitted (no keyframe yet, no parameters)
    errors: int = 0  # malformed packets (each raised a DepacketizeError)
    units: int = 0  # access units or audio frames emitted

    def count_rejected(self, kind: SeqKind) -> None:
        if kind is SeqKind.DUPLICATE:
            self.duplicates += 1
        else:
            self.reordered += 1


class SeqKind(enum.Enum):
    FIRST = "first"  # the first packet seen (or the first after a sender change)
    NEXT = "next"  # exactly one after the previous accepted packet
    GAP = "gap"  # accepted, but ``lost`` packets are missing before it
    RESYNC = "resync"  # the sender jumped or changed SSRC; accepted, continuity unknown
    DUPLICATE = "duplicate"  # same number as the previous accepted packet: drop
    OLD = "old"  # behind the previous accepted packet (late or reordered): drop
    JUMP = "jump"  # a far jump not yet confirmed by its successor: drop

    @property
    def accepted(self) -> bool:
        return self in _ACCEPTED

    @property
    def continuous(self) -> bool:
        """True when nothing is known to be missing between the last packet and this one."""
        return self is SeqKind.NEXT


_ACCEPTED = frozenset({SeqKind.FIRST, SeqKind.NEXT, SeqKind.GAP, SeqKind.RESYNC})


@dataclass(frozen=True, slots=True)
class SeqStep:
    kind: SeqKind
    lost: int = 0  # packets known missing before this one (GAP only)


class SequenceTracker:
    """Classifies 16-bit RTP sequence numbers against the last accepted one, across wrap."""

    __slots__ = ("_last", "_probation", "_ssrc")

    def __init__(self) -> None:
        self._last: int | None = None
        self._ssrc: int | None = None
        self._probation: int | None = None  # the number that would confirm a far jump

    def check(self, packet: RtpPacket) -> SeqStep:
        """Classify ``packet``; a change of SSRC is a resync (the camera restarted)."""
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            self._ssrc = packet.ssrc
            self._last = packet.sequence
            self._probation = None
            return SeqStep(SeqKind.RESYNC)
        self._ssrc = packet.ssrc
        return self.classify(packet.sequence)

    def classify(self, sequence: int) -> SeqStep:
        last = self._last
        if last is None:
            self._last = sequence
            return SeqStep(SeqKind.FIRST)
        delta = (sequence - last) % _SEQ_MOD
        if delta == 0:
            return SeqStep(SeqKind.DUPLICATE)
        if delta < MAX_DROPOUT:
            self._last = sequence
            self._probation = None
            if delta == 1:
                return SeqStep(SeqKind.NEXT)
            return SeqStep(SeqKind.GAP, lost=delta - 1)
        if delta >= _SEQ_MOD - MAX_MISORDER:
            return SeqStep(SeqKind.OLD)
        if sequence == self._probation:
            self._last = sequence
            self._probation = None
            return SeqStep(SeqKind.RESYNC)
        self._probation = (sequence + 1) % _SEQ_MOD
        return SeqStep(SeqKind.JUMP)
