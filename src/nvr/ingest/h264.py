"""H.264 RTP depacketizer (RFC 6184, non-interleaved mode), without I/O.

Single NAL unit packets, STAP-A and FU-A are accepted; STAP-B, MTAP16/24 and FU-B
belong to the interleaved mode, which no camera we know uses, and are refused with
a ``DepacketizeError``. The access-unit state machine is ``nal.NalDepacketizer``.
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

NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
STAP_A = 24
FU_A = 28
_INTERLEAVED_TYPES = {25: "STAP-B", 26: "MTAP16", 27: "MTAP24", 29: "FU-B"}

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling lists
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def nal_type(header: bytes) -> int:
    return header[0] & 0x1F


class H264Syntax(NalSyntax):
    codec = VideoCodec.H264
    name = "H.264"
    param_types: Mapping[int, str] = {NAL_SPS: "sps", NAL_PPS: "pps"}
    header_len = 1
    aggregate_type = STAP_A
    aggregate_name = "STAP-A"
    fu_type = FU_A
    fu_name = "FU-A"
    fu_type_mask = 0x1F
    fu_carried_types = range(1, STAP_A)

    def nal_type(self, header: bytes) -> int:
        return nal_type(header)

    def is_vcl(self, nal_type: int) -> bool:
        return 1 <= nal_type <= NAL_IDR

    def is_keyframe(self, nal_type: int) -> bool:
        return nal_type == NAL_IDR

    def check_header(self, nal: bytes) -> int:
        if not nal:
            raise PayloadError("empty payload")
        if nal[0] & 0x80:
            raise PayloadError("forbidden_zero_bit is set in the NAL unit header")
        kind = nal_type(nal)
        if kind == 0 or kind >= 30:
            raise PayloadError(f"NAL unit type {kind} is undefined in RFC 6184")
        return kind

    def unsupported(self, kind: int) -> str:
        return (
            f"{_INTERLEAVED_TYPES[kind]} (type {kind}) needs the interleaved mode, "
            f"which is not supported"
        )

    def fu_nal_header(self, payload: bytes, kind: int) -> bytes:
        return bytes([(payload[0] & 0xE0) | kind])  # F and NRI from the FU indicator

    def opens_access_unit(self, head: bytes) -> bool:
        kind = nal_type(head)
        if kind in (NAL_AUD, NAL_SPS):
            return True
        # An IDR slice whose first_mb_in_slice is 0 (ue(v) code "1") opens its picture.
        return kind == NAL_IDR and len(head) > 1 and bool(head[1] & 0x80)

    def sps_size(self, sps: bytes) -> tuple[int, int] | None:
        return parse_sps_size(sps)


class H264Depacketizer(NalDepacketizer):
    """RFC 6184 depacketizer; ``fmtp`` is the stream's a=fmtp (keys lower-cased)."""

    def __init__(self, fmtp: Mapping[str, str]) -> None:
        mode = fmtp.get("packetization-mode", "0").strip()
        if mode == "2":
            raise CameraProtocolError("H.264 packetization-mode=2 (interleaved) is not supported")
        sprop = decode_sprop(fmtp.get("sprop-parameter-sets", ""))
        super().__init__(H264Syntax(), [nal for nal in sprop if _sprop_ok(nal)])


def _sprop_ok(nal: bytes) -> bool:
    return not nal[0] & 0x80 and nal_type(nal) in (NAL_SPS, NAL_PPS)


# ----------------------------------------------------------------- SPS (7.3.2.1.1)


def parse_sps_size(sps: bytes) -> tuple[int, int] | None:
    """Display width and height from an SPS NAL unit (header included), None if unreadable."""
    try:
        return _sps_size(BitReader(unescape_rbsp(sps[1:])))
    except BitstreamError:
        return None


def _sps_size(bits: BitReader) -> tuple[int, int] | None:
    profile_idc = bits.u(8)
    bits.skip(16)  # constraint flags, level_idc
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = False
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc == 3:
            separate_colour_plane = bits.flag()
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.flag():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if bits.flag():
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.skip(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.flag()
    if not frame_mbs_only:
        bits.skip(1)  # mb_adaptive_frame_field_flag
    bits.skip(1)  # direct_8x8_inference_flag
    crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue()) if bits.flag() else (0, 0, 0, 0)
    field_factor = 1 if frame_mbs_only else 2
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    if chroma_array_type == 0:
        unit_x, unit_y = 1, field_factor
    else:
        unit_x = 2 if chroma_array_type in (1, 2) else 1
        unit_y = (2 if chroma_array_type == 1 else 1) * field_factor
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = field_factor * height_map_units * 16 - unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        return None
    return width, height


def _skip_scaling_list(bits: BitReader, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale if next_scale != 0 else last
