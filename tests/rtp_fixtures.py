"""Helpers for the depacketizer tests (not a test module).

* ``gst`` runs a real GStreamer packetizer (rtph264pay, rtph265pay, rtpmp4gpay,
  rtppcmapay) at test time; its RTP goes through ``rtpstreampay`` (RFC 4571 framing:
  a 16-bit length before each packet) into a file that ``read_rfc4571`` splits again.
* ``access_units`` cuts the encoder's own Annex B byte stream (teed off before the
  payloader) into access units, the reference the depacketized output must match.
* ``packetize`` is a second, independent packetizer: it re-packs the same NAL units
  with any fragment size, with or without aggregation, markers and timestamp quirks.
"""

from __future__ import annotations

import shlex
import shutil
import struct
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from nvr.ingest.nal import NalDepacketizer, split_annexb
from nvr.ingest.rtp import parse_rtp
from nvr.media import RtpPacket, VideoAccessUnit, VideoCodec

AccessUnit = tuple[bytes, ...]

H264_PREFIX_TYPES = frozenset({6, 7, 8, 9, 14, 15, 16, 17, 18})
H265_PREFIX_TYPES = frozenset({32, 33, 34, 35, 39, 41, 42, 43, 44})


def gst(pipeline: str, *, verbose: bool = False) -> str:
    """Run ``gst-launch-1.0`` on ``pipeline``; returns its output (caps with ``verbose``)."""
    launcher = shutil.which("gst-launch-1.0")
    if launcher is None:
        pytest.skip("gst-launch-1.0 is not installed (Debian package gstreamer1.0-tools)")
    result = subprocess.run(
        [launcher, "-v" if verbose else "-q", *shlex.split(pipeline)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"gst-launch-1.0 failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


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
    workdir: Path, codec: VideoCodec, *, frames: int, payloader: str, name: str
) -> VideoFixture:
    """Encode a test pattern, tee the byte stream to a file and through ``payloader``."""
    rtp = workdir / f"{name}.rtp"
    es = workdir / f"{name}.es"
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


def drain(depacketizer: NalDepacketizer, packets: Iterable[RtpPacket]) -> list[VideoAccessUnit]:
    units: list[VideoAccessUnit] = []
    for packet in packets:
        depacketizer.push(packet)
        while (unit := depacketizer.pull()) is not None:
            units.append(unit)
    return units


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
