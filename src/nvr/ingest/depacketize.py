"""Choosing the depacketizer for one ``m=`` section of a DESCRIBE answer."""

from __future__ import annotations

from typing import Protocol

from nvr.errors import CameraProtocolError
from nvr.ingest.audio import AacDepacketizer, G711Depacketizer
from nvr.ingest.h264 import H264Depacketizer
from nvr.ingest.h265 import H265Depacketizer
from nvr.ingest.rtp import DepacketizerStats
from nvr.media import AudioFrame, MediaDescription, RtpPacket, VideoAccessUnit


class Depacketizer(Protocol):
    """push RTP packets in arrival order; pull complete units until None."""

    stats: DepacketizerStats

    def push(self, packet: RtpPacket) -> None: ...

    def pull(self) -> VideoAccessUnit | AudioFrame | None: ...


def depacketizer_for(media: MediaDescription) -> Depacketizer:
    """The depacketizer for ``media``; ``CameraProtocolError`` names an unsupported encoding."""
    encoding = media.encoding.upper()
    if encoding == "H264":
        return H264Depacketizer(media.fmtp)
    if encoding in ("H265", "HEVC"):
        return H265Depacketizer(media.fmtp)
    if encoding == "MPEG4-GENERIC":
        return AacDepacketizer(media)
    if encoding in ("PCMA", "PCMU"):
        return G711Depacketizer(media)
    raise CameraProtocolError(
        f"{media.kind} encoding {media.encoding!r} (payload type {media.payload_type}) "
        f"is not supported; supported: H264, H265, MPEG4-GENERIC (AAC), PCMA, PCMU"
    )
