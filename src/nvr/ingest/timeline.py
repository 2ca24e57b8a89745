"""The time model (docs/time.md), sans-IO.

Media time comes from RTP timestamps, unwrapped into an ever-increasing integer; wall time is
the NVR's clock, read as a (wall, monotonic) pair at run start and advanced by the monotonic
clock after that, so an NTP step of the NVR's clock during a run does not tear the run.

Units: ``*_90k`` are 90 kHz ticks, ``*_ns`` nanoseconds. No floats.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from nvr.errors import CameraClockJumpError, CameraProtocolError

TICKS_90K_PER_S = 90_000
MAX_PPM = 500  # wall durations follow media durations, corrected by at most this much
MAX_SPLIT_90K = 5 * TICKS_90K_PER_S  # wall and media time further apart than this: new run
MAX_FORWARD_JUMP_90K = 10 * TICKS_90K_PER_S  # a bigger step between two frames: new run
MAX_REORDER_90K = TICKS_90K_PER_S // 2  # a smaller step back is B-frame reordering, not a jump
DRIFT_WINDOW_90K = 2 * TICKS_90K_PER_S  # drift is read off the least-delayed of the last 2 s


def ns_to_90k(ns: int) -> int:
    """Nanoseconds to 90 kHz ticks, rounding toward minus infinity."""
    return ns * 9 // 100_000


def ticks_to_90k(ticks: int, clock_rate: int) -> int:
    return ticks * TICKS_90K_PER_S // clock_rate


class TimestampUnwrapper:
    """Turns 32-bit RTP timestamps into a signed, unbounded count relative to the first one.

    Each step is taken as the shortest way round the 2**32 circle, so both wraps and backward
    steps come out right; a backward step shows as a decrease, which the caller judges.
    """

    __slots__ = ("_last_ext", "_last_raw")

    def __init__(self) -> None:
        self._last_raw: int | None = None
        self._last_ext = 0

    @property
    def last(self) -> tuple[int | None, int]:
        """The last raw timestamp taken and its unwrapped value."""
        return self._last_raw, self._last_ext

    def unwrap(self, raw: int) -> int:
        raw &= 0xFFFF_FFFF
        if self._last_raw is None:
            self._last_raw = raw
            return 0
        delta = (raw - self._last_raw) & 0xFFFF_FFFF
        if delta >= 0x8000_0000:
            delta -= 0x1_0000_0000
        self._last_raw = raw
        self._last_ext += delta
        return self._last_ext


@dataclass(frozen=True, slots=True)
class SegmentTimes:
    start_90k: int  # wall, since the Unix epoch
    end_90k: int  # wall, since the Unix epoch
    media_duration_90k: int
    drift_90k: int  # NVR clock minus our wall estimate at the segment end, before correction


class RunTimeline:
    """Media and wall time of one run: from its first frame to the end of its session or a jump.

    ``start_wall_ns``/``start_mono_ns`` are one paired reading of the NVR clocks. Receive times
    passed in later are monotonic readings; they are placed on the wall axis through that pair.
    """

    def __init__(self, *, start_wall_ns: int, start_mono_ns: int, clock_rate: int = 90_000) -> None:
        self._wall0_ns = start_wall_ns
        self._mono0_ns = start_mono_ns
        self._clock_rate = clock_rate
        self._unwrap = TimestampUnwrapper()
        self._last_media_90k: int | None = None
        # Minimum over frames of (receive time - media time), on the local axis: the receive
        # time the first frame would have had with no network or buffering delay.
        self._min_offset_90k: int | None = None
        self._recent: deque[tuple[int, int]] = deque()  # (media_90k, offset) of the last 2 s
        # Once the first segment closes the anchor is frozen and wall time accumulates.
        self._anchor_90k: int | None = None  # local-axis time of media 0
        self._wall_cursor_90k = 0  # wall time elapsed at media time _media_cursor_90k
        self._media_cursor_90k = 0
        self._audio: dict[int, tuple[TimestampUnwrapper, int]] = {}

    def _local_90k(self, mono_ns: int) -> int:
        return ns_to_90k(self._wall0_ns + (mono_ns - self._mono0_ns))

    def video(self, rtp_timestamp: int, recv_mono_ns: int) -> int:
        """Media time of a video frame, in 90 kHz ticks since the run's first frame.

        Raises CameraClockJumpError when the camera's timestamps step back, leap forward, or
        run away from the NVR clock by more than 5 s; the frame then belongs to no run yet.
        """
        ext = self._unwrap.unwrap(rtp_timestamp)
        media_90k = ticks_to_90k(ext, self._clock_rate)
        last = self._last_media_90k
        if last is not None:
            step = media_90k - last
            if -MAX_REORDER_90K <= step < 0:
                raise CameraProtocolError(
                    f"RTP time went back {-step * 1000 // TICKS_90K_PER_S} ms between two "
                    "frames: the stream has B-frames (reordered pictures), which are not "
                    "recorded; turn B-frames off in the camera's encoder settings"
                )
            if step < 0:
                raise CameraClockJumpError(f"RTP time stepped back by {-step} ticks (90 kHz)")
            if step > MAX_FORWARD_JUMP_90K:
                raise CameraClockJumpError(
                    f"RTP time jumped forward by {step / TICKS_90K_PER_S:.1f} s between frames"
                )
        offset = self._local_90k(recv_mono_ns) - media_90k
        if self._anchor_90k is not None:
            expected = self._anchor_90k + self._wall_cursor_90k - self._media_cursor_90k
            if offset < expected - MAX_SPLIT_90K:
                raise CameraClockJumpError(
                    f"camera media time runs ahead of the NVR clock by "
                    f"{(expected - offset) / TICKS_90K_PER_S:.1f} s"
                )
        self._last_media_90k = media_90k
        if self._min_offset_90k is None or offset < self._min_offset_90k:
            self._min_offset_90k = offset
        recent = self._recent
        recent.append((media_90k, offset))
        while recent[0][0] < media_90k - DRIFT_WINDOW_90K:
            recent.popleft()
        return media_90k

    def media_of(self, rtp_timestamp: int) -> int | None:
        """Media time (90 kHz) of a video RTP timestamp near the last frame's, without
        taking it as a frame (for RTCP sender reports); None before the first frame."""
        last_raw, last_ext = self._unwrap.last
        if last_raw is None:
            return None
        delta = (rtp_timestamp - last_raw) & 0xFFFF_FFFF
        if delta >= 0x8000_0000:
            delta -= 0x1_0000_0000
        return ticks_to_90k(last_ext + delta, self._clock_rate)

    def audio(self, stream: int, rtp_timestamp: int, clock_rate: int, recv_mono_ns: int) -> int:
        """Media time (90 kHz, video axis) of an audio frame.

        Without RTCP sender reports the audio stream is placed where its first frame arrived,
        on the video stream's delay-corrected axis.
        """
        if stream not in self._audio:
            unwrap = TimestampUnwrapper()
            unwrap.unwrap(rtp_timestamp)
            base = self._min_offset_90k if self._min_offset_90k is not None else 0
            shift_90k = self._local_90k(recv_mono_ns) - base
            self._audio[stream] = (unwrap, shift_90k)
            return shift_90k
        unwrap, shift_90k = self._audio[stream]
        return shift_90k + ticks_to_90k(unwrap.unwrap(rtp_timestamp), clock_rate)

    @property
    def start_90k(self) -> int:
        """Wall time of media 0 (since the Unix epoch): best estimate, frozen at the first close."""
        if self._anchor_90k is not None:
            return self._anchor_90k
        if self._min_offset_90k is None:
            return ns_to_90k(self._wall0_ns)
        return self._min_offset_90k

    def wall_90k(self, media_90k: int) -> int:
        """Wall time of a media time, by the run's current estimate."""
        if self._anchor_90k is None:
            return self.start_90k + media_90k
        return self._anchor_90k + self._wall_cursor_90k + (media_90k - self._media_cursor_90k)

    def close_segment(self, media_end_90k: int) -> SegmentTimes:
        """Fix the wall times of the segment ending at ``media_end_90k``.

        Its start is the previous segment's end; its wall duration is its media duration
        moved toward the NVR clock by at most 500 ppm. Raises CameraClockJumpError, after
        the times are fixed, when media and wall time have split by more than 5 s.
        """
        if self._anchor_90k is None:
            self._anchor_90k = self.start_90k
        start_90k = self._anchor_90k + self._wall_cursor_90k
        media_dur = media_end_90k - self._media_cursor_90k
        window = min((off for _, off in self._recent), default=self._anchor_90k)
        local_end = window + media_end_90k
        drift = local_end - (start_90k + media_dur)
        limit = media_dur * MAX_PPM // 1_000_000
        wall_dur = media_dur + max(-limit, min(limit, drift))
        self._wall_cursor_90k += wall_dur
        self._media_cursor_90k = media_end_90k
        times = SegmentTimes(start_90k, start_90k + wall_dur, media_dur, drift)
        if drift > MAX_SPLIT_90K:
            raise SplitError(times, drift)
        return times


class SplitError(CameraClockJumpError):
    """Media time fell behind the NVR clock by more than 5 s; carries the closed segment's times."""

    def __init__(self, times: SegmentTimes, drift_90k: int) -> None:
        super().__init__(
            f"camera media time fell behind the NVR clock by {drift_90k / TICKS_90K_PER_S:.1f} s"
        )
        self.times = times
