"""A still picture from the recordings: the keyframe at or before a time, decoded to JPEG.

The only decoding the recorder does. Blocking (PyAV): call it from a thread.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
from av.video.codeccontext import VideoCodecContext

from nvr.errors import StorageError


def keyframe_jpeg(path: Path, media_90k: int, quality: int = 4) -> bytes:
    """JPEG of the keyframe at or before ``media_90k`` (from the segment's start) in ``path``.

    ``quality`` is the MJPEG quantiser (2 best .. 31 worst).
    """
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            tb = stream.time_base or Fraction(1, 90_000)
            target = int(Fraction(max(0, media_90k), 90_000) / tb)
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                return _encode_jpeg(frame, quality)
    except (av.FFmpegError, OSError) as exc:
        raise StorageError(f"{path}: cannot decode a picture: {exc}") from None
    raise StorageError(f"{path}: no picture at or before {media_90k / 90_000:.3f} s")


def _encode_jpeg(frame: av.VideoFrame, quality: int) -> bytes:
    enc = av.CodecContext.create("mjpeg", "w")
    assert isinstance(enc, VideoCodecContext)
    enc.width, enc.height = frame.width, frame.height
    enc.pix_fmt = "yuvj420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {"qmin": str(quality), "qmax": str(quality)}
    packets = enc.encode(frame.reformat(format="yuvj420p"))
    packets += enc.encode(None)
    if not packets:
        raise StorageError("the JPEG encoder gave no picture")
    return b"".join(bytes(p) for p in packets)
