"""Where segments end (sans-IO) and how one segment file is written (PyAV, blocking).

:class:`RotationPolicy` is a pure decision on integers. :class:`SegmentMuxer` writes one
fragmented MP4 file through libavformat's mov muxer; it blocks and belongs in a writer
thread, never on the event loop. Video is remuxed, never transcoded: every NAL unit of
every access unit lands in the file byte for byte.

The file: ``ftyp``, an empty ``moov`` (written when the muxer is created), then
``moof``+``mdat`` fragments, a new one at every video keyframe and at the first sample
``max_fragment_90k`` or more after the fragment's start. Each fragment is in the kernel as
soon as the muxer has finished it (the sample that opens the next one), so ``kill -9``
loses the fragment in flight and no more: measured under 0.6 s with the 0.5 s default,
under a second in the worst case (see ``_mov_options``). Facts returned at close are read
back from the bytes written, with the same scanner crash recovery uses.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import av.error
from av.container import OutputContainer
from av.stream import Stream

from nvr.errors import StorageError, StorageFullError
from nvr.media import AudioCodec, AudioFrame, VideoCodec, VideoParameters
from nvr.storage.audio_aac import G711ToAac, adts_template
from nvr.storage.fsync import fsync_dir
from nvr.storage.model import SegmentFile
from nvr.storage.mp4box import Mp4Scanner, top_level_box, video_sample_entry
from nvr.storage.nal_framing import nal_units_to_sample
from nvr.storage.recovery_file import fragment_facts

__all__ = [
    "AudioTrackSpec",
    "RotationPolicy",
    "SegmentMuxer",
    "stagger_offset_90k",
]

_RATE_90K = 90_000
_TIME_BASE_90K = Fraction(1, _RATE_90K)
# Longest wait of one track's packets for the other's; with a 0.5 s fragment and a frame,
# what a crash can lose stays under a second.
_MAX_INTERLEAVE_US = 250_000
# No keyframe for this many segment lengths: the caller should say so loudly.
_OVERDUE_SEGMENTS = 3

# ---------------------------------------------------------------------------------------
# Rotation policy (sans-IO)


def stagger_offset_90k(camera_id: str, segment_90k: int) -> int:
    """A camera's fixed offset of its rotation grid, in whole seconds, 90 kHz units.

    Taken from a hash of the camera id so it is stable across restarts and hosts and
    needs no coordination. It spreads cameras evenly in expectation but cannot promise
    that no two share a second (16 cameras on a 60 s grid share one somewhere more often
    than not); the first keyframe after the boundary spreads them further.
    """
    if segment_90k <= 0:
        raise ValueError(f"segment_90k must be positive, got {segment_90k}")
    digest = hashlib.sha256(camera_id.encode("utf-8")).digest()
    seconds = max(1, segment_90k // _RATE_90K)
    return int.from_bytes(digest[:8], "big") % seconds * _RATE_90K % segment_90k


def assign_staggers(
    camera_ids: Iterable[str], segment_90k: int, fixed: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Rotation-grid offsets for a site's cameras, no two in the same second while they fit.

    Each camera starts from its hashed second (``stagger_offset_90k``) and, in id order,
    moves to the next free second if that one is taken, so most cameras keep their second
    when others are added or removed. Only a site with more cameras than the segment has
    seconds shares seconds. Cameras in ``fixed`` (already recording: a reload) keep their
    offsets, and the others are placed around them.
    """
    seconds = max(1, segment_90k // _RATE_90K)
    out: dict[str, int] = dict(fixed or {})
    taken = {offset // _RATE_90K for offset in out.values()}
    for cam in sorted(set(camera_ids) - out.keys()):
        second = stagger_offset_90k(cam, segment_90k) // _RATE_90K
        if len(taken) < seconds:
            while second in taken:
                second = (second + 1) % seconds
        taken.add(second)
        out[cam] = second * _RATE_90K % segment_90k
    return out


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """Decides at which frame a new segment starts.

    Boundaries lie at ``offset_90k + k * segment_90k`` of wall time. A segment ends at the
    first keyframe at or after the first boundary strictly after the segment's start, or
    at a keyframe that carries new parameter sets. It never ends on a non-keyframe: if a
    camera sends no keyframe for a long time the segment simply grows (``overdue`` tells
    the caller when that passes three segment lengths, to report it), because a segment
    must start with a picture that decodes on its own.
    """

    segment_90k: int
    offset_90k: int = 0

    def __post_init__(self) -> None:
        if self.segment_90k <= 0:
            raise ValueError(f"segment_90k must be positive, got {self.segment_90k}")

    def boundary_after(self, segment_start_wall_90k: int) -> int:
        """The first grid boundary strictly after ``segment_start_wall_90k``."""
        k = (segment_start_wall_90k - self.offset_90k) // self.segment_90k + 1
        return self.offset_90k + k * self.segment_90k

    def should_rotate(
        self,
        segment_start_wall_90k: int,
        frame_wall_90k: int,
        is_keyframe: bool,
        new_parameters: bool,
    ) -> bool:
        """True when this frame must be the first one of a new segment."""
        if not is_keyframe:
            return False
        if new_parameters:
            return True
        return frame_wall_90k >= self.boundary_after(segment_start_wall_90k)

    def overdue(self, segment_start_wall_90k: int, frame_wall_90k: int) -> bool:
        """The segment has run three lengths without a keyframe to cut at."""
        return frame_wall_90k - segment_start_wall_90k >= _OVERDUE_SEGMENTS * self.segment_90k


# ---------------------------------------------------------------------------------------
# The muxer (blocking)


@dataclass(frozen=True, slots=True)
class AudioTrackSpec:
    """The audio track of a segment: what the camera sends and what the file holds.

    ``mode="copy"`` stores AAC frames as they come (``codec`` must be AAC and ``config``
    its AudioSpecificConfig); ``mode="aac"`` decodes G.711 (PCMA/PCMU) and encodes AAC.
    G.711 is never stored as is.
    """

    codec: AudioCodec
    clock_rate: int  # Hz; also the track's timescale
    channels: int
    config: bytes | None  # AAC AudioSpecificConfig for AAC input, None for G.711
    mode: Literal["copy", "aac"]

    def __post_init__(self) -> None:
        if self.mode == "copy" and (self.codec is not AudioCodec.AAC or not self.config):
            raise ValueError(f"only AAC with its config can be copied, not {self.codec}")
        if self.mode == "aac" and self.codec is AudioCodec.AAC:
            raise ValueError("AAC input is copied, not transcoded")
        if self.clock_rate <= 0 or self.channels not in (1, 2):
            raise ValueError(f"bad audio rate/channels: {self.clock_rate}/{self.channels}")


def _mov_options(max_fragment_90k: int) -> dict[str, str]:
    """libavformat mov muxer options (see the module docstring for the file layout)."""
    max_fragment_us = max_fragment_90k * 1_000_000 // _RATE_90K
    return {
        # moov first with no samples, then self-contained moof+mdat pairs; a fragment
        # at every video keyframe; no mfra trailer (the index has the fragment table,
        # and a closed file then ends like a recovered one: after its last fragment).
        "movflags": "empty_moov+default_base_moof+frag_keyframe+skip_trailer",
        # ... and a new fragment at the first sample this long after the fragment start.
        "frag_duration": str(max_fragment_us),
        # Push the AVIO buffer to our file object after every packet, so a finished
        # fragment reaches the kernel at once instead of when 32 KiB have piled up.
        "flush_packets": "1",
        # Hold video back at most this long waiting for audio to interleave with (the
        # default is 10 s, all of it lost on a crash if the camera's audio stalls).
        "max_interleave_delta": str(_MAX_INTERLEAVE_US),
        "video_track_timescale": str(_RATE_90K),
    }


class _FileSink:
    """The muxer's output: an unbuffered, append-only, non-seekable file.

    Non-seekable so the muxer never goes back to patch earlier bytes (the bytes we
    scanned and hashed are the file), unbuffered so what the muxer flushes is in the
    kernel when ``write`` returns.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.scanner = Mp4Scanner()
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)
        self.digest.update(data)
        self.scanner.feed(data)
        return len(data)


def _add_from_template(container: OutputContainer, fmt: str, data: bytes) -> Stream:
    """An output stream copied from a demuxed stream of ``fmt``.

    PyAV has no public way to give a codec-less mux stream its extradata or codec tag,
    but a stream added from a template keeps an unopened codec context whose fields are
    copied into the output when the header is written. The caller overwrites the
    fields that matter (extradata, tag, time base); ``data`` only has to open.
    """
    with av.open(io.BytesIO(data), format=fmt) as src:
        return container.add_stream_from_template(src.streams[0], opaque=True)


@functools.lru_cache(maxsize=64)
def _sample_entry_config(video: VideoParameters, tag: str) -> bytes:
    """The avcC/hvcC record libavformat builds from our parameter sets.

    Written once into a throwaway in-memory file and read back. The real file then gets
    this record as extradata, which makes the mov muxer store our length-prefixed samples
    as they are instead of converting them (its HEVC converter drops in-band parameter
    sets when the sample entry is ``hvc1``).
    """
    out = io.BytesIO()
    with av.open(out, "w", format="mp4", options={"movflags": "empty_moov"}) as probe:
        _add_video_stream(probe, video, tag, video.annexb())
        probe.start_encoding()
    _, _, config = video_sample_entry(top_level_box(out.getvalue(), b"moov"))
    return config


def _add_video_stream(
    container: OutputContainer, video: VideoParameters, tag: str, extradata: bytes
) -> Stream:
    fmt = "h264" if video.codec is VideoCodec.H264 else "hevc"
    if not video.width or not video.height:
        # The mov muxer needs them for the sample entry; they come from the SPS.
        raise StorageError(f"{video.codec} video without width/height (SPS not parsed)")
    stream = _add_from_template(container, fmt, b"")
    ctx = stream.codec_context
    ctx.extradata = extradata
    ctx.codec_tag = tag
    ctx.width = video.width  # type: ignore[attr-defined]  # a video codec context
    ctx.height = video.height  # type: ignore[attr-defined]  # a video codec context
    stream.time_base = _TIME_BASE_90K
    return stream


class SegmentMuxer:
    """Writes one segment file. Blocking: run it in a writer thread.

    ``write_video`` takes Annex B access units with 90 kHz times relative to the segment
    start (no B-frames: decode order is presentation order); the first must be a keyframe
    at 0. ``write_audio`` takes audio frames with times in their clock rate, relative to
    the same start. ``close`` finishes the file, fsyncs it and returns its facts, read
    back from the bytes written.
    """

    def __init__(
        self,
        path: Path,
        video: VideoParameters,
        audio: AudioTrackSpec | None = None,
        max_fragment_90k: int = 45_000,
    ) -> None:
        if max_fragment_90k <= 0:
            raise ValueError(f"max_fragment_90k must be positive, got {max_fragment_90k}")
        self.path = path
        self.video_frames = 0
        self.audio_frames_dropped = 0  # out of order or before the segment start
        self._next_video_pts = 0
        self._last_audio_pts: int | None = None
        self._closed = False
        tag = "avc1" if video.codec is VideoCodec.H264 else "hvc1"
        try:
            config = _sample_entry_config(video, tag)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except (OSError, av.error.FFmpegError, StorageError) as exc:
            raise _storage_error(path, "cannot create", exc) from exc
        self._sink = _FileSink(fd)
        try:
            fsync_dir(path.parent)
            self._container = av.open(
                self._sink, "w", format="mp4", options=_mov_options(max_fragment_90k)
            )
            self._video = _add_video_stream(self._container, video, tag, config)
            self._audio: Stream | None = None
            self._g711: G711ToAac | None = None
            if audio is not None:
                self._add_audio(audio)
            self._container.start_encoding()  # ftyp + empty moov, flushed to the file
        except (OSError, av.error.FFmpegError, ValueError) as exc:
            self.abort()
            raise _storage_error(path, "cannot start", exc) from exc

    def _add_audio(self, spec: AudioTrackSpec) -> None:
        self._audio_codec = spec.codec
        stream = _add_from_template(self._container, "aac", adts_template())
        ctx = stream.codec_context
        if spec.mode == "aac":
            self._g711 = G711ToAac(spec.codec, spec.clock_rate, spec.channels)
            ctx.extradata = self._g711.extradata
        else:
            ctx.extradata = spec.config
        ctx.sample_rate = spec.clock_rate  # type: ignore[attr-defined]  # audio ctx
        ctx.layout = "stereo" if spec.channels == 2 else "mono"  # type: ignore[attr-defined]  # audio ctx
        self._audio_time_base = Fraction(1, spec.clock_rate)
        stream.time_base = self._audio_time_base
        self._audio = stream

    def write_video(
        self, nal_units: Sequence[bytes], pts_90k: int, duration_90k: int, is_keyframe: bool
    ) -> None:
        """Add one access unit; its NAL units are stored exactly as given."""
        if self.video_frames == 0 and not (is_keyframe and pts_90k == 0):
            raise ValueError("a segment must start with a keyframe at pts 0")
        if pts_90k < self._next_video_pts or duration_90k <= 0:
            raise ValueError(
                f"video pts {pts_90k} (duration {duration_90k}) overlaps the previous frame "
                f"ending at {self._next_video_pts}"
            )
        packet = av.Packet(nal_units_to_sample(nal_units))
        packet.stream = self._video
        packet.time_base = _TIME_BASE_90K
        packet.pts = packet.dts = pts_90k
        packet.duration = duration_90k
        packet.is_keyframe = is_keyframe
        self._mux(packet)
        self.video_frames += 1
        self._next_video_pts = pts_90k + duration_90k

    def write_audio(self, frame: AudioFrame, pts: int) -> None:
        """Add one audio frame at ``pts`` (its clock-rate units from the segment start).

        Ignored when the segment has no audio track. A frame of another codec than the
        track's, before the segment start, or not after the previous one is dropped and
        counted in ``audio_frames_dropped``: audio never stops the video.
        """
        if self._audio is None:
            return
        if (
            frame.codec is not self._audio_codec
            or pts < 0
            or (self._last_audio_pts is not None and pts <= self._last_audio_pts)
        ):
            self.audio_frames_dropped += 1
            return
        self._last_audio_pts = pts
        if self._g711 is not None:
            for pkt_pts, pkt_data, samples in self._g711.push(frame, pts):
                self._mux_audio(pkt_data, pkt_pts, samples)
        else:
            self._mux_audio(frame.data, pts, frame.samples)

    def _mux_audio(self, data: bytes, pts: int, samples: int) -> None:
        assert self._audio is not None
        packet = av.Packet(data)
        packet.stream = self._audio
        packet.time_base = self._audio_time_base
        packet.pts = packet.dts = pts
        packet.duration = samples
        packet.is_keyframe = True
        self._mux(packet)

    def _mux(self, packet: av.Packet[Stream]) -> None:
        if self._closed:
            raise StorageError(f"segment {self.path} is already closed")
        try:
            self._container.mux_one(packet)
        except (OSError, av.error.FFmpegError) as exc:
            raise _storage_error(self.path, "cannot write", exc) from exc

    @property
    def bytes_written(self) -> int:
        """Bytes handed to the kernel so far."""
        return self._sink.size

    def close(self) -> SegmentFile:
        """Finish the file (last fragment), fsync it and return what it holds."""
        if self._closed:
            raise StorageError(f"segment {self.path} is already closed")
        try:
            if self._g711 is not None:
                for pkt_pts, pkt_data, samples in self._g711.flush():
                    self._mux_audio(pkt_data, pkt_pts, samples)
            self._container.close()
            self._closed = True
            os.fsync(self._sink.fd)
        except (OSError, av.error.FFmpegError) as exc:
            self.abort()
            raise _storage_error(self.path, "cannot finish", exc) from exc
        finally:
            self._close_fd()
        scanner = self._sink.scanner
        if (
            scanner.error is not None
            or scanner.init is None
            or (scanner.whole_end != self._sink.size)
        ):
            raise StorageError(
                f"segment {self.path} does not read back as whole fragments: "
                f"{scanner.error or f'whole to {scanner.whole_end} of {self._sink.size}'}"
            )
        fragments, frames, duration_90k = fragment_facts(scanner.init, scanner.fragments)
        if frames != self.video_frames:
            raise StorageError(
                f"segment {self.path} holds {frames} video frames, {self.video_frames} written"
            )
        return SegmentFile(
            size_bytes=self._sink.size,
            sha256=self._sink.digest.hexdigest(),
            video_frames=frames,
            media_duration_90k=duration_90k,
            fragments=fragments,
        )

    def abort(self) -> None:
        """Best-effort close after an error; the file stays for recovery to judge."""
        container = getattr(self, "_container", None)
        if not self._closed and container is not None:
            self._closed = True
            # Best effort: the error that brought us here matters more than this one.
            with contextlib.suppress(Exception):
                container.close()
        self._close_fd()

    def _close_fd(self) -> None:
        if self._sink.fd >= 0:
            fd, self._sink.fd = self._sink.fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)


def _storage_error(path: Path, what: str, exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    errno = getattr(exc, "errno", None)
    if errno == 28:  # ENOSPC
        return StorageFullError(f"{what} segment {path}: {exc}")
    return StorageError(f"{what} segment {path}: {exc}")
