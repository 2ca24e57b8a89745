"""Choosing a depacketizer from an SDP media description."""

from __future__ import annotations

import pytest

from nvr.errors import CameraProtocolError
from nvr.ingest.audio import AacDepacketizer, G711Depacketizer
from nvr.ingest.depacketize import depacketizer_for
from nvr.ingest.h264 import H264Depacketizer
from nvr.ingest.h265 import H265Depacketizer
from nvr.media import MediaDescription


def media(kind: str, encoding: str, fmtp: dict[str, str] | None = None) -> MediaDescription:
    return MediaDescription(kind, 96, encoding, 90000, 1, fmtp or {}, "rtsp://cam/track1")


@pytest.mark.parametrize(
    ("description", "kind"),
    [
        (media("video", "H264"), H264Depacketizer),
        (media("video", "H265"), H265Depacketizer),
        (media("audio", "MPEG4-GENERIC", {"mode": "AAC-hbr"}), AacDepacketizer),
        (media("audio", "PCMA"), G711Depacketizer),
        (media("audio", "PCMU"), G711Depacketizer),
    ],
)
def test_supported(description: MediaDescription, kind: type) -> None:
    assert isinstance(depacketizer_for(description), kind)


def test_unsupported_names_the_encoding() -> None:
    with pytest.raises(CameraProtocolError) as info:
        depacketizer_for(media("audio", "MP4A-LATM"))
    assert str(info.value) == (
        "audio encoding 'MP4A-LATM' (payload type 96) is not supported; supported: "
        "H264, H265, MPEG4-GENERIC (AAC), PCMA, PCMU"
    )
