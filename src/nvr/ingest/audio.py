"""Audio RTP depacketizers, without I/O: AAC (RFC 3640 mpeg4-generic) and G.711.

Same push/pull shape as the video ones, yielding ``AudioFrame``. Audio has no
keyframes: a loss drops only the AU that was being reassembled.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Mapping

from nvr.errors import CameraProtocolError, DepacketizeError
from nvr.ingest.nal import BitReader, BitstreamError
from nvr.ingest.rtp import DepacketizerStats, SeqKind, SequenceTracker, hexdump
from nvr.media import AudioCodec, AudioFrame, MediaDescription, RtpPacket

AAC_FRAME_SAMPLES = 1024
# RFC 3640 section 3.3.5/3.3.6: sizeLength, indexLength, indexDeltaLength per mode
_AAC_MODES = {"aac-hbr": (13, 3, 3), "aac-lbr": (6, 2, 2)}
_UNSUPPORTED_AU_FIELDS = (
    "ctsdeltalength",
    "dtsdeltalength",
    "randomaccessindication",
    "streamstateindication",
    "auxiliarydatasizelength",
)


class _AudioDepacketizer:
    """Queue, statistics and sequence checking shared by the audio depacketizers."""

    def __init__(self) -> None:
        self._seq = SequenceTracker()
        self._ready: deque[AudioFrame] = deque()
        self.stats = DepacketizerStats()

    def pull(self) -> AudioFrame | None:
        return self._ready.popleft() if self._ready else None

    def _accept(self, packet: RtpPacket) -> SeqKind | None:
        """The packet's sequence verdict, or None (after counting) when it is dropped."""
        self.stats.packets += 1
        step = self._seq.check(packet)
        if not step.kind.accepted:
            self.stats.count_rejected(step.kind)
            return None
        self.stats.lost += step.lost
        return step.kind

    def _emit(self, frame: AudioFrame) -> None:
        self._ready.append(frame)
        self.stats.units += 1


class _AuHeaderError(Exception):
    pass


class AacDepacketizer(_AudioDepacketizer):
    """RFC 3640 AAC-hbr / AAC-lbr: several AUs per packet, or one AU in fragments."""

    def __init__(self, media: MediaDescription) -> None:
        super().__init__()
        fmtp = media.fmtp
        mode = fmtp.get("mode", "").strip().lower()
        if mode not in _AAC_MODES:
            raise CameraProtocolError(
                f"MPEG4-GENERIC mode={fmtp.get('mode', '')!r} is not supported "
                f"(only AAC-hbr and AAC-lbr)"
            )
        size_bits, index_bits, delta_bits = _AAC_MODES[mode]
        self._size_bits = _int_param(fmtp, "sizelength", size_bits)
        self._index_bits = _int_param(fmtp, "indexlength", index_bits)
        self._delta_bits = _int_param(fmtp, "indexdeltalength", delta_bits)
        for key in _UNSUPPORTED_AU_FIELDS:
            if _int_param(fmtp, key, 0) != 0:
                raise CameraProtocolError(f"MPEG4-GENERIC {key}={fmtp[key]} is not supported")
        self._frame_samples = _int_param(fmtp, "constantduration", AAC_FRAME_SAMPLES)
        self._config = _hex_param(fmtp, "config")
        self._clock_rate = media.clock_rate
        self._channels = media.channels
        self._fragment: bytearray | None = None
        self._fragment_timestamp = 0
        self._fragment_size = 0
        # After a loss a fragment cannot be told from a fragment's continuation until a
        # packet ends an AU (marker bit, or complete AUs). At the start the first
        # fragment is taken for a first one; if it was not (we joined mid-AU), the AU
        # comes up short at its marker and is dropped without an error.
        self._synced = True
        self._joined = True

    def push(self, packet: RtpPacket) -> None:
        kind = self._accept(packet)
        if kind is None:
            return
        if kind in (SeqKind.GAP, SeqKind.RESYNC):
            self._drop_fragment()
            self._synced = False
        try:
            self._take(packet)
        except _AuHeaderError as exc:
            self._drop_fragment()
            self._synced = False
            self.stats.errors += 1
            raise DepacketizeError(
                f"AAC packet seq={packet.sequence} ts={packet.timestamp}: {exc}; payload "
                f"({len(packet.payload)} bytes): {hexdump(packet.payload)}"
            ) from None
        finally:
            self._joined = self._joined and not packet.marker

    def _take(self, packet: RtpPacket) -> None:
        sizes, data = self._split(packet.payload)
        if len(sizes) == 1 and sizes[0] > len(data):
            self._take_fragment(packet, sizes[0], data)
            return
        if self._fragment is not None:
            raise _AuHeaderError(
                f"complete AUs arrived before the end of the fragmented AU of "
                f"{self._fragment_size} bytes"
            )
        if sum(sizes) != len(data):
            raise _AuHeaderError(
                f"AU headers announce {sum(sizes)} bytes of AU data, the packet has {len(data)}"
            )
        offset = 0
        for index, size in enumerate(sizes):
            timestamp = (packet.timestamp + index * self._frame_samples) & 0xFFFFFFFF
            self._emit_aac(timestamp, data[offset : offset + size])
            offset += size
        self._synced = True

    def _take_fragment(self, packet: RtpPacket, size: int, data: bytes) -> None:
        if not self._synced:
            self.stats.discarded += 1
            self._synced = packet.marker
            return
        if self._fragment is None:
            self._fragment = bytearray(data)
            self._fragment_timestamp = packet.timestamp
            self._fragment_size = size
        elif packet.timestamp != self._fragment_timestamp or size != self._fragment_size:
            raise _AuHeaderError(
                f"fragment of an AU of {size} bytes interrupts the fragmented AU of "
                f"{self._fragment_size} bytes at ts={self._fragment_timestamp}"
            )
        else:
            self._fragment += data
        if len(self._fragment) > size:
            raise _AuHeaderError(
                f"fragments add up to {len(self._fragment)} bytes, more than the AU size {size}"
            )
        if len(self._fragment) == size:
            frame = bytes(self._fragment)
            self._fragment = None
            self._emit_aac(self._fragment_timestamp, frame)
        elif packet.marker and self._joined:
            self._fragment = None
            self.stats.discarded += 1
        elif packet.marker:
            raise _AuHeaderError(
                f"marker bit on a fragment with {len(self._fragment)} of {size} AU bytes"
            )

    def _split(self, payload: bytes) -> tuple[list[int], bytes]:
        """AU sizes from the AU-header section, and the AU data after it."""
        if len(payload) < 2:
            raise _AuHeaderError(f"payload of {len(payload)} bytes has no AU-headers-length")
        (header_bits,) = struct.unpack_from("!H", payload)
        header_bytes = (header_bits + 7) // 8
        if 2 + header_bytes > len(payload):
            raise _AuHeaderError(
                f"AU-headers-length of {header_bits} bits overruns the payload of "
                f"{len(payload)} bytes"
            )
        bits = BitReader(payload[2 : 2 + header_bytes])
        first_bits = self._size_bits + self._index_bits
        other_bits = self._size_bits + self._delta_bits
        if header_bits == 0 or (header_bits - first_bits) % other_bits:
            raise _AuHeaderError(
                f"AU-headers-length of {header_bits} bits is not a whole number of "
                f"AU headers ({first_bits} bits, then {other_bits} each)"
            )
        sizes: list[int] = []
        try:
            while len(sizes) == 0 or first_bits + (len(sizes) - 1) * other_bits < header_bits:
                size = bits.u(self._size_bits)
                index = bits.u(self._index_bits if not sizes else self._delta_bits)
                if index != 0:
                    raise _AuHeaderError(
                        f"AU-index(-delta) {index} in AU header {len(sizes) + 1}: "
                        f"interleaving is not supported"
                    )
                sizes.append(size)
        except BitstreamError as exc:
            raise _AuHeaderError(f"AU headers: {exc}") from None
        return sizes, payload[2 + header_bytes :]

    def _emit_aac(self, timestamp: int, data: bytes) -> None:
        self._emit(
            AudioFrame(
                codec=AudioCodec.AAC,
                timestamp=timestamp,
                clock_rate=self._clock_rate,
                channels=self._channels,
                samples=self._frame_samples,
                data=data,
                config=self._config,
            )
        )

    def _drop_fragment(self) -> None:
        if self._fragment is not None:
            self._fragment = None
            self.stats.dropped_units += 1


class G711Depacketizer(_AudioDepacketizer):
    """PCMA / PCMU: every packet is one frame of 8-bit samples."""

    def __init__(self, media: MediaDescription) -> None:
        super().__init__()
        try:
            self._codec = AudioCodec(media.encoding.lower())
        except ValueError:
            raise CameraProtocolError(
                f"G.711 depacketizer given encoding {media.encoding!r}"
            ) from None
        if self._codec is AudioCodec.AAC:
            raise CameraProtocolError("G.711 depacketizer given encoding 'AAC'")
        self._clock_rate = media.clock_rate
        self._channels = max(media.channels, 1)

    def push(self, packet: RtpPacket) -> None:
        if self._accept(packet) is None:
            return
        size = len(packet.payload)
        if size == 0 or size % self._channels:
            self.stats.errors += 1
            raise DepacketizeError(
                f"{self._codec.name} packet seq={packet.sequence} ts={packet.timestamp}: "
                f"payload of {size} bytes is not a whole number of {self._channels}-channel "
                f"samples"
            )
        self._emit(
            AudioFrame(
                codec=self._codec,
                timestamp=packet.timestamp,
                clock_rate=self._clock_rate,
                channels=self._channels,
                samples=size // self._channels,
                data=packet.payload,
            )
        )


def _int_param(fmtp: Mapping[str, str], key: str, default: int) -> int:
    value = fmtp.get(key, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise CameraProtocolError(f"MPEG4-GENERIC {key}={value!r} is not an integer") from None
    if number < 0:
        raise CameraProtocolError(f"MPEG4-GENERIC {key}={value!r} is negative")
    return number


def _hex_param(fmtp: Mapping[str, str], key: str) -> bytes | None:
    value = fmtp.get(key, "").strip()
    if not value:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CameraProtocolError(f"MPEG4-GENERIC {key}={value!r} is not hex") from None
