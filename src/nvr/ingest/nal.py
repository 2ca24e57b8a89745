"""What the H.264 and H.265 depacketizers share: bit reading, sprop decoding, and the
access-unit assembly state machine.

The two RFCs (6184 and 7798) differ in header sizes and type numbers, not in how a
receiver turns packets into pictures, so each codec supplies a small ``NalSyntax``
(its header sizes and payload type numbers, how a NAL unit header is checked, and
what each NAL type means), which splits payloads into NAL units or fragments, and
``NalDepacketizer`` does the rest.

State machine of ``NalDepacketizer`` (``DepacketizerState``):

* ``NEW`` – nothing received. The first packet starts a unit cleanly only if it opens
  with an access unit delimiter, the first parameter set of a picture (SPS for H.264,
  VPS for H.265) or the first slice of a keyframe; otherwise we are in ``SYNC_LOST``.
* ``BETWEEN_FRAMES`` – the previous unit just ended; the next packet starts a unit.
* ``IN_FRAME`` – collecting a unit that started cleanly.
* ``SYNC_LOST`` – after loss, a reset or a malformed packet: the packets' bytes are
  discarded until an access-unit boundary is seen (marker bit, or a timestamp change
  after a slice), since nothing else proves where a picture begins.

Orthogonal to it, ``waiting_for_keyframe`` is set at start and after any loss or error
and cleared by the first unit emitted: until then only keyframes are emitted, and only
once parameter sets are known. That first unit carries ``loss_before`` if anything was
lost or broken before it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import struct
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nvr.errors import DepacketizeError
from nvr.ingest.rtp import DepacketizerStats, SeqKind, SequenceTracker, hexdump
from nvr.media import RtpPacket, VideoAccessUnit, VideoCodec, VideoParameters

# --------------------------------------------------------------------------- bits


class BitstreamError(ValueError):
    """A parameter set ended early or held an impossible value."""


def unescape_rbsp(data: bytes) -> bytes:
    """Remove emulation-prevention bytes (the 03 in 00 00 03)."""
    return data.replace(b"\x00\x00\x03", b"\x00\x00")


class BitReader:
    """Big-endian bit reader with the Exp-Golomb codes of H.264/H.265 (clause 9.1)."""

    __slots__ = ("_bits", "_pos", "_value")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._bits = 8 * len(data)
        self._pos = 0

    def u(self, count: int) -> int:
        if count == 0:
            return 0
        end = self._pos + count
        if end > self._bits:
            raise BitstreamError(f"read of {count} bits at bit {self._pos} passes the end")
        self._pos = end
        return (self._value >> (self._bits - end)) & ((1 << count) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def skip(self, count: int) -> None:
        self.u(count)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise BitstreamError(f"Exp-Golomb code longer than 32 bits at bit {self._pos}")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


# ------------------------------------------------------------------- sprop values

_START_CODE = re.compile(b"\x00\x00\x00?\x01")
_B64_JUNK = re.compile(r"[^A-Za-z0-9+/]")


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (leading zeros and empty units skipped)."""
    return [nal.rstrip(b"\x00") for nal in _START_CODE.split(data) if nal.rstrip(b"\x00")]


def decode_sprop(value: str) -> list[bytes]:
    """NAL units of a comma-separated base64 ``sprop-*`` value.

    Tolerates what cameras send: spaces, missing or extra ``=`` padding, URL-safe
    letters, empty items, an item that is not base64 at all (skipped), and items that
    hold an Annex B stream with start codes instead of one bare NAL unit.
    """
    nals: list[bytes] = []
    for item in value.split(","):
        letters = _B64_JUNK.sub("", item.replace("-", "+").replace("_", "/"))
        if not letters:
            continue
        try:
            raw = base64.b64decode(letters + "=" * (-len(letters) % 4))
        except (binascii.Error, ValueError):
            continue
        if raw.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
            nals.extend(split_annexb(raw))
        elif raw:
            nals.append(raw)
    return nals


# ------------------------------------------------------------------ payload pieces


class PayloadError(Exception):
    """Internal: what is wrong with one payload; ``push`` adds the packet context."""


@dataclass(frozen=True, slots=True)
class WholeNal:
    nal: bytes


@dataclass(frozen=True, slots=True)
class FuFragment:
    header: bytes  # the NAL unit header rebuilt from the FU indicator and FU header
    start: bool
    end: bool
    data: bytes  # fragment payload, after the FU headers


Piece = WholeNal | FuFragment


class NalSyntax(ABC):
    """What one codec's RTP payload format and NAL unit types mean.

    Both formats carry a NAL unit whole, several in an aggregation packet (STAP-A /
    AP: a 16-bit size before each) or one in fragmentation units (FU-A / FU: the
    payload header, an FU header with start and end bits and the NAL unit type, then
    the data); ``split_payload`` tells them apart and checks them against the numbers
    each codec declares here.
    """

    codec: VideoCodec
    name: str  # "H.264", used in error messages
    param_types: Mapping[int, str]  # NAL type -> "vps" / "sps" / "pps"
    header_len: int  # bytes of a NAL unit header, and of an aggregation/FU payload header
    aggregate_type: int  # first payload type that is no single NAL unit: STAP-A / AP
    aggregate_name: str
    fu_type: int
    fu_name: str
    fu_type_mask: int  # the NAL unit type bits of the FU header
    fu_carried_types: range  # NAL unit types an FU may carry

    @abstractmethod
    def nal_type(self, header: bytes) -> int: ...

    @abstractmethod
    def is_vcl(self, nal_type: int) -> bool: ...

    @abstractmethod
    def is_keyframe(self, nal_type: int) -> bool: ...

    @abstractmethod
    def check_header(self, nal: bytes) -> int:
        """The NAL unit (or payload) type of a well-formed header; raises ``PayloadError``."""

    @abstractmethod
    def unsupported(self, kind: int) -> str:
        """Why a payload of a defined type beyond the FU type is refused."""

    @abstractmethod
    def fu_nal_header(self, payload: bytes, kind: int) -> bytes:
        """The fragmented NAL unit's header, rebuilt from an FU payload's headers."""

    @abstractmethod
    def opens_access_unit(self, head: bytes) -> bool:
        """True when a NAL unit starting with ``head`` can only be first in its unit."""

    @abstractmethod
    def sps_size(self, sps: bytes) -> tuple[int, int] | None:
        """Display width and height from an SPS NAL unit, None if unreadable."""

    def split_payload(self, payload: bytes) -> list[Piece]:
        """Whole NAL units or one FU fragment; raises ``PayloadError``."""
        kind = self.check_header(payload)
        if kind < self.aggregate_type:
            return [WholeNal(payload)]
        if kind == self.aggregate_type:
            return list(self._split_aggregate(payload))
        if kind == self.fu_type:
            return [self._split_fu(payload)]
        raise PayloadError(self.unsupported(kind))

    def parameters(self, nals: Mapping[str, bytes]) -> VideoParameters | None:
        """``VideoParameters`` from the latest parameter sets, None while one is missing."""
        if any(slot not in nals for slot in self.param_types.values()):
            return None
        size = self.sps_size(nals["sps"])
        return VideoParameters(
            codec=self.codec,
            vps=nals.get("vps"),
            sps=nals["sps"],
            pps=nals["pps"],
            width=size[0] if size else None,
            height=size[1] if size else None,
        )

    def _split_aggregate(self, payload: bytes) -> list[WholeNal]:
        name = self.aggregate_name
        nals: list[WholeNal] = []
        pos = self.header_len
        end = len(payload)
        while pos < end:
            if pos + 2 > end:
                raise PayloadError(f"{name} ends in a partial NAL unit size at offset {pos}")
            (size,) = struct.unpack_from("!H", payload, pos)
            if size == 0:
                raise PayloadError(f"{name} holds a zero-length NAL unit at offset {pos}")
            if pos + 2 + size > end:
                raise PayloadError(
                    f"{name} NAL unit of {size} bytes at offset {pos} overruns the packet "
                    f"({end - pos - 2} bytes left)"
                )
            nals.append(WholeNal(payload[pos + 2 : pos + 2 + size]))
            pos += 2 + size
        if not nals:
            raise PayloadError(f"{name} holds no NAL unit")
        for nal in nals:
            if self.check_header(nal.nal) >= self.aggregate_type:
                raise PayloadError(f"{name} holds a NAL unit of type {self.nal_type(nal.nal)}")
        return nals

    def _split_fu(self, payload: bytes) -> FuFragment:
        if len(payload) < self.header_len + 2:
            raise PayloadError(f"{self.fu_name} of {len(payload)} bytes has no fragment data")
        fu_header = payload[self.header_len]
        start = bool(fu_header & 0x80)
        end = bool(fu_header & 0x40)
        kind = fu_header & self.fu_type_mask
        if kind not in self.fu_carried_types:
            raise PayloadError(f"{self.fu_name} carries NAL unit type {kind}")
        if start and end:
            raise PayloadError(f"{self.fu_name} of NAL type {kind} has both start and end bits set")
        data = payload[self.header_len + 1 :]
        return FuFragment(self.fu_nal_header(payload, kind), start, end, data)


# ------------------------------------------------------------------ state machine


class DepacketizerState(enum.Enum):
    NEW = "new"
    BETWEEN_FRAMES = "between_frames"
    IN_FRAME = "in_frame"
    SYNC_LOST = "sync_lost"


@dataclass(slots=True)
class _Pending:
    """The access unit being collected. When not ``clean`` only its shape is tracked."""

    timestamp: int
    clean: bool
    nals: list[bytes] = field(default_factory=list)
    fu: bytearray | None = None  # NAL unit being reassembled from FU fragments
    has_vcl: bool = False
    keyframe: bool = False


class NalDepacketizer:
    """push(RtpPacket) / pull() -> VideoAccessUnit for one H.264 or H.265 stream."""

    def __init__(self, syntax: NalSyntax, sprop_nals: Sequence[bytes]) -> None:
        self._syntax = syntax
        self._seq = SequenceTracker()
        self._state = DepacketizerState.NEW
        self._pending: _Pending | None = None
        self._ready: deque[VideoAccessUnit] = deque()
        self._param_nals: dict[str, bytes] = {}
        self._params: VideoParameters | None = None
        self._emitted_params: VideoParameters | None = None
        self._need_keyframe = True
        self._loss_before = False
        self.stats = DepacketizerStats()
        self._learn_parameters(sprop_nals)

    @property
    def state(self) -> DepacketizerState:
        return self._state

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    @property
    def parameters(self) -> VideoParameters | None:
        """The parameter sets in force (from the SDP or in-band), None while unknown."""
        return self._params

    def pull(self) -> VideoAccessUnit | None:
        return self._ready.popleft() if self._ready else None

    def push(self, packet: RtpPacket) -> None:
        """Take one packet; raises ``DepacketizeError`` on a malformed one, after
        resetting to wait for the next keyframe, so the caller may log and go on."""
        self.stats.packets += 1
        step = self._seq.check(packet)
        if not step.kind.accepted:
            self.stats.count_rejected(step.kind)
            return
        try:
            self._take_packet(packet, step.kind, step.lost)
        except PayloadError as exc:
            # What the bad packet held is unknown; take it for part of a picture, so
            # the next timestamp change (or marker) is where clean units start again.
            self._lose_sync(packet.timestamp, assume_picture=True)
            self.stats.errors += 1
            raise DepacketizeError(self._describe(packet, str(exc))) from None

    # -- packet level

    def _take_packet(self, packet: RtpPacket, kind: SeqKind, lost: int) -> None:
        if kind in (SeqKind.GAP, SeqKind.RESYNC):
            self.stats.lost += lost
            self._lose_sync(packet.timestamp)
        else:
            self._end_on_timestamp_change(packet.timestamp)
        pieces = self._syntax.split_payload(packet.payload)
        if self._state in (DepacketizerState.NEW, DepacketizerState.BETWEEN_FRAMES):
            clean = self._state is DepacketizerState.BETWEEN_FRAMES or self._opens_unit(pieces[0])
            self._pending = _Pending(packet.timestamp, clean)
            self._state = DepacketizerState.IN_FRAME if clean else DepacketizerState.SYNC_LOST
        pending = self._pending
        assert pending is not None  # every state but NEW/BETWEEN_FRAMES has one
        if not pending.clean:
            self.stats.discarded += 1
        for piece in pieces:
            self._take_piece(pending, piece)
        if packet.marker and pending.has_vcl:
            # A marker on a packet without any slice (seen on parameter-set packets of
            # some cameras) does not end a picture; it is ignored.
            self._finish()

    def _end_on_timestamp_change(self, timestamp: int) -> None:
        pending = self._pending
        if pending is None or pending.timestamp == timestamp:
            return
        if pending.has_vcl:
            self._finish()
        elif pending.fu is not None:
            raise PayloadError("timestamp changed inside a fragmented NAL unit")
        else:
            # Camera quirk: SPS/PPS/SEI sent with a timestamp of their own before the
            # picture they introduce. They belong to the next picture, not to a unit
            # without slices; the unit takes the picture's timestamp.
            pending.timestamp = timestamp

    def _opens_unit(self, piece: Piece) -> bool:
        if isinstance(piece, WholeNal):
            return self._syntax.opens_access_unit(piece.nal)
        return piece.start and self._syntax.opens_access_unit(piece.header + piece.data[:2])

    # -- NAL level

    def _take_piece(self, pending: _Pending, piece: Piece) -> None:
        header = piece.nal if isinstance(piece, WholeNal) else piece.header
        nal_type = self._syntax.nal_type(header)
        pending.has_vcl = pending.has_vcl or self._syntax.is_vcl(nal_type)
        pending.keyframe = pending.keyframe or self._syntax.is_keyframe(nal_type)
        if not pending.clean:
            return
        if isinstance(piece, WholeNal):
            if pending.fu is not None:
                raise PayloadError(
                    f"NAL unit type {nal_type} arrived before the fragmented NAL unit "
                    f"type {self._syntax.nal_type(bytes(pending.fu[:2]))} ended"
                )
            pending.nals.append(piece.nal)
        else:
            self._take_fragment(pending, piece, nal_type)

    def _take_fragment(self, pending: _Pending, piece: FuFragment, nal_type: int) -> None:
        if piece.start:
            if pending.fu is not None:
                raise PayloadError(
                    f"FU start of NAL type {nal_type} before the previous fragmented NAL unit ended"
                )
            pending.fu = bytearray(piece.header + piece.data)
        else:
            if pending.fu is None:
                raise PayloadError(f"FU fragment of NAL type {nal_type} without its start")
            started_type = self._syntax.nal_type(bytes(pending.fu[:2]))
            if started_type != nal_type:
                raise PayloadError(
                    f"FU fragment of NAL type {nal_type} continues a NAL unit of type "
                    f"{started_type}"
                )
            pending.fu += piece.data
        if piece.end:
            pending.nals.append(bytes(pending.fu))
            pending.fu = None

    # -- unit level

    def _finish(self) -> None:
        """The pending unit is complete: emit it if it may be, and expect a new one."""
        pending = self._pending
        assert pending is not None
        self._pending = None
        self._state = DepacketizerState.BETWEEN_FRAMES
        if not pending.clean:
            return
        if pending.fu is not None:
            raise PayloadError("access unit ended inside a fragmented NAL unit")
        self._learn_parameters(pending.nals)
        if (self._need_keyframe and not pending.keyframe) or self._params is None:
            self.stats.dropped_units += 1
            return
        self._ready.append(
            VideoAccessUnit(
                timestamp=pending.timestamp,
                nal_units=tuple(pending.nals),
                is_keyframe=pending.keyframe,
                parameters=self._params,
                new_parameters=self._params != self._emitted_params,
                loss_before=self._loss_before,
            )
        )
        self.stats.units += 1
        self._emitted_params = self._params
        self._need_keyframe = False
        self._loss_before = False

    def _lose_sync(self, timestamp: int, *, assume_picture: bool = False) -> None:
        """Forget the partial unit; discard until a boundary, then wait for a keyframe."""
        self._loss_before = True
        self._pending = _Pending(timestamp, clean=False, has_vcl=assume_picture)
        self._state = DepacketizerState.SYNC_LOST
        self._need_keyframe = True

    def _learn_parameters(self, nals: Sequence[bytes]) -> None:
        changed = False
        for nal in nals:
            slot = self._syntax.param_types.get(self._syntax.nal_type(nal))
            if slot is not None and self._param_nals.get(slot) != nal:
                self._param_nals[slot] = nal
                changed = True
        if changed:
            self._params = self._syntax.parameters(self._param_nals)

    def _describe(self, packet: RtpPacket, detail: str) -> str:
        return (
            f"{self._syntax.name} packet seq={packet.sequence} ts={packet.timestamp}: "
            f"{detail}; payload ({len(packet.payload)} bytes): {hexdump(packet.payload)}"
        )
