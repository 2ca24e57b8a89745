"""The time model of docs/time.md, on numbers alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvr.errors import CameraClockJumpError, CameraProtocolError
from nvr.ingest.timeline import (
    RunTimeline,
    SplitError,
    TimestampUnwrapper,
    ns_to_90k,
)

WALL0_NS = 1_790_000_000 * 10**9
MONO0_NS = 5 * 10**12
FRAME_90K = 3600  # 25 fps
FRAME_NS = 40_000_000


def make() -> RunTimeline:
    return RunTimeline(start_wall_ns=WALL0_NS, start_mono_ns=MONO0_NS)


def test_unwrap_crosses_the_32_bit_wrap() -> None:
    u = TimestampUnwrapper()
    assert u.unwrap(0xFFFF_F000) == 0
    assert u.unwrap(0x0000_0800) == 0x1800
    assert u.unwrap(0x0000_1000) == 0x2000


def test_unwrap_shows_a_backward_step_as_a_decrease() -> None:
    u = TimestampUnwrapper()
    u.unwrap(1000)
    assert u.unwrap(400) == -600


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 2**31 - 1), max_size=50))
def test_unwrap_is_the_running_sum_of_forward_steps(start: int, steps: list[int]) -> None:
    u = TimestampUnwrapper()
    u.unwrap(start)
    raw, total = start, 0
    for step in steps:
        raw = (raw + step) & 0xFFFF_FFFF
        total += step
        assert u.unwrap(raw) == total


def test_start_is_anchored_on_the_least_delayed_frame() -> None:
    tl = make()
    ts = 123_456
    # The first frame arrives 300 ms late (start-up buffering); later ones on time.
    delays_ms = [300, 250, 120, 20, 35, 20]
    for i, delay in enumerate(delays_ms):
        recv = MONO0_NS + i * FRAME_NS + delay * 1_000_000
        assert tl.video(ts + i * FRAME_90K, recv) == i * FRAME_90K
    assert tl.start_90k == ns_to_90k(WALL0_NS + 20_000_000)


def test_segments_are_contiguous_and_correction_is_capped_at_500_ppm() -> None:
    tl = make()
    # The camera clock runs 1000 ppm slow: 60 s of media take 60.06 s of NVR time.
    media_per_seg = 60 * 90_000
    ends = []
    prev_end = None
    for seg in range(3):
        for i in range(0, media_per_seg, FRAME_90K):
            media = seg * media_per_seg + i
            recv_ns = MONO0_NS + media * 100_000 // 9 * 1001 // 1000
            tl.video(media, recv_ns)
        times = tl.close_segment((seg + 1) * media_per_seg)
        if prev_end is not None:
            assert times.start_90k == prev_end
        prev_end = times.end_90k
        assert times.media_duration_90k == media_per_seg
        # Corrected toward the NVR clock, by no more than 500 ppm (2700 ticks per minute).
        assert times.end_90k - times.start_90k == media_per_seg + media_per_seg * 500 // 10**6
        ends.append(times.end_90k)


def test_correction_follows_small_drift_exactly() -> None:
    tl = make()
    media_per_seg = 10 * 90_000
    for i in range(0, media_per_seg + 1, FRAME_90K):
        tl.video(i, MONO0_NS + i * 100_000 // 9)
    first = tl.close_segment(media_per_seg)
    # 100 ppm fast camera in the second segment: 900 ticks of media over 10 s, 90 ticks drift.
    for i in range(media_per_seg, 2 * media_per_seg + 1, FRAME_90K):
        extra_ns = (i - media_per_seg) * 100_000 // 9 // 10_000
        tl.video(i, MONO0_NS + i * 100_000 // 9 + extra_ns)
    second = tl.close_segment(2 * media_per_seg)
    assert second.start_90k == first.end_90k
    assert 0 < second.end_90k - second.start_90k - media_per_seg <= media_per_seg * 500 // 10**6


def test_backward_step_ends_the_run() -> None:
    tl = make()
    tl.video(900_000, MONO0_NS)
    with pytest.raises(CameraClockJumpError, match="stepped back by 450000 ticks"):
        tl.video(450_000, MONO0_NS + FRAME_NS)


def test_b_frames_are_refused_with_advice() -> None:
    tl = make()
    tl.video(90_000, MONO0_NS)
    with pytest.raises(CameraProtocolError, match=r"went back 40 ms .* turn B-frames off"):
        tl.video(90_000 - FRAME_90K, MONO0_NS + FRAME_NS)


def test_forward_leap_ends_the_run() -> None:
    tl = make()
    tl.video(0, MONO0_NS)
    with pytest.raises(CameraClockJumpError, match=r"jumped forward by 20\.0 s"):
        tl.video(20 * 90_000, MONO0_NS + FRAME_NS)


def test_media_running_ahead_of_the_nvr_clock_ends_the_run() -> None:
    tl = make()
    for i in range(0, 90_000, FRAME_90K):
        tl.video(i, MONO0_NS + i * 100_000 // 9)
    tl.close_segment(90_000)
    # The camera now sends 3 s of media every 40 ms: the second such frame is 6 s ahead.
    media, recv = 90_000, MONO0_NS + 10**9
    with pytest.raises(CameraClockJumpError, match=r"runs ahead of the NVR clock by 6\.0 s"):
        for _ in range(3):
            media += 3 * 90_000
            tl.video(media, recv)
            recv += FRAME_NS


def test_media_falling_behind_ends_the_run_after_the_segment_is_timed() -> None:
    tl = make()
    for i in range(0, 90_000 * 10, FRAME_90K):
        tl.video(i, MONO0_NS + i * 100_000 // 9)
    tl.close_segment(90_000 * 10)
    # Every later frame arrives 6 s after its media time would put it.
    for i in range(90_000 * 10, 90_000 * 20, FRAME_90K):
        tl.video(i, MONO0_NS + i * 100_000 // 9 + 6 * 10**9)
    with pytest.raises(SplitError) as info:
        tl.close_segment(90_000 * 20)
    assert info.value.times.media_duration_90k == 90_000 * 10
    assert info.value.times.drift_90k == 6 * 90_000


def test_audio_is_placed_where_it_arrived_on_the_video_axis() -> None:
    tl = make()
    tl.video(7777, MONO0_NS)
    tl.video(7777 + FRAME_90K, MONO0_NS + FRAME_NS)
    # First AAC frame (48 kHz) arrives 100 ms into the run; the next one 1024 samples later.
    assert tl.audio(1, 555, 48_000, MONO0_NS + 100_000_000) == 9000
    assert tl.audio(1, 555 + 1024, 48_000, MONO0_NS + 121_000_000) == 9000 + 1920


def test_media_of_places_a_sender_report_timestamp_without_taking_it() -> None:
    tl = make()
    assert tl.media_of(5) is None
    tl.video(0xFFFF_FF00, MONO0_NS)
    assert tl.media_of(0xFFFF_FF00 + 9000) == 9000  # across the wrap
    assert tl.media_of(0xFFFF_FF00 - 900) == -900
    assert tl.video(0xFFFF_FF00 + FRAME_90K, MONO0_NS + FRAME_NS) == FRAME_90K
