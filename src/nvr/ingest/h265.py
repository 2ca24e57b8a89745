"""H.265 RTP depacketizer (RFC 7798), without I/O.

Single NAL unit packets, aggregation packets (AP, type 48) and fragmentation units
(FU, type 49) are accepted. PACI packets (type 50) are refused with a
``DepacketizeError``; a stream that announces DONL fields (``sprop-max-don-diff`` or
``sprop-depack-buf-nalus`` above 0) is refused when the depacketizer is built.
"""

from __future__ import annotations

from collections.abc import Mapping

from nvr.errors import CameraProtocolError
from nvr.ingest.nal import (
    BitReader,
    BitstreamError,
    NalDepacketizer,
    NalSyntax,
    PayloadError,
    decode_sprop,
    unescape_rbsp,
)
from nvr.media import VideoCodec

NAL_IRAP_FIRST = 16  # BLA_W_LP
NAL_IRAP_LAST = 23  # RSV_IRAP_VCL23
NAL_VPS = 32
NAL_SPS = 33
NAL_PPS = 34
NAL_AUD = 35
NAL_PREFIX_SEI = 39
AP = 48
FU = 49
PACI = 50
_DONL_PARAMETERS = ("sprop-max-don-diff", "sprop-depack-buf-nalus")


def nal_type(header: bytes) -> int:
    return (header[0] >> 1) & 0x3F


class H265Syntax(NalSyntax):
    codec = VideoCodec.H265
    name = "H.265"
    param_types: Mapping[int, str] = {NAL_VPS: "vps", NAL_SPS: "sps", NAL_PPS: "pps"}
    header_len = 2
    aggregate_type = AP
    aggregate_name = "AP"
    fu_type = FU
    fu_name = "FU"
    fu_type_mask = 0x3F
    fu_carried_types = range(0, AP)

    def nal_type(self, header: bytes) -> int:
        return nal_type(header)

    def is_vcl(self, nal_type: int) -> bool:
        return nal_type < NAL_VPS

    def is_keyframe(self, nal_type: int) -> bool:
        return NAL_IRAP_FIRST <= nal_type <= NAL_IRAP_LAST

    def check_header(self, nal: bytes) -> int:
        if len(nal) < 2:
            raise PayloadError(f"{len(nal)} bytes cannot hold the 2-byte NAL unit header")
        if nal[0] & 0x80:
            raise PayloadError("forbidden_zero_bit is set in the NAL unit header")
        if nal[1] & 0x07 == 0:
            raise PayloadError("nuh_temporal_id_plus1 is 0 in the NAL unit header")
        kind = nal_type(nal)
        if kind > PACI:
            raise PayloadError(f"NAL unit type {kind} is undefined in RFC 7798")
        return kind

    def unsupported(self, kind: int) -> str:
        return "PACI packets (type 50) are not supported"

    def fu_nal_header(self, payload: bytes, kind: int) -> bytes:
        # F and the layer id's top bit from the payload header, then its second byte
        return bytes([(payload[0] & 0x81) | (kind << 1), payload[1]])

    def opens_access_unit(self, head: bytes) -> bool:
        kind = nal_type(head)
        if kind in (NAL_AUD, NAL_VPS):
            return True
        # An IRAP slice segment with first_slice_segment_in_pic_flag set opens its picture.
        return self.is_keyframe(kind) and len(head) > 2 and bool(head[2] & 0x80)

    def sps_size(self, sps: bytes) -> tuple[int, int] | None:
        return parse_sps_size(sps)


class H265Depacketizer(NalDepacketizer):
    """RFC 7798 depacketizer; ``fmtp`` is the stream's a=fmtp (keys lower-cased)."""

    def __init__(self, fmtp: Mapping[str, str]) -> None:
        for key in _DONL_PARAMETERS:
            value = fmtp.get(key, "0").strip()
            if value != "0":
                raise CameraProtocolError(
                    f"H.265 stream announces {key}={value}: DONL fields (interleaved "
                    f"decoding order) are not supported"
                )
        sprop: list[bytes] = []
        for key, wanted in (("sprop-vps", NAL_VPS), ("sprop-sps", NAL_SPS), ("sprop-pps", NAL_PPS)):
            sprop.extend(nal for nal in decode_sprop(fmtp.get(key, "")) if _sprop_ok(nal, wanted))
        super().__init__(H265Syntax(), sprop)


def _sprop_ok(nal: bytes, wanted: int) -> bool:
    return len(nal) > 2 and not nal[0] & 0x80 and nal_type(nal) == wanted


# ------------------------------------------------------------------ SPS (7.3.2.2)


def parse_sps_size(sps: bytes) -> tuple[int, int] | None:
    """Display width and height from an SPS NAL unit (header included), None if unreadable."""
    try:
        return _sps_size(BitReader(unescape_rbsp(sps[2:])))
    except BitstreamError:
        return None


def _sps_size(bits: BitReader) -> tuple[int, int] | None:
    bits.skip(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = bits.u(3)
    bits.skip(1)  # sps_temporal_id_nesting_flag
    _skip_profile_tier_level(bits, max_sub_layers_minus1)
    bits.ue()  # sps_seq_parameter_set_id
    chroma_format_idc = bits.ue()
    separate_colour_plane = chroma_format_idc == 3 and bits.flag()
    width = bits.ue()
    height = bits.ue()
    if bits.flag():  # conformance_window_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma = 0 if separate_colour_plane else chroma_format_idc
        sub_width = 2 if chroma in (1, 2) else 1
        sub_height = 2 if chroma == 1 else 1
        width -= sub_width * (left + right)
        height -= sub_height * (top + bottom)
    if width <= 0 or height <= 0:
        return None
    return width, height


def _skip_profile_tier_level(bits: BitReader, max_sub_layers_minus1: int) -> None:
    # general profile space/tier/idc (8), compatibility flags (32), constraint and
    # reserved flags (48), general_level_idc (8)
    bits.skip(96)
    present = [(bits.flag(), bits.flag()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        bits.skip(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for profile_present, level_present in present:
        if profile_present:
            bits.skip(88)
        if level_present:
            bits.skip(8)
