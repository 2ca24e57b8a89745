"""Typed values that cross module boundaries on the media path.

RTP packet -> (depacketizer) -> VideoAccessUnit / AudioFrame -> (timeline) -> segmenter.
Everything here is immutable and free of I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

ANNEXB_START_CODE = b"\x00\x00\x00\x01"


class VideoCodec(StrEnum):
    H264 = "h264"
    H265 = "h265"


class AudioCodec(StrEnum):
    AAC = "aac"
    PCMA = "pcma"
    PCMU = "pcmu"


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550), header fields decoded, payload without padding or extension."""

    payload_type: int
    marker: bool
    sequence: int  # 16-bit, wraps
    timestamp: int  # 32-bit RTP timestamp as sent, wraps
    ssrc: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` section of a DESCRIBE answer, as far as recording needs it."""

    kind: str  # "video", "audio", "application", ...
    payload_type: int
    encoding: str  # upper-case rtpmap encoding name: "H264", "H265", "MPEG4-GENERIC", "PCMA"...
    clock_rate: int  # Hz of the RTP timestamp
    channels: int  # audio channels (1 when the rtpmap does not say)
    fmtp: Mapping[str, str]  # a=fmtp parameters, keys lower-cased, values as written
    control: str  # absolute URL for SETUP


@dataclass(frozen=True, slots=True)
class VideoParameters:
    """The parameter sets in force, each a NAL unit without start code, byte for byte."""

    codec: VideoCodec
    sps: bytes
    pps: bytes
    vps: bytes | None = None  # H.265 only
    width: int | None = None  # from the SPS when it could be parsed
    height: int | None = None

    def nal_units(self) -> tuple[bytes, ...]:
        if self.vps is not None:
            return (self.vps, self.sps, self.pps)
        return (self.sps, self.pps)

    def annexb(self) -> bytes:
        """Parameter sets as an Annex B byte string (the extradata form PyAV accepts)."""
        return b"".join(ANNEXB_START_CODE + nal for nal in self.nal_units())


@dataclass(frozen=True, slots=True)
class VideoAccessUnit:
    """One coded picture: every NAL unit the camera sent for it, byte for byte, in order."""

    timestamp: int  # 32-bit RTP timestamp (90 kHz for video), not yet unwrapped
    nal_units: tuple[bytes, ...]  # without start codes; SEI, AUD and in-band parameter sets kept
    is_keyframe: bool  # H.264 IDR / H.265 IRAP, decodable with ``parameters`` alone
    parameters: VideoParameters | None  # parameter sets in force; None until any are known
    new_parameters: bool  # parameters differ from the previous access unit's (new segment)
    loss_before: bool  # packets were lost before this unit (the depacketizer resynced here)


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One audio access unit: a raw AAC frame (no ADTS header) or a run of G.711 samples."""

    codec: AudioCodec
    timestamp: int  # 32-bit RTP timestamp, in ``clock_rate`` units
    clock_rate: int  # Hz
    channels: int
    samples: int  # duration in ``clock_rate`` units (1024 for AAC-LC)
    data: bytes
    config: bytes | None = None  # AAC AudioSpecificConfig from the SDP, None for G.711
