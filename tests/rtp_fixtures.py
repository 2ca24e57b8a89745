"""Helpers for the depacketizer tests (not a test module).

* ``gst`` runs a real GStreamer packetizer (rtph264pay, rtph265pay, rtpmp4gpay,
  rtppcmapay) at test time; its RTP goes through ``rtpstreampay`` (RFC 4571 framing:
  a 16-bit length before each packet) into a file that ``read_rfc4571`` splits again.
  A payloader's caps (the fmtp it announces) go through ``gdppay`` into a file that
  ``read_gdp_caps`` reads: ``gst-launch-1.0 -v`` is no way to learn them, since it
  prints a property only if its notification reaches the bus, and one emitted while
  another streaming thread emits one too is sometimes lost.
* ``access_units`` cuts the encoder's own Annex B byte stream (teed off before the
  payloader) into access units, the reference the depacketized output must match.
* ``packetize`` is a second, independent packetizer: it re-packs the same NAL units
  with any fragment size, with or without aggregation, markers and timestamp quirks.
* The checks both NAL depacketizers' tests run (``repacketized``, ``check_fu_boundaries``,
  ``depacketize_lossy``...) take the depacketizer class and build one per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
from hypothesis import strategies as st

from nvr.errors import DepacketizeError
from nvr.ingest.nal import NalDepacketizer, split_annexb
from nvr.ingest.rtp import parse_rtp
from nvr.media import RtpPacket, VideoAccessUnit, VideoCodec, VideoParameters

AccessUnit = tuple[bytes, ...]
Unit = TypeVar("Unit")
Unit_co = TypeVar("Unit_co", covariant=True)
NewDepacketizer = Callable[[Mapping[str, str]], NalDepacketizer]  # H264/H265Depacketizer


class Depacketizer(Protocol[Unit_co]):
    def push(self, packet: RtpPacket) -> None: ...

    def pull(self) -> Unit_co | None: ...


H264_PREFIX_TYPES = frozenset({6, 7, 8, 9, 14, 15, 16, 17, 18})
H265_PREFIX_TYPES = frozenset({32, 33, 34, 35, 39, 41, 42, 43, 44})


def gst(pipeline: str) -> None:
    """Run ``gst-launch-1.0`` on ``pipeline``; its results are the files it writes."""
    launcher = shutil.which("gst-launch-1.0")
    if launcher is None:
        pytest.skip("gst-launch-1.0 is not installed (Debian package gstreamer1.0-tools)")
    result = subprocess.run(
        [launcher, "-q", *shlex.split(pipeline)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"gst-launch-1.0 failed ({result.returncode}): {result.stderr[-2000:]}")


GDP_HEADER_LEN = 62  # GStreamer Data Protocol 1.0: payload type at 4, payload length at 6
GDP_PAYLOAD_CAPS = 2


def read_gdp_caps(path: Path) -> str:
    """The first caps in a ``gdppay`` stream, as ``gst_caps_to_string`` wrote them."""
    data = path.read_bytes()
    pos = 0
    while pos + GDP_HEADER_LEN <= len(data):
        kind, size = struct.unpack_from("!HI", data, pos + 4)
        start = pos + GDP_HEADER_LEN
        if kind == GDP_PAYLOAD_CAPS:
            return data[start : start + size].rstrip(b"\x00").decode()
        pos = start + size
    raise AssertionError(f"no caps in the GDP stream {path} ({len(data)} bytes)")


def read_rfc4571(path: Path) -> list[bytes]:
    data = path.read_bytes()
    packets: list[bytes] = []
    pos = 0
    while pos < len(data):
        (size,) = struct.unpack_from("!H", data, pos)
        packets.append(data[pos + 2 : pos + 2 + size])
        pos += 2 + size
    return packets


def rtp_packets(path: Path) -> list[RtpPacket]:
    return [parse_rtp(raw) for raw in read_rfc4571(path)]


def nal_type(codec: VideoCodec, nal: bytes) -> int:
    return nal[0] & 0x1F if codec is VideoCodec.H264 else (nal[0] >> 1) & 0x3F


def is_vcl(codec: VideoCodec, nal: bytes) -> bool:
    kind = nal_type(codec, nal)
    return 1 <= kind <= 5 if codec is VideoCodec.H264 else kind < 32


def is_keyframe_nal(codec: VideoCodec, nal: bytes) -> bool:
    kind = nal_type(codec, nal)
    return kind == 5 if codec is VideoCodec.H264 else 16 <= kind <= 23


def _first_slice(codec: VideoCodec, nal: bytes) -> bool:
    # H.264 first_mb_in_slice == 0 / H.265 first_slice_segment_in_pic_flag: first bit
    return bool(nal[1 if codec is VideoCodec.H264 else 2] & 0x80)


def access_units(codec: VideoCodec, nals: Iterable[bytes]) -> list[AccessUnit]:
    """Group NAL units in decoding order into access units (H.264 7.4.1.2.3,
    H.265 7.4.2.4.4): a unit opens at the first prefix NAL after a picture's slices,
    or at a slice that is the first of a new picture."""
    prefix = H264_PREFIX_TYPES if codec is VideoCodec.H264 else H265_PREFIX_TYPES
    units: list[AccessUnit] = []
    current: list[bytes] = []
    seen_slice = False
    for nal in nals:
        opens = (is_vcl(codec, nal) and _first_slice(codec, nal)) or (
            nal_type(codec, nal) in prefix
        )
        if seen_slice and opens:
            units.append(tuple(current))
            current, seen_slice = [], False
        seen_slice = seen_slice or is_vcl(codec, nal)
        current.append(nal)
    if current:
        units.append(tuple(current))
    return units


def byte_stream_units(codec: VideoCodec, path: Path) -> list[AccessUnit]:
    return access_units(codec, split_annexb(path.read_bytes()))


def with_inserted_parameters(codec: VideoCodec, unit: AccessUnit) -> AccessUnit:
    """What ``rtph26xpay config-interval=-1`` makes of an encoder's access unit.

    The payloader keeps every NAL unit (AUD and SEI included) and, before the first
    keyframe slice of a unit, sends the parameter sets it last saw once more, even
    when the encoder already put them in that unit (x264/x265 do, at each IDR).
    """
    if not any(is_keyframe_nal(codec, nal) for nal in unit):
        return unit
    param_types = {7, 8} if codec is VideoCodec.H264 else {32, 33, 34}
    params = tuple(nal for nal in unit if nal_type(codec, nal) in param_types)
    first = next(i for i, nal in enumerate(unit) if is_keyframe_nal(codec, nal))
    return unit[:first] + params + unit[first:]


@dataclass(frozen=True)
class VideoFixture:
    codec: VideoCodec
    packets: list[RtpPacket]
    source: list[AccessUnit]  # from the encoder's byte stream, in decoding order
    expected: list[AccessUnit]  # what the RTP stream carries for each source unit


def video_fixture(
    tmp_path_factory: pytest.TempPathFactory, codec: VideoCodec, frames: int, payloader: str
) -> VideoFixture:
    """Encode a test pattern, tee the byte stream to a file and through ``payloader``."""
    workdir = tmp_path_factory.mktemp(codec.value)
    rtp = workdir / "stream.rtp"
    es = workdir / "stream.es"
    if codec is VideoCodec.H264:
        encoder = "x264enc key-int-max=10 bframes=0 speed-preset=ultrafast ! video/x-h264"
    else:
        encoder = "x265enc key-int-max=10 speed-preset=ultrafast ! video/x-h265"
    gst(
        f"videotestsrc num-buffers={frames} pattern=ball ! "
        f"video/x-raw,width=320,height=240,framerate=25/1 ! {encoder},stream-format=byte-stream "
        f"! tee name=t ! queue ! {payloader} ! rtpstreampay ! filesink location={rtp} "
        f"t. ! queue ! filesink location={es}"
    )
    source = byte_stream_units(codec, es)
    return VideoFixture(
        codec=codec,
        packets=rtp_packets(rtp),
        source=source,
        expected=[with_inserted_parameters(codec, unit) for unit in source],
    )


def requested_video_fixture(request: pytest.FixtureRequest) -> VideoFixture:
    """The ``VideoFixture`` that a parametrized fixture's parameter names."""
    fixture: VideoFixture = request.getfixturevalue(request.param)
    return fixture


def pkt(seq: int, ts: int, payload: bytes, marker: bool = False) -> RtpPacket:
    """A hand-built video packet (payload type 96)."""
    return RtpPacket(96, marker, seq, ts, 0x1234, payload)


def without_markers(packets: Iterable[RtpPacket]) -> list[RtpPacket]:
    return [dataclasses.replace(packet, marker=False) for packet in packets]


def drain(depacketizer: Depacketizer[Unit], packets: Iterable[RtpPacket]) -> list[Unit]:
    units: list[Unit] = []
    for packet in packets:
        depacketizer.push(packet)
        while (unit := depacketizer.pull()) is not None:
            units.append(unit)
    return units


def depacketize_lossy(new: NewDepacketizer, packets: Iterable[RtpPacket]) -> list[VideoAccessUnit]:
    """``drain`` that goes on after a refused packet, as the session does."""
    depacketizer = new({})
    units: list[VideoAccessUnit] = []
    for packet in packets:
        with contextlib.suppress(DepacketizeError):
            depacketizer.push(packet)
        while (unit := depacketizer.pull()) is not None:
            units.append(unit)
    return units


def expect_refused(
    depacketizer: Depacketizer[object], packets: Sequence[RtpPacket], name: str, detail: str
) -> RtpPacket:
    """Push ``packets``: all but the last are taken, the last is refused with ``detail``
    in the message every depacketizer writes. Returns the refused packet."""
    for packet in packets[:-1]:
        depacketizer.push(packet)
    bad = packets[-1]
    with pytest.raises(DepacketizeError) as info:
        depacketizer.push(bad)
    assert str(info.value) == (
        f"{name} packet seq={bad.sequence} ts={bad.timestamp}: {detail}; "
        f"payload ({len(bad.payload)} bytes): {bad.payload.hex(' ')}"
    )
    return bad


def check_encoder_units(units: Sequence[VideoAccessUnit], fixture: VideoFixture) -> VideoParameters:
    """What holds for a real payloader's stream of ``video_fixture``: the encoder's units
    (with the payloader's insertions), parameters new on the first unit only, 320x240.
    Returns those parameters."""
    assert [unit.nal_units for unit in units] == fixture.expected
    assert [unit.new_parameters for unit in units] == [True] + [False] * (len(units) - 1)
    params = units[0].parameters
    assert params is not None
    assert (params.width, params.height) == (320, 240)
    return params


def repacketized(
    new: NewDepacketizer, fixture: VideoFixture, options: PackOptions
) -> tuple[list[VideoAccessUnit], list[VideoAccessUnit]]:
    """The fixture's units as depacketized, and again after ``packetize`` re-packed them."""
    reference = drain(new({}), fixture.packets)
    units = [(unit.timestamp, unit.nal_units) for unit in reference]
    return reference, drain(new({}), packetize(fixture.codec, units, options))


def check_fu_boundaries(new: NewDepacketizer, fixture: VideoFixture) -> int:
    """Each NAL unit of the first (key)frame unit and of the unit after it, cut into FU
    fragments at every byte offset (``every_fu_split``), comes out whole. Returns how many
    cuts were checked."""
    keyframe, following = drain(new({}), fixture.packets)[:2]
    lead = [pkt(i, keyframe.timestamp, nal) for i, nal in enumerate(keyframe.nal_units)]
    checked = 0
    for unit, before in ((keyframe, []), (following, lead)):
        for where, payloads in every_fu_split(fixture.codec, unit.nal_units):
            packets = before + [
                pkt(len(before) + i, unit.timestamp, p, marker=i == len(payloads) - 1)
                for i, p in enumerate(payloads)
            ]
            assert drain(new({}), packets)[-1].nal_units == unit.nal_units, where
            checked += 1
    return checked


def packet_edits(max_index: int, max_size: int) -> st.SearchStrategy[list[tuple[int, str]]]:
    """Hypothesis lists of ``mutate`` edits."""
    return st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=max_index),
            st.sampled_from(["drop", "dup", "swap", "late"]),
        ),
        max_size=max_size,
    )


def encoded_sps(workdir: Path, codec: VideoCodec, caps: str, encoder: str) -> bytes:
    """The SPS ``encoder`` (an x264enc / x265enc element) writes for one ``caps`` frame."""
    out = workdir / "one.es"
    video = "video/x-h264" if codec is VideoCodec.H264 else "video/x-h265"
    gst(
        f"videotestsrc num-buffers=1 ! video/x-raw,{caps} ! {encoder} ! "
        f"{video},stream-format=byte-stream ! filesink location={out}"
    )
    sps_type = 7 if codec is VideoCodec.H264 else 33
    return next(nal for nal in split_annexb(out.read_bytes()) if nal_type(codec, nal) == sps_type)


def check_clean_start(
    units: Sequence[VideoAccessUnit], reference: Sequence[VideoAccessUnit]
) -> None:
    """What must hold whatever was lost, duplicated or reordered: every unit equals the
    reference unit of its timestamp byte for byte, timestamps only go forward, and a
    unit that does not directly follow the previous reference unit (or is the first)
    is a keyframe with parameters, flagged ``loss_before`` unless it is the first."""
    position = {unit.timestamp: i for i, unit in enumerate(reference)}
    previous = -1
    for count, unit in enumerate(units):
        assert unit.timestamp in position, f"unit {count} has unknown ts {unit.timestamp}"
        index = position[unit.timestamp]
        assert unit.nal_units == reference[index].nal_units, f"unit {count} differs"
        assert unit.is_keyframe == reference[index].is_keyframe
        assert index > previous, f"unit {count} goes back from {previous} to {index}"
        if index != previous + 1 or count == 0:
            assert unit.is_keyframe, f"unit {count} (reference {index}) starts after a gap"
            assert unit.parameters is not None
        if count > 0 and index != previous + 1:
            assert unit.loss_before, f"unit {count} (reference {index}) hides a loss"
        previous = index


def mutate(packets: Sequence[RtpPacket], edits: Iterable[tuple[int, str]]) -> list[RtpPacket]:
    """Apply ``(index, "drop" | "dup" | "swap" | "late")`` edits to a packet sequence."""
    out = list(packets)
    for index, edit in sorted(edits, key=lambda item: -item[0]):
        if index >= len(out):
            continue
        if edit == "drop":
            del out[index]
        elif edit == "dup":
            out.insert(index + 1, out[index])
        elif edit == "swap" and index + 1 < len(out):
            out[index], out[index + 1] = out[index + 1], out[index]
        elif edit == "late":
            out.insert(min(index + 5, len(out)), out.pop(index))
    return out


# ------------------------------------------------------------------ our packetizer

TIMESTAMP_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class PackOptions:
    fu_size: int = 1400  # bytes of NAL payload per FU fragment, and the single-NAL limit
    aggregate: bool = False  # pack runs of small NAL units into STAP-A / AP
    marker: bool = True  # set the marker on a unit's last packet
    params_own_timestamp: bool = False  # quirk: NAL units before the first slice stamped early


def packetize(
    codec: VideoCodec,
    units: Sequence[tuple[int, AccessUnit]],
    options: PackOptions,
    *,
    first_seq: int = 65500,
    ssrc: int = 0x1234,
) -> list[RtpPacket]:
    """RTP packets for ``(timestamp, unit)`` pairs; sequence numbers wrap past 65535."""
    packets: list[tuple[int, bool, bytes]] = []  # (timestamp, marker, payload)
    for timestamp, unit in units:
        first_slice = next(i for i, nal in enumerate(unit) if is_vcl(codec, nal))
        payloads: list[tuple[int, bytes]] = []
        for index, nal in enumerate(unit):
            stamp = timestamp
            if options.params_own_timestamp and index < first_slice:
                stamp = (timestamp - 1) & TIMESTAMP_MASK
            if len(nal) <= options.fu_size + (1 if codec is VideoCodec.H264 else 2):
                payloads.append((stamp, nal))
            else:
                payloads.extend((stamp, fu) for fu in fragments(codec, nal, options.fu_size))
        if options.aggregate:
            payloads = _aggregate_runs(codec, payloads, options.fu_size)
        for index, (stamp, payload) in enumerate(payloads):
            packets.append((stamp, options.marker and index == len(payloads) - 1, payload))
    return [
        RtpPacket(
            payload_type=96,
            marker=marker,
            sequence=(first_seq + i) & 0xFFFF,
            timestamp=stamp,
            ssrc=ssrc,
            payload=payload,
        )
        for i, (stamp, marker, payload) in enumerate(packets)
    ]


def fragments(codec: VideoCodec, nal: bytes, size: int) -> list[bytes]:
    """FU-A / FU payloads of ``nal``, ``size`` bytes of NAL payload each."""
    header_len = 1 if codec is VideoCodec.H264 else 2
    body = nal[header_len:]
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return fu_payloads(codec, nal[:header_len], chunks)


def fu_payloads(codec: VideoCodec, header: bytes, chunks: Sequence[bytes]) -> list[bytes]:
    """FU payloads carrying ``chunks`` of the NAL unit whose header is ``header``."""
    out: list[bytes] = []
    for i, chunk in enumerate(chunks):
        flags = (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0)
        if codec is VideoCodec.H264:
            out.append(bytes([(header[0] & 0xE0) | 28, flags | (header[0] & 0x1F)]) + chunk)
        else:
            kind = (header[0] >> 1) & 0x3F
            out.append(bytes([(header[0] & 0x81) | (49 << 1), header[1], flags | kind]) + chunk)
    return out


def every_fu_split(
    codec: VideoCodec, unit: AccessUnit
) -> Iterator[tuple[tuple[int, int], list[bytes]]]:
    """Payloads of ``unit`` with one NAL unit cut into FU fragments, for every NAL unit
    and every cut offset: two fragments, and three with a one-byte middle fragment.
    Yields ``((nal index, offset), payloads)``; the other NAL units go whole."""
    header_len = 1 if codec is VideoCodec.H264 else 2
    for index, nal in enumerate(unit):
        body = nal[header_len:]
        for cut in range(1, len(body)):
            splits = [[body[:cut], body[cut:]]]
            if cut + 1 < len(body):
                splits.append([body[:cut], body[cut : cut + 1], body[cut + 1 :]])
            for chunks in splits:
                frags = fu_payloads(codec, nal[:header_len], chunks)
                yield (index, cut), [*unit[:index], *frags, *unit[index + 1 :]]


def aggregate(codec: VideoCodec, nals: Sequence[bytes]) -> bytes:
    """A STAP-A (H.264) or AP (H.265) payload holding ``nals``."""
    if codec is VideoCodec.H264:
        header = bytes([max(nal[0] & 0x60 for nal in nals) | 24])
    else:
        header = bytes([48 << 1, min(nal[1] for nal in nals)])
    return header + b"".join(struct.pack("!H", len(nal)) + nal for nal in nals)


def _aggregate_runs(
    codec: VideoCodec, payloads: list[tuple[int, bytes]], limit: int
) -> list[tuple[int, bytes]]:
    """Pack runs of whole NAL units with one timestamp into aggregates of <= ``limit`` bytes."""
    fu_type = 28 if codec is VideoCodec.H264 else 49
    out: list[tuple[int, bytes]] = []
    run: list[bytes] = []
    run_stamp = -1

    def flush() -> None:
        if len(run) == 1:
            out.append((run_stamp, run[0]))
        elif run:
            out.append((run_stamp, aggregate(codec, run)))
        run.clear()

    for stamp, payload in payloads:
        if nal_type(codec, payload) == fu_type:
            flush()
            out.append((stamp, payload))
            continue
        size = 2 + sum(2 + len(nal) for nal in run) + 2 + len(payload)
        if run and (stamp != run_stamp or size > limit):
            flush()
        run.append(payload)
        run_stamp = stamp
    flush()
    return out
