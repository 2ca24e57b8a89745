"""Audio depacketizers: real rtpmp4gpay / rtppcmapay / rtppcmupay packets against the
encoder's own frames, hand-built RFC 3640 packets, loss and errors."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from nvr.errors import CameraProtocolError, DepacketizeError
from nvr.ingest.audio import AacDepacketizer, G711Depacketizer
from nvr.media import AudioCodec, MediaDescription, RtpPacket
from rtp_fixtures import drain, expect_refused, gst, read_gdp_caps, rtp_packets

HBR = {"mode": "AAC-hbr", "sizelength": "13", "indexlength": "3", "indexdeltalength": "3"}
CONFIG = "1408"


def media(encoding: str, fmtp: dict[str, str], clock_rate: int = 16000) -> MediaDescription:
    return MediaDescription("audio", 97, encoding, clock_rate, 1, fmtp, "rtsp://cam/audio")


def aac(fmtp: dict[str, str] | None = None) -> AacDepacketizer:
    return AacDepacketizer(media("MPEG4-GENERIC", {**HBR, "config": CONFIG, **(fmtp or {})}))


def pkt(seq: int, ts: int, payload: bytes, marker: bool = True) -> RtpPacket:
    return RtpPacket(97, marker, seq, ts, 0x42, payload)


def hbr_payload(*aus: bytes, sizes: list[int] | None = None) -> bytes:
    """AU-headers-length, one 16-bit header (13-bit size, 3-bit index 0) per AU, data."""
    sizes = sizes if sizes is not None else [len(au) for au in aus]
    headers = b"".join((size << 3).to_bytes(2, "big") for size in sizes)
    return (16 * len(sizes)).to_bytes(2, "big") + headers + b"".join(aus)


# ------------------------------------------------------------------ real packets


@dataclass(frozen=True)
class AacFixture:
    media: MediaDescription
    packets: list[RtpPacket]
    frames: list[bytes]  # raw AUs from the encoder's ADTS stream


def adts_frames(data: bytes) -> list[bytes]:
    frames: list[bytes] = []
    pos = 0
    while pos < len(data):
        header_len = 7 if data[pos + 1] & 0x01 else 9  # protection_absent
        length = ((data[pos + 3] & 0x03) << 11) | (data[pos + 4] << 3) | (data[pos + 5] >> 5)
        frames.append(data[pos + header_len : pos + length])
        pos += length
    return frames


def aac_fixture(workdir: Path, payloader: str) -> AacFixture:
    """The payloader's RTP, its caps (through ``gdppay``) and the encoder's ADTS frames."""
    rtp, caps, adts = workdir / "aac.rtp", workdir / "aac.gdp", workdir / "aac.adts"
    gst(
        "audiotestsrc num-buffers=40 wave=pink-noise ! audio/x-raw,rate=16000,channels=1 ! "
        f"avenc_aac ! tee name=t ! queue ! {payloader} ! tee name=p ! queue ! rtpstreampay ! "
        f"filesink location={rtp} p. ! queue ! gdppay ! filesink location={caps} "
        f"t. ! queue ! aacparse ! audio/mpeg,stream-format=adts ! filesink location={adts}"
    )
    fmtp = dict(re.findall(r"([a-z]+)=\(string\)([^,\s]+)", read_gdp_caps(caps)))
    description = media("MPEG4-GENERIC", {k: v for k, v in fmtp.items() if k != "media"})
    return AacFixture(description, rtp_packets(rtp), adts_frames(adts.read_bytes()))


@pytest.fixture(scope="session")
def aac_whole(tmp_path_factory: pytest.TempPathFactory) -> AacFixture:
    return aac_fixture(tmp_path_factory.mktemp("aac"), "rtpmp4gpay")


@pytest.fixture(scope="session")
def aac_fragmented(tmp_path_factory: pytest.TempPathFactory) -> AacFixture:
    return aac_fixture(tmp_path_factory.mktemp("aac"), "rtpmp4gpay mtu=80")


@pytest.mark.parametrize("name", ["aac_whole", "aac_fragmented"])
def test_real_aac_matches_encoder_frames(name: str, request: pytest.FixtureRequest) -> None:
    fixture: AacFixture = request.getfixturevalue(name)
    if name == "aac_fragmented":
        assert len(fixture.packets) > len(fixture.frames)  # some AUs were fragmented
    assert fixture.media.fmtp["mode"] == "AAC-hbr"
    frames = drain(AacDepacketizer(fixture.media), fixture.packets)
    assert [frame.data for frame in frames] == fixture.frames
    assert {frame.samples for frame in frames} == {1024}
    steps = {(b.timestamp - a.timestamp) % 2**32 for a, b in itertools.pairwise(frames)}
    assert steps == {1024}
    assert frames[0].config == bytes.fromhex(fixture.media.fmtp["config"])
    assert (frames[0].clock_rate, frames[0].channels, frames[0].codec) == (16000, 1, AudioCodec.AAC)


def test_real_aac_fragment_loss_drops_one_au(aac_fragmented: AacFixture) -> None:
    packets = aac_fragmented.packets
    lost = next(
        i for i, p in enumerate(packets[1:], 1) if not p.marker and not packets[i - 1].marker
    )
    depacketizer = AacDepacketizer(aac_fragmented.media)
    frames = drain(depacketizer, packets[:lost] + packets[lost + 1 :])
    assert len(frames) == len(aac_fragmented.frames) - 1
    assert depacketizer.stats.lost == 1
    assert depacketizer.stats.dropped_units == 1
    assert set(frame.data for frame in frames) < set(aac_fragmented.frames)


@pytest.mark.parametrize(
    ("element", "codec"), [("alawenc ! rtppcmapay", "PCMA"), ("mulawenc ! rtppcmupay", "PCMU")]
)
def test_real_g711(tmp_path: Path, element: str, codec: str) -> None:
    encoder, payloader = element.split(" ! ")
    rtp, raw = tmp_path / "g711.rtp", tmp_path / "g711.raw"
    gst(
        "audiotestsrc num-buffers=20 samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 ! "
        f"{encoder} ! tee name=t ! queue ! {payloader} ! rtpstreampay ! filesink location={rtp} "
        f"t. ! queue ! filesink location={raw}"
    )
    frames = drain(G711Depacketizer(media(codec, {}, 8000)), rtp_packets(rtp))
    assert b"".join(frame.data for frame in frames) == raw.read_bytes()
    assert sum(frame.samples for frame in frames) == len(raw.read_bytes())
    assert {frame.codec for frame in frames} == {AudioCodec(codec.lower())}
    assert all(frame.config is None for frame in frames)


# ------------------------------------------------------------- hand-built AAC


def test_several_aus_per_packet() -> None:
    frames = drain(aac(), [pkt(1, 1000, hbr_payload(b"one", b"three", b"x"))])
    assert [(f.timestamp, f.data) for f in frames] == [
        (1000, b"one"),
        (2024, b"three"),
        (3048, b"x"),
    ]
    assert frames[0].config == bytes.fromhex(CONFIG)


def test_timestamps_wrap_and_constant_duration() -> None:
    frames = drain(aac({"constantduration": "960"}), [pkt(1, 2**32 - 500, hbr_payload(b"a", b"b"))])
    assert [(f.timestamp, f.samples) for f in frames] == [(2**32 - 500, 960), (460, 960)]


def test_aac_lbr() -> None:
    depacketizer = AacDepacketizer(media("MPEG4-GENERIC", {"mode": "aac-lbr", "config": CONFIG}))
    # two 8-bit headers: 6-bit size, 2-bit index / index-delta
    payload = b"\x00\x10" + bytes([3 << 2, 2 << 2]) + b"abcde"
    frames = drain(depacketizer, [pkt(1, 0, payload)])
    assert [f.data for f in frames] == [b"abc", b"de"]


def test_fragmented_au() -> None:
    au = bytes(range(200))
    packets = [
        pkt(1, 0, hbr_payload(au[:80], sizes=[200]), marker=False),
        pkt(2, 0, hbr_payload(au[80:160], sizes=[200]), marker=False),
        pkt(3, 0, hbr_payload(au[160:], sizes=[200])),
        pkt(4, 1024, hbr_payload(b"next")),
    ]
    frames = drain(aac(), packets)
    assert [(f.timestamp, f.data) for f in frames] == [(0, au), (1024, b"next")]


def test_joined_in_the_middle_of_a_fragmented_au() -> None:
    depacketizer = aac()
    packets = [
        pkt(1, 0, hbr_payload(b"middle", sizes=[20]), marker=False),
        pkt(2, 0, hbr_payload(b"end", sizes=[20])),  # short at its marker: dropped quietly
        pkt(3, 1024, hbr_payload(b"whole")),
    ]
    assert [f.data for f in drain(depacketizer, packets)] == [b"whole"]
    assert (depacketizer.stats.errors, depacketizer.stats.discarded) == (0, 1)


def test_loss_drops_only_the_partial_au() -> None:
    au = bytes(range(200))
    depacketizer = aac()
    packets = [
        pkt(1, 0, hbr_payload(b"first")),
        pkt(2, 1024, hbr_payload(au[:80], sizes=[200]), marker=False),
        # seq 3 lost
        pkt(4, 1024, hbr_payload(au[160:], sizes=[200])),
        pkt(5, 2048, hbr_payload(b"after")),
        pkt(7, 3072, hbr_payload(au[80:], sizes=[200])),  # continuation after loss
        pkt(8, 4096, hbr_payload(b"last")),
    ]
    frames = drain(depacketizer, packets)
    assert [f.data for f in frames] == [b"first", b"after", b"last"]
    assert (depacketizer.stats.lost, depacketizer.stats.dropped_units) == (2, 1)


@pytest.mark.parametrize(
    ("payloads", "detail"),
    [
        ([b"\x00"], "payload of 1 bytes has no AU-headers-length"),
        ([b"\x00\x20\x00"], "AU-headers-length of 32 bits overruns the payload of 3 bytes"),
        (
            [b"\x00\x00"],
            "AU-headers-length of 0 bits is not a whole number of AU headers "
            "(16 bits, then 16 each)",
        ),
        (
            [b"\x00\x0c\x00\x00"],
            "AU-headers-length of 12 bits is not a whole number of AU headers "
            "(16 bits, then 16 each)",
        ),
        (
            [b"\x00\x10\x00\x19" + b"abc"],
            "AU-index(-delta) 1 in AU header 1: interleaving is not supported",
        ),
        (
            [hbr_payload(b"ab", sizes=[1])],
            "AU headers announce 1 bytes of AU data, the packet has 2",
        ),
        (
            [hbr_payload(b"ab", b"c", sizes=[2, 3])],
            "AU headers announce 5 bytes of AU data, the packet has 3",
        ),
        (
            [hbr_payload(b"ab", sizes=[9]), hbr_payload(b"cd", sizes=[8])],
            "fragment of an AU of 8 bytes interrupts the fragmented AU of 9 bytes at ts=0",
        ),
        (
            [hbr_payload(b"ab", sizes=[9]), hbr_payload(b"c")],
            "complete AUs arrived before the end of the fragmented AU of 9 bytes",
        ),
        (
            [hbr_payload(b"ab", sizes=[9]), hbr_payload(b"cd", sizes=[9])],
            "marker bit on a fragment with 4 of 9 AU bytes",
        ),
    ],
)
def test_aac_errors(payloads: list[bytes], detail: str) -> None:
    depacketizer = aac()
    drain(depacketizer, [pkt(1, 0, hbr_payload(b"sync"))])
    packets = [pkt(2 + i, 0, p, marker=i == len(payloads) - 1) for i, p in enumerate(payloads)]
    bad = expect_refused(depacketizer, packets, "AAC", detail)
    # the next packet of complete AUs is taken as usual
    frames = drain(depacketizer, [pkt(bad.sequence + 1, 1024, hbr_payload(b"ok"))])
    assert [f.data for f in frames] == [b"ok"]


def test_fragments_after_an_error_wait_for_a_marker() -> None:
    depacketizer = aac()
    with pytest.raises(DepacketizeError):
        depacketizer.push(pkt(1, 0, b"\x00"))
    packets = [
        pkt(2, 0, hbr_payload(b"tail", sizes=[9])),  # could be any fragment: discarded
        pkt(3, 1024, hbr_payload(b"abcd", sizes=[6]), marker=False),
        pkt(4, 1024, hbr_payload(b"ef", sizes=[6])),
    ]
    assert [f.data for f in drain(depacketizer, packets)] == [b"abcdef"]


@pytest.mark.parametrize(
    ("fmtp", "message"),
    [
        (
            {"mode": "generic"},
            "MPEG4-GENERIC mode='generic' is not supported (only AAC-hbr and AAC-lbr)",
        ),
        ({"mode": "AAC-hbr", "config": "12x4"}, "MPEG4-GENERIC config='12x4' is not hex"),
        (
            {"mode": "AAC-hbr", "sizelength": "thirteen"},
            "MPEG4-GENERIC sizelength='thirteen' is not an integer",
        ),
        ({"mode": "AAC-hbr", "sizelength": "-1"}, "MPEG4-GENERIC sizelength='-1' is negative"),
        (
            {"mode": "AAC-hbr", "ctsdeltalength": "16"},
            "MPEG4-GENERIC ctsdeltalength=16 is not supported",
        ),
    ],
)
def test_aac_fmtp_refused(fmtp: dict[str, str], message: str) -> None:
    with pytest.raises(CameraProtocolError) as info:
        AacDepacketizer(media("MPEG4-GENERIC", fmtp))
    assert str(info.value) == message


def test_aac_duplicates_and_reordering() -> None:
    depacketizer = aac()
    packets = [
        pkt(1, 0, hbr_payload(b"a")),
        pkt(1, 0, hbr_payload(b"a")),
        pkt(3, 2048, hbr_payload(b"c")),
    ]
    packets.append(pkt(2, 1024, hbr_payload(b"b")))
    assert [f.data for f in drain(depacketizer, packets)] == [b"a", b"c"]
    assert (
        depacketizer.stats.duplicates,
        depacketizer.stats.reordered,
        depacketizer.stats.lost,
    ) == (1, 1, 1)


# ------------------------------------------------------------------------ G.711


def test_g711_stereo_samples() -> None:
    depacketizer = G711Depacketizer(
        MediaDescription("audio", 8, "PCMU", 8000, 2, {}, "rtsp://cam/audio")
    )
    (frame,) = drain(depacketizer, [pkt(1, 160, bytes(320))])
    assert (frame.codec, frame.samples, frame.channels, frame.timestamp) == (
        AudioCodec.PCMU,
        160,
        2,
        160,
    )


@pytest.mark.parametrize(("channels", "payload"), [(1, b""), (2, b"\x01\x02\x03")])
def test_g711_bad_payload(channels: int, payload: bytes) -> None:
    depacketizer = G711Depacketizer(MediaDescription("audio", 8, "PCMA", 8000, channels, {}, ""))
    with pytest.raises(DepacketizeError) as info:
        depacketizer.push(pkt(9, 80, payload))
    assert str(info.value) == (
        f"PCMA packet seq=9 ts=80: payload of {len(payload)} bytes is not a whole number of "
        f"{channels}-channel samples"
    )


def test_g711_refuses_other_encodings() -> None:
    with pytest.raises(CameraProtocolError) as info:
        G711Depacketizer(media("G726-32", {}))
    assert str(info.value) == "G.711 depacketizer given encoding 'G726-32'"
