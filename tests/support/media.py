"""Test media made at test time: encoded video clips as access units."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.codeccontext import VideoCodecContext

from nvr.media import VideoCodec, VideoParameters
from nvr.storage.nal_framing import annexb_nal_units

GOP = 25


@dataclass(frozen=True)
class Clip:
    params: VideoParameters
    units: list[tuple[tuple[bytes, ...], bool]]  # (NAL units, keyframe) per access unit


def _our_sei(codec: VideoCodec, i: int) -> bytes:
    """A user_data_unregistered SEI unique to frame ``i`` (no zero bytes: no emulation)."""
    payload = bytes(range(0x11, 0x21)) + struct.pack(">I", 0x01010101 + i)
    body = bytes([5, len(payload)]) + payload + b"\x80"
    return (b"\x06" if codec is VideoCodec.H264 else b"\x4e\x01") + body


def encode_clip(codec: VideoCodec, frames: int, width: int = 128, height: int = 72) -> Clip:
    name = "libx264" if codec is VideoCodec.H264 else "libx265"
    ctx = av.CodecContext.create(name, "w")
    assert isinstance(ctx, VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 25)
    ctx.framerate = Fraction(25)
    ctx.gop_size = GOP
    ctx.max_b_frames = 0
    if codec is VideoCodec.H264:
        ctx.options = {"preset": "ultrafast", "x264-params": f"aud=1:keyint={GOP}:scenecut=0"}
    else:
        ctx.options = {
            "preset": "ultrafast",
            "x265-params": f"bframes=0:keyint={GOP}:min-keyint={GOP}:scenecut=0:aud=1"
            ":repeat-headers=1:log-level=error",
        }
    packets = []
    for i in range(frames):
        frame = av.VideoFrame(width, height, "yuv420p")
        for n, plane in enumerate(frame.planes):
            plane.update(
                bytes(
                    (x * 7 + i * 5 + n * 40 + (x * x >> 5)) & 0xFF for x in range(plane.buffer_size)
                )
            )
        frame.pts = i
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    units = []
    for i, packet in enumerate(packets):
        assert packet.pts == i  # no reordering
        nals = annexb_nal_units(bytes(packet))
        nals.insert(1, _our_sei(codec, i))  # after the AUD
        units.append((tuple(nals), packet.is_keyframe))
    first = units[0][0]
    if codec is VideoCodec.H264:
        pick = {nal[0] & 0x1F: nal for nal in first}
        params = VideoParameters(codec, pick[7], pick[8], None, width, height)
    else:
        pick = {(nal[0] >> 1) & 0x3F: nal for nal in first}
        params = VideoParameters(codec, pick[33], pick[34], pick[32], width, height)
    return Clip(params, units)
