"""H.264 depacketizer: real GStreamer packets against the encoder's byte stream,
our own re-packetization at every fragment boundary, hand-built packets and errors,
and Hypothesis loss/duplication/reordering."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvr.errors import CameraProtocolError, DepacketizeError
from nvr.ingest.h264 import H264Depacketizer, parse_sps_size
from nvr.ingest.nal import DepacketizerState
from nvr.media import RtpPacket, VideoAccessUnit, VideoCodec
from rtp_fixtures import (
    PackOptions,
    VideoFixture,
    check_clean_start,
    check_encoder_units,
    check_fu_boundaries,
    depacketize_lossy,
    drain,
    encoded_sps,
    expect_refused,
    fu_payloads,
    mutate,
    nal_type,
    packet_edits,
    pkt,
    repacketized,
    requested_video_fixture,
    video_fixture,
    without_markers,
)

H264 = VideoCodec.H264
SPS_B64 = "Z0IAKeKQFAe2AtwEBAaQeJEV"  # baseline, 640x480
SPS = base64.b64decode(SPS_B64)
PPS = bytes.fromhex("68ce3c80")
SPS_1080 = base64.b64decode("Z00AKp2oHgCJ+WbgICAoAAADAAgAAAMBlCA=")  # main, 1920x1080 cropped
IDR = bytes.fromhex("65888400aabbccddeeff")  # first_mb_in_slice 0
IDR_SECOND_SLICE = bytes.fromhex("65488400aabb")  # first_mb_in_slice != 0
P_SLICE = bytes.fromhex("419a2233")
SEI = bytes.fromhex("0605112233")
AUD = bytes.fromhex("0910")
SPROP = {"sprop-parameter-sets": f"{SPS_B64},{base64.b64encode(PPS).decode()}"}


def run(packets: list[RtpPacket], fmtp: dict[str, str] | None = None) -> list[VideoAccessUnit]:
    return drain(H264Depacketizer(fmtp or {}), packets)


# --------------------------------------------------------------- real packetizer


@pytest.fixture(scope="session")
def h264_fu(tmp_path_factory: pytest.TempPathFactory) -> VideoFixture:
    """rtph264pay, mtu 600: single NAL units and FU-A."""
    return video_fixture(tmp_path_factory, H264, 50, "rtph264pay mtu=600 config-interval=-1")


@pytest.fixture(scope="session")
def h264_stap(tmp_path_factory: pytest.TempPathFactory) -> VideoFixture:
    """rtph264pay aggregate-mode=zero-latency: STAP-A for AUD/SPS/PPS/SEI, FU-A beyond 1400."""
    return video_fixture(
        tmp_path_factory,
        H264,
        50,
        "rtph264pay mtu=1400 config-interval=-1 aggregate-mode=zero-latency",
    )


@pytest.fixture(params=["h264_fu", "h264_stap"])
def h264_stream(request: pytest.FixtureRequest) -> VideoFixture:
    return requested_video_fixture(request)


def payload_types(fixture: VideoFixture) -> set[int]:
    return {nal_type(H264, packet.payload) for packet in fixture.packets}


def test_fixtures_use_each_packetization(h264_fu: VideoFixture, h264_stap: VideoFixture) -> None:
    assert {1, 7, 8, 9, 28} <= payload_types(h264_fu)  # single NAL units and FU-A
    assert {24, 28} <= payload_types(h264_stap)  # STAP-A and FU-A


def test_real_stream_matches_encoder_byte_stream(h264_stream: VideoFixture) -> None:
    units = run(h264_stream.packets)
    # rtph264pay keeps AUD and SEI, and with config-interval=-1 re-sends SPS/PPS just
    # before each IDR slice although x264 already put them at the unit's start:
    # ``expected`` is the encoder's units with exactly that insertion.
    params = check_encoder_units(units, h264_stream)
    assert len(units) == 50
    assert [unit.is_keyframe for unit in units] == [i % 10 == 0 for i in range(50)]
    steps = {(b.timestamp - a.timestamp) % 2**32 for a, b in itertools.pairwise(units)}
    assert steps == {3600}
    assert not any(unit.loss_before for unit in units)
    assert params.sps == h264_stream.source[0][1]  # AUD, SPS, PPS, ...


@pytest.mark.parametrize("fu_size", [1, 2, 3, 7, 64, 333, 1400, 65535])
@pytest.mark.parametrize("aggregate", [False, True])
def test_repacketized_at_many_sizes(h264_fu: VideoFixture, fu_size: int, aggregate: bool) -> None:
    options = PackOptions(fu_size=fu_size, aggregate=aggregate)
    reference, units = repacketized(H264Depacketizer, h264_fu, options)
    assert units == reference


def test_fu_boundary_at_every_offset(h264_fu: VideoFixture) -> None:
    """Each NAL unit of a keyframe unit and of the unit after it, cut into FU-A
    fragments at every byte offset (two fragments, and three with a 1-byte middle)."""
    keyframe = run(h264_fu.packets)[0]
    checked = check_fu_boundaries(H264Depacketizer, h264_fu)
    assert checked > 2 * sum(len(nal) for nal in keyframe.nal_units)


def test_camera_without_marker_bit(h264_stap: VideoFixture) -> None:
    reference = run(h264_stap.packets)
    # A unit ends when the next one's timestamp arrives; the last one stays pending.
    assert run(without_markers(h264_stap.packets)) == reference[:-1]


def test_parameter_sets_with_their_own_timestamp(h264_fu: VideoFixture) -> None:
    options = PackOptions(params_own_timestamp=True, marker=False)
    reference, units = repacketized(H264Depacketizer, h264_fu, options)
    assert units == reference[:-1]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=packet_edits(max_index=200, max_size=12), marker=st.booleans())
def test_loss_duplication_reordering(
    h264_fu: VideoFixture, edits: list[tuple[int, str]], marker: bool
) -> None:
    reference = run(h264_fu.packets)
    packets = mutate(h264_fu.packets, edits)
    units = depacketize_lossy(H264Depacketizer, packets if marker else without_markers(packets))
    check_clean_start(units, reference)
    if not edits and marker:
        assert units == reference
    if not edits and marker:
        assert units == reference


# ------------------------------------------------------------------- SPS parsing


@pytest.mark.parametrize(
    ("caps", "encoder", "size"),
    [
        ("width=320,height=240", "", (320, 240)),
        ("width=322,height=242", "", (322, 242)),  # cropping
        ("width=1920,height=1080", "speed-preset=ultrafast", (1920, 1080)),
        ("width=176,height=144", "interlaced=true", (176, 144)),  # frame_mbs_only = 0
        ("width=176,height=144,format=Y444", "", (176, 144)),  # High 4:4:4, chroma 3
        ("width=176,height=144,format=Y42B", "", (176, 144)),  # High 4:2:2
    ],
)
def test_sps_size_from_x264(tmp_path: Path, caps: str, encoder: str, size: tuple[int, int]) -> None:
    assert parse_sps_size(encoded_sps(tmp_path, H264, caps, f"x264enc {encoder}")) == size


def test_sps_size_of_known_camera_sps() -> None:
    assert parse_sps_size(SPS) == (640, 480)
    assert parse_sps_size(SPS_1080) == (1920, 1080)


@pytest.mark.parametrize("sps", [b"\x67", b"\x67\x42\x00", SPS[:8], b"\x67" + b"\x00" * 12])
def test_unreadable_sps_gives_no_size(sps: bytes) -> None:
    assert parse_sps_size(sps) is None


def test_high_profile_scaling_lists() -> None:
    # High profile (100), chroma 1, 8 bit, scaling matrix present with list 0 carrying
    # one delta then a terminating next_scale of 0, the other seven lists absent.
    bits = "".join(
        [
            format(100, "08b"),
            "00000000",
            format(31, "08b"),  # profile, flags, level
            "1",  # sps id 0
            "010",  # chroma_format_idc 1
            "1",
            "1",  # bit depths 8
            "0",  # qpprime
            "1",  # seq_scaling_matrix_present
            "1",
            "011",
            "0001111",  # list 0: delta -1 (7), then -7: next_scale 0 ends it
            "0" * 7,  # lists 1..7 absent
            "1",  # log2_max_frame_num_minus4 0
            "1",  # poc type 0
            "1",  # log2_max_poc_lsb_minus4 0
            "010",  # max_num_ref_frames 1
            "0",  # gaps
            "0001011",  # width in mbs - 1 = 10 -> 176
            "00100",  # height in map units - 1 = 3 -> 64
            "1",
            "1",
            "0",  # frame_mbs_only, direct_8x8, no cropping
            "1",  # stop bit
        ]
    )
    bits += "0" * (-len(bits) % 8)
    sps = b"\x67" + int(bits, 2).to_bytes(len(bits) // 8, "big")
    assert parse_sps_size(sps) == (176, 64)


# ------------------------------------------------------------- hand-built packets


def test_single_nal_unit_packets() -> None:
    units = run([pkt(1, 10, SPS), pkt(2, 10, PPS), pkt(3, 10, SEI), pkt(4, 10, IDR, marker=True)])
    assert len(units) == 1
    unit = units[0]
    assert unit.nal_units == (SPS, PPS, SEI, IDR)
    assert unit.timestamp == 10
    assert unit.is_keyframe
    assert unit.new_parameters
    assert not unit.loss_before
    assert unit.parameters is not None
    assert (unit.parameters.sps, unit.parameters.pps) == (SPS, PPS)
    assert (unit.parameters.width, unit.parameters.height) == (640, 480)


def test_stap_a() -> None:
    stap = b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in (AUD, SPS, PPS, IDR))
    (unit,) = run([pkt(1, 10, stap, marker=True)])
    assert unit.nal_units == (AUD, SPS, PPS, IDR)


def test_fu_a_rebuilds_header_from_indicator_and_type() -> None:
    frags = fu_payloads(H264, IDR[:1], [IDR[1:3], IDR[3:4], IDR[4:]])
    assert frags[0][:2] == b"\x7c\x85" and frags[1][:2] == b"\x7c\x05"
    packets = [pkt(1, 10, SPS), pkt(2, 10, PPS)]
    packets += [pkt(3 + i, 10, f, marker=i == 2) for i, f in enumerate(frags)]
    (unit,) = run(packets)
    assert unit.nal_units == (SPS, PPS, IDR)


def test_multi_slice_picture_and_timestamp_boundary() -> None:
    units = run(
        [
            pkt(1, 10, AUD),  # an AUD alone in its packet
            pkt(2, 10, IDR),
            pkt(3, 10, IDR_SECOND_SLICE),
            pkt(4, 20, P_SLICE),  # no marker anywhere: the timestamp change ends units
            pkt(5, 30, P_SLICE),
        ],
        SPROP,
    )
    assert [u.nal_units for u in units] == [(AUD, IDR, IDR_SECOND_SLICE), (P_SLICE,)]
    assert [u.is_keyframe for u in units] == [True, False]


def test_parameter_sets_with_own_timestamp_join_the_picture() -> None:
    units = run(
        [pkt(1, 5, SPS), pkt(2, 5, PPS, marker=True), pkt(3, 6, SEI), pkt(4, 10, IDR, True)]
    )
    (unit,) = units
    assert unit.nal_units == (SPS, PPS, SEI, IDR)
    assert unit.timestamp == 10


def test_sprop_parameters_and_junk_tolerated() -> None:
    pps = base64.b64encode(PPS).decode().rstrip("=")
    junk = f" {SPS_B64[:-1]}\n{SPS_B64[-1]} ,, !!notbase64, {pps}=== "
    depacketizer = H264Depacketizer({"sprop-parameter-sets": junk, "packetization-mode": "1"})
    assert depacketizer.parameters is not None
    assert (depacketizer.parameters.sps, depacketizer.parameters.pps) == (SPS, PPS)
    (unit,) = drain(depacketizer, [pkt(1, 10, IDR, marker=True)])
    assert unit.nal_units == (IDR,)
    assert unit.new_parameters  # the first unit ever emitted


def test_sprop_with_start_codes() -> None:
    annexb = base64.b64encode(b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS).decode()
    parameters = H264Depacketizer({"sprop-parameter-sets": annexb}).parameters
    assert parameters is not None
    assert (parameters.sps, parameters.pps) == (SPS, PPS)


def test_keyframe_without_parameters_is_dropped() -> None:
    depacketizer = H264Depacketizer({})
    units = drain(depacketizer, [pkt(1, 10, IDR, True), pkt(2, 20, P_SLICE, True)])
    assert units == []
    assert depacketizer.stats.dropped_units == 2
    units = drain(depacketizer, [pkt(3, 30, SPS), pkt(4, 30, PPS), pkt(5, 30, IDR, True)])
    assert [u.nal_units for u in units] == [(SPS, PPS, IDR)]


def test_start_on_a_non_keyframe_waits() -> None:
    depacketizer = H264Depacketizer(SPROP)
    packets = [pkt(1, 10, P_SLICE, True), pkt(2, 20, P_SLICE, True), pkt(3, 30, IDR, True)]
    units = drain(depacketizer, packets)
    assert [u.timestamp for u in units] == [30]
    assert not units[0].loss_before
    # the first packet does not open a unit (discarded); the second does, but is no keyframe
    assert (depacketizer.stats.discarded, depacketizer.stats.dropped_units) == (1, 1)


def test_start_in_the_middle_of_a_fragmented_nal() -> None:
    depacketizer = H264Depacketizer(SPROP)
    frags = fu_payloads(H264, IDR[:1], [IDR[1:4], IDR[4:]])
    # joined mid-unit: the continuation is discarded silently, the unit boundary
    # (marker) is where clean units start
    units = drain(depacketizer, [pkt(1, 10, frags[1], True), pkt(2, 20, IDR, True)])
    assert [u.timestamp for u in units] == [20]
    assert depacketizer.stats.errors == 0


def test_in_band_parameter_change() -> None:
    units = run(
        [
            pkt(1, 10, IDR, True),
            pkt(2, 20, P_SLICE, True),
            pkt(3, 30, SPS_1080),
            pkt(4, 30, PPS),
            pkt(5, 30, IDR, True),
            pkt(6, 40, SPS_1080),  # repeated, unchanged
            pkt(7, 40, IDR, True),
        ],
        SPROP,
    )
    assert [u.new_parameters for u in units] == [True, False, True, False]
    params = [u.parameters for u in units]
    assert params[0] == params[1] and params[2] == params[3]
    assert params[2] is not None and params[2].sps == SPS_1080
    assert (params[2].width, params[2].height) == (1920, 1080)


def test_loss_drops_until_next_keyframe() -> None:
    frags = fu_payloads(H264, IDR[:1], [IDR[1:4], IDR[4:7], IDR[7:]])
    depacketizer = H264Depacketizer(SPROP)
    packets = [
        pkt(1, 10, frags[0]),
        # seq 2 lost: the middle fragment
        pkt(3, 10, frags[2], True),
        pkt(4, 20, P_SLICE, True),
        pkt(5, 30, IDR, True),
        pkt(6, 40, P_SLICE, True),
    ]
    units = drain(depacketizer, packets)
    assert [(u.timestamp, u.loss_before) for u in units] == [(30, True), (40, False)]
    assert depacketizer.stats.lost == 1
    assert depacketizer.stats.dropped_units == 1  # the P slice at 20
    assert depacketizer.stats.units == 2


def test_duplicates_ignored_and_reordering_is_loss() -> None:
    depacketizer = H264Depacketizer(SPROP)
    packets = [
        pkt(1, 10, IDR, True),
        pkt(1, 10, IDR, True),  # duplicate
        pkt(3, 20, P_SLICE, True),  # 2 arrives late: loss
        pkt(2, 20, P_SLICE),  # old: dropped
        pkt(4, 30, IDR, True),
    ]
    units = drain(depacketizer, packets)
    assert [(u.timestamp, u.loss_before) for u in units] == [(10, False), (30, True)]
    assert (depacketizer.stats.duplicates, depacketizer.stats.reordered) == (1, 1)


def test_sequence_wraps_without_loss() -> None:
    units = run([pkt(65535, 10, IDR, True), pkt(0, 20, P_SLICE, True)], SPROP)
    assert [u.loss_before for u in units] == [False, False]
    assert len(units) == 2


def test_marker_on_parameter_set_packet_is_ignored() -> None:
    (unit,) = run([pkt(1, 10, SPS, True), pkt(2, 10, PPS, True), pkt(3, 10, IDR, True)])
    assert unit.nal_units == (SPS, PPS, IDR)


def test_state_machine_states() -> None:
    depacketizer = H264Depacketizer(SPROP)
    seen = [(depacketizer.state, depacketizer.waiting_for_keyframe)]
    for packet in [
        pkt(1, 10, IDR),
        pkt(2, 10, IDR_SECOND_SLICE, True),
        pkt(4, 20, P_SLICE),  # seq 3 lost
        pkt(5, 30, AUD),  # a timestamp change after a slice: a boundary
    ]:
        depacketizer.push(packet)
        seen.append((depacketizer.state, depacketizer.waiting_for_keyframe))
    assert seen == [
        (DepacketizerState.NEW, True),
        (DepacketizerState.IN_FRAME, True),
        (DepacketizerState.BETWEEN_FRAMES, False),
        (DepacketizerState.SYNC_LOST, True),
        (DepacketizerState.IN_FRAME, True),
    ]


def test_packetization_mode_2_refused() -> None:
    with pytest.raises(CameraProtocolError) as info:
        H264Depacketizer({"packetization-mode": "2"})
    assert str(info.value) == "H.264 packetization-mode=2 (interleaved) is not supported"


def stap(*nals: bytes) -> bytes:
    return b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


FU_START = b"\x7c\x85\x01\x02"
FU_MIDDLE = b"\x7c\x05\x03"


@pytest.mark.parametrize(
    ("payloads", "detail"),
    [
        ([b""], "empty payload"),
        ([b"\xe5\x00"], "forbidden_zero_bit is set in the NAL unit header"),
        ([b"\x00\x01"], "NAL unit type 0 is undefined in RFC 6184"),
        ([b"\x7e\x01"], "NAL unit type 30 is undefined in RFC 6184"),
        ([b"\x79\x00"], "STAP-B (type 25) needs the interleaved mode, which is not supported"),
        ([b"\x7a\x00"], "MTAP16 (type 26) needs the interleaved mode, which is not supported"),
        ([b"\x7b\x00"], "MTAP24 (type 27) needs the interleaved mode, which is not supported"),
        ([b"\x7d\x85"], "FU-B (type 29) needs the interleaved mode, which is not supported"),
        ([b"\x78"], "STAP-A holds no NAL unit"),
        ([b"\x78\x00"], "STAP-A ends in a partial NAL unit size at offset 1"),
        ([b"\x78\x00\x00"], "STAP-A holds a zero-length NAL unit at offset 1"),
        (
            [b"\x78\x00\x05\x41\x9a"],
            "STAP-A NAL unit of 5 bytes at offset 1 overruns the packet (2 bytes left)",
        ),
        ([stap(b"\x7c\x85")], "STAP-A holds a NAL unit of type 28"),
        ([stap(b"\x00\x85")], "NAL unit type 0 is undefined in RFC 6184"),
        ([b"\x7c\x85"], "FU-A of 2 bytes has no fragment data"),
        ([b"\x7c\xc5\x00"], "FU-A of NAL type 5 has both start and end bits set"),
        ([b"\x7c\x98\x00"], "FU-A carries NAL unit type 24"),
        ([b"\x7c\x80\x00"], "FU-A carries NAL unit type 0"),
        ([FU_MIDDLE], "FU fragment of NAL type 5 without its start"),
        (
            [FU_START, FU_START],
            "FU start of NAL type 5 before the previous fragmented NAL unit ended",
        ),
        (
            [FU_START, P_SLICE],
            "NAL unit type 1 arrived before the fragmented NAL unit type 5 ended",
        ),
        ([FU_START, b"\x7c\x01\x03"], "FU fragment of NAL type 1 continues a NAL unit of type 5"),
        ([FU_START, FU_MIDDLE + b"!"], "access unit ended inside a fragmented NAL unit"),
    ],
)
def test_malformed_packets(payloads: list[bytes], detail: str) -> None:
    depacketizer = H264Depacketizer(SPROP)
    assert len(drain(depacketizer, [pkt(1, 10, IDR, True)])) == 1
    packets = [pkt(2 + i, 20, p, marker=i == len(payloads) - 1) for i, p in enumerate(payloads)]
    bad = expect_refused(depacketizer, packets, "H.264", detail)
    assert depacketizer.state is DepacketizerState.SYNC_LOST
    assert depacketizer.stats.errors == 1
    # the caller logs and keeps pushing: the next keyframe comes out, flagged
    seq = bad.sequence + 1
    units = drain(depacketizer, [pkt(seq, 30, P_SLICE, True), pkt(seq + 1, 40, IDR, True)])
    assert [(u.timestamp, u.is_keyframe, u.loss_before) for u in units] == [(40, True, True)]


def test_timestamp_change_inside_fragmented_sei() -> None:
    depacketizer = H264Depacketizer(SPROP)
    sei_start = fu_payloads(H264, SEI[:1], [SEI[1:3], SEI[3:]])[0]
    depacketizer.push(pkt(1, 10, AUD))
    depacketizer.push(pkt(2, 10, sei_start))
    with pytest.raises(DepacketizeError) as info:
        depacketizer.push(pkt(3, 20, IDR, True))
    assert str(info.value) == (
        "H.264 packet seq=3 ts=20: timestamp changed inside a fragmented NAL unit; "
        "payload (10 bytes): 65 88 84 00 aa bb cc dd ee ff"
    )


def test_long_payload_is_cut_in_messages() -> None:
    depacketizer = H264Depacketizer(SPROP)
    with pytest.raises(DepacketizeError) as info:
        depacketizer.push(pkt(7, 1, b"\x7b" + bytes(40)))
    assert str(info.value).endswith(
        "payload (41 bytes): 7b 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 ..."
    )
