"""H.265 depacketizer: real rtph265pay packets against x265's byte stream, our own
re-packetization at every fragment boundary, hand-built AP/FU packets and errors,
and Hypothesis loss/duplication/reordering. The state machine is shared with H.264
(``nal.NalDepacketizer``) and tested in depth there."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvr.errors import CameraProtocolError
from nvr.ingest.h265 import H265Depacketizer, parse_sps_size
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

H265 = VideoCodec.H265
# parameter sets of x265 at 320x240 (width 320, height 240, no conformance window)
VPS = bytes.fromhex("40010c01ffff040800000300980800000300003f959809")
SPS = bytes.fromhex(
    "420101040800000300980800000300003f90014101e2294b2b3492657ff80008000b5060606040000003004000000642"
)
PPS = bytes.fromhex("4401c172b46240")
IDR = bytes.fromhex("2801af09c82c0011")  # IDR_N_LP, first_slice_segment_in_pic_flag set
TRAIL = bytes.fromhex("0201d00a1122")  # TRAIL_R
SEI = bytes.fromhex("4e0105ff0102")
AUD = bytes.fromhex("460150")
SPROP = {
    "sprop-vps": base64.b64encode(VPS).decode(),
    "sprop-sps": base64.b64encode(SPS).decode(),
    "sprop-pps": base64.b64encode(PPS).decode(),
}


def run(packets: list[RtpPacket], fmtp: dict[str, str] | None = None) -> list[VideoAccessUnit]:
    return drain(H265Depacketizer(fmtp or {}), packets)


def ap(*nals: bytes) -> bytes:
    return b"\x60\x01" + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


# --------------------------------------------------------------- real packetizer


@pytest.fixture(scope="session")
def h265_fu(tmp_path_factory: pytest.TempPathFactory) -> VideoFixture:
    """rtph265pay, mtu 600: single NAL units and FUs."""
    return video_fixture(tmp_path_factory, H265, 40, "rtph265pay mtu=600 config-interval=-1")


@pytest.fixture(scope="session")
def h265_ap(tmp_path_factory: pytest.TempPathFactory) -> VideoFixture:
    """rtph265pay aggregate-mode=zero-latency: APs for VPS/SPS/PPS/SEI."""
    return video_fixture(
        tmp_path_factory,
        H265,
        40,
        "rtph265pay mtu=1400 config-interval=-1 aggregate-mode=zero-latency",
    )


@pytest.fixture(params=["h265_fu", "h265_ap"])
def h265_stream(request: pytest.FixtureRequest) -> VideoFixture:
    return requested_video_fixture(request)


def test_fixtures_use_each_packetization(h265_fu: VideoFixture, h265_ap: VideoFixture) -> None:
    assert {32, 33, 34, 49} <= {nal_type(H265, p.payload) for p in h265_fu.packets}
    assert {48} <= {nal_type(H265, p.payload) for p in h265_ap.packets}


def test_real_stream_matches_encoder_byte_stream(h265_stream: VideoFixture) -> None:
    units = run(h265_stream.packets)
    # As with H.264, rtph265pay config-interval=-1 re-sends VPS/SPS/PPS just before
    # each IRAP slice; ``expected`` is x265's units with exactly that insertion.
    params = check_encoder_units(units, h265_stream)
    assert len(units) == 40
    keyframes = [any(16 <= nal_type(H265, n) <= 23 for n in u) for u in h265_stream.expected]
    assert [unit.is_keyframe for unit in units] == keyframes
    assert keyframes[0] and sum(keyframes) >= 3
    assert params.nal_units() == h265_stream.source[0][:3]  # VPS, SPS, PPS


@pytest.mark.parametrize("fu_size", [1, 5, 100, 600, 65535])
@pytest.mark.parametrize("aggregate", [False, True])
def test_repacketized_at_many_sizes(h265_fu: VideoFixture, fu_size: int, aggregate: bool) -> None:
    options = PackOptions(fu_size=fu_size, aggregate=aggregate)
    reference, units = repacketized(H265Depacketizer, h265_fu, options)
    assert units == reference


def test_fu_boundary_at_every_offset(h265_fu: VideoFixture) -> None:
    check_fu_boundaries(H265Depacketizer, h265_fu)


def test_parameter_sets_with_own_timestamp_no_marker(h265_fu: VideoFixture) -> None:
    options = PackOptions(params_own_timestamp=True, marker=False)
    reference, units = repacketized(H265Depacketizer, h265_fu, options)
    assert units == reference[:-1]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=packet_edits(max_index=120, max_size=10), marker=st.booleans())
def test_loss_duplication_reordering(
    h265_fu: VideoFixture, edits: list[tuple[int, str]], marker: bool
) -> None:
    reference = run(h265_fu.packets)
    packets = mutate(h265_fu.packets, edits)
    units = depacketize_lossy(H265Depacketizer, packets if marker else without_markers(packets))
    check_clean_start(units, reference)


# ------------------------------------------------------------------- SPS parsing


@pytest.mark.parametrize(
    ("caps", "size"),
    [
        ("width=320,height=240", (320, 240)),
        ("width=322,height=242", (322, 242)),  # conformance window
        ("width=1920,height=1080", (1920, 1080)),
        ("width=176,height=144,format=Y444", (176, 144)),  # chroma 4:4:4
    ],
)
def test_sps_size_from_x265(tmp_path: Path, caps: str, size: tuple[int, int]) -> None:
    sps = encoded_sps(tmp_path, H265, caps, "x265enc speed-preset=ultrafast")
    assert parse_sps_size(sps) == size


@pytest.mark.parametrize("sps", [b"\x42\x01", SPS[:10], SPS[:20]])
def test_unreadable_sps_gives_no_size(sps: bytes) -> None:
    assert parse_sps_size(sps) is None


# ------------------------------------------------------------- hand-built packets


def test_single_nal_unit_packets() -> None:
    packets = [pkt(1, 10, VPS), pkt(2, 10, SPS), pkt(3, 10, PPS), pkt(4, 10, SEI)]
    (unit,) = run([*packets, pkt(5, 10, IDR, marker=True)])
    assert unit.nal_units == (VPS, SPS, PPS, SEI, IDR)
    assert unit.is_keyframe and unit.new_parameters
    assert unit.parameters is not None
    assert unit.parameters.annexb() == b"".join(b"\x00\x00\x00\x01" + n for n in (VPS, SPS, PPS))
    assert (unit.parameters.width, unit.parameters.height) == (320, 240)


def test_aggregation_packet() -> None:
    (unit,) = run([pkt(1, 10, ap(AUD, VPS, SPS, PPS, IDR), marker=True)])
    assert unit.nal_units == (AUD, VPS, SPS, PPS, IDR)


def test_fragmentation_unit_rebuilds_header() -> None:
    frags = fu_payloads(H265, IDR[:2], [IDR[2:4], IDR[4:5], IDR[5:]])
    assert frags[0][:3] == b"\x62\x01\x94"
    packets = [pkt(1 + i, 10, f, marker=i == 2) for i, f in enumerate(frags)]
    (unit,) = run(packets, SPROP)
    assert unit.nal_units == (IDR,)


def test_sprop_parameters() -> None:
    depacketizer = H265Depacketizer({**SPROP, "sprop-sps": " , junk!," + SPROP["sprop-sps"]})
    assert depacketizer.parameters is not None
    assert depacketizer.parameters.nal_units() == (VPS, SPS, PPS)
    units = drain(depacketizer, [pkt(1, 10, IDR, True), pkt(2, 20, TRAIL, True)])
    assert [(u.is_keyframe, u.new_parameters) for u in units] == [(True, True), (False, False)]


def test_missing_vps_means_no_parameters() -> None:
    depacketizer = H265Depacketizer({k: v for k, v in SPROP.items() if k != "sprop-vps"})
    assert depacketizer.parameters is None
    assert drain(depacketizer, [pkt(1, 10, IDR, True)]) == []
    assert depacketizer.stats.dropped_units == 1


def test_loss_waits_for_next_irap() -> None:
    depacketizer = H265Depacketizer(SPROP)
    packets = [
        pkt(1, 10, IDR, True),
        pkt(3, 20, TRAIL, True),  # seq 2 lost
        pkt(4, 30, TRAIL, True),
        pkt(5, 40, IDR, True),
    ]
    units = drain(depacketizer, packets)
    assert [(u.timestamp, u.loss_before) for u in units] == [(10, False), (40, True)]
    assert depacketizer.state is DepacketizerState.BETWEEN_FRAMES


@pytest.mark.parametrize("key", ["sprop-max-don-diff", "sprop-depack-buf-nalus"])
def test_donl_refused(key: str) -> None:
    with pytest.raises(CameraProtocolError) as info:
        H265Depacketizer({key: "2"})
    assert str(info.value) == (
        f"H.265 stream announces {key}=2: DONL fields (interleaved decoding order) "
        f"are not supported"
    )


def test_zero_don_diff_accepted() -> None:
    assert H265Depacketizer({"sprop-max-don-diff": "0"}).parameters is None


FU_START = b"\x62\x01\x93\x01"
FU_END = b"\x62\x01\x53\x02"


@pytest.mark.parametrize(
    ("payloads", "detail"),
    [
        ([b""], "0 bytes cannot hold the 2-byte NAL unit header"),
        ([b"\x26"], "1 bytes cannot hold the 2-byte NAL unit header"),
        ([b"\xa6\x01\x00"], "forbidden_zero_bit is set in the NAL unit header"),
        ([b"\x26\x00\x00"], "nuh_temporal_id_plus1 is 0 in the NAL unit header"),
        ([b"\x64\x01\x00"], "PACI packets (type 50) are not supported"),
        ([b"\x66\x01\x00"], "NAL unit type 51 is undefined in RFC 7798"),
        ([b"\x60\x01"], "AP holds no NAL unit"),
        ([b"\x60\x01\x00"], "AP ends in a partial NAL unit size at offset 2"),
        (
            [b"\x60\x01\x00\x09\x26\x01"],
            "AP NAL unit of 9 bytes at offset 2 overruns the packet (2 bytes left)",
        ),
        ([ap(b"\x62\x01\x93")], "AP holds a NAL unit of type 49"),
        ([ap(b"\x26")], "1 bytes cannot hold the 2-byte NAL unit header"),
        ([b"\x62\x01\x93"], "FU of 3 bytes has no fragment data"),
        ([b"\x62\x01\xd3\x00"], "FU of NAL type 19 has both start and end bits set"),
        ([b"\x62\x01\xb1\x00"], "FU carries NAL unit type 49"),
        ([FU_END], "FU fragment of NAL type 19 without its start"),
        (
            [FU_START, FU_START],
            "FU start of NAL type 19 before the previous fragmented NAL unit ended",
        ),
        (
            [FU_START, b"\x62\x01\x41\x03"],
            "FU fragment of NAL type 1 continues a NAL unit of type 19",
        ),
    ],
)
def test_malformed_packets(payloads: list[bytes], detail: str) -> None:
    depacketizer = H265Depacketizer(SPROP)
    assert len(drain(depacketizer, [pkt(1, 10, IDR, True)])) == 1
    packets = [pkt(2 + i, 20, p) for i, p in enumerate(payloads)]
    bad = expect_refused(depacketizer, packets, "H.265", detail)
    assert depacketizer.waiting_for_keyframe
    seq = bad.sequence + 1
    units = drain(depacketizer, [pkt(seq, 30, TRAIL, True), pkt(seq + 1, 40, IDR, True)])
    assert [(u.timestamp, u.loss_before) for u in units] == [(40, True)]
