"""Frames in, runs and segments out: the glue between a camera session and storage.

A ``Recorder`` lives as long as its camera. Inside one RTSP session it keeps one run open at a
time (a clock jump ends the run and the next keyframe starts another); inside a run it cuts
segments at the keyframes the rotation policy picks, each segment starting exactly where the
previous one ended. Every video frame is held back until the next one arrives, because a frame's
duration is the distance to its successor; so the last frame of a segment ends precisely at the
first frame of the next.

Ordering for invariant I2: the segment row is committed in state ``open`` before the writer
thread creates the file; the row is closed only after the file is complete and fsynced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nvr.clock import Clock
from nvr.errors import CameraClockJumpError, StorageError, StorageFullError
from nvr.ingest.timeline import RunTimeline, SegmentTimes, SplitError
from nvr.media import AudioCodec, AudioFrame, MediaDescription, VideoAccessUnit, VideoParameters
from nvr.storage.index import Index, segment_rel_path
from nvr.storage.model import RunEndReason, SegmentFile
from nvr.storage.recovery_file import recover_segment_file
from nvr.storage.segmenter import AudioTrackSpec, RotationPolicy
from nvr.storage.segmenter import stagger_offset_90k as stagger_for
from nvr.storage.writer import CloseSegment, OpenSegment, SegmentWriter, WriteAudio, WriteVideo

log = logging.getLogger(__name__)


RATE_WINDOW_NS = 5 * 10**9  # fps and bitrate are measured over this much of the past
CLOCK_WARN_NS = 2 * 10**9  # a camera clock further off than this is logged, once per run


class WriterBehindError(StorageError):
    """The writer queue is full: the disk is not keeping up with this camera."""


def audio_track_for(media: MediaDescription | None, mode: str) -> AudioTrackSpec | None:
    """What the segment's audio track will be, from the camera's audio and the config's mode."""
    if media is None or mode == "off":
        return None
    codec = {"MPEG4-GENERIC": AudioCodec.AAC, "PCMA": AudioCodec.PCMA, "PCMU": AudioCodec.PCMU}.get(
        media.encoding
    )
    if codec is None:
        return None
    if codec is not AudioCodec.AAC and mode == "copy":
        return None  # G.711 cannot be copied into MP4; "aac" transcodes it
    config_hex = media.fmtp.get("config")
    config = bytes.fromhex(config_hex) if codec is AudioCodec.AAC and config_hex else None
    return AudioTrackSpec(
        codec=codec,
        clock_rate=media.clock_rate,
        channels=media.channels,
        config=config,
        mode="copy" if codec is AudioCodec.AAC else "aac",
    )


_T = TypeVar("_T")


async def _despite_cancel(aw: Awaitable[_T]) -> tuple[_T, bool]:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile.

    Returns the result and whether a cancel arrived; the caller records the result (a row it
    must later close) and then re-raises ``CancelledError``. Without this a shutdown landing
    between an index insert and the recorder noting it leaves an ``open`` row nobody closes.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task), False
    except asyncio.CancelledError:
        return await task, True


@dataclass(slots=True)
class _Pending:
    nal_units: tuple[bytes, ...]
    media_90k: int
    is_keyframe: bool


@dataclass(slots=True)
class _Segment:
    id: int
    rel_path: str
    media_start_90k: int
    provisional_start_90k: int
    done: asyncio.Future[SegmentFile]
    frames: int = 0


@dataclass(slots=True)
class _Run:
    id: int
    timeline: RunTimeline
    segment: _Segment | None = None
    last_duration_90k: int = 3600
    clock_offset_known: bool = False
    end_90k: int | None = None  # wall end of the last segment closed
    closing: asyncio.Task[tuple[int, StorageError | None]] | None = None  # a close under way


@dataclass(frozen=True, slots=True)
class RecorderStats:
    runs: int
    segments_closed: int
    frames: int
    bytes_closed: int
    run_id: int | None  # the run being recorded
    codec: str | None  # of the parameters last seen
    width: int | None
    height: int | None
    fps: float | None  # over the last few seconds of received frames
    bitrate_kbps: int | None


class Recorder:
    """Records one camera's frames. All methods run on the event loop; I/O goes to the writer."""

    def __init__(
        self,
        camera_id: str,
        *,
        root: Path,
        index: Index,
        clock: Clock,
        segment_seconds: int,
        writer_queue_frames: int,
        stagger_offset_90k: int | None = None,
    ) -> None:
        self.camera_id = camera_id
        self._root = root
        self._index = index
        self._clock = clock
        segment_90k = segment_seconds * 90_000
        if stagger_offset_90k is None:
            stagger_offset_90k = stagger_for(camera_id, segment_90k)
        self._policy = RotationPolicy(segment_90k, stagger_offset_90k)
        self._writer = SegmentWriter(camera_id, writer_queue_frames)
        self._run: _Run | None = None
        self._pending: _Pending | None = None
        self._params: VideoParameters | None = None
        self._recent: deque[tuple[int, int]] = deque()  # (receive ns, bytes) of recent frames
        self._audio: AudioTrackSpec | None = None
        self._audio_codec: str | None = None
        self.clock_offset_ns: int | None = None
        self.runs = 0
        self.segments_closed = 0
        self.frames = 0
        self.bytes_closed = 0
        self.runs_ended: Counter[RunEndReason] = Counter()  # for the metrics

    @property
    def writer_queue(self) -> tuple[int, int]:
        """Commands waiting for the writer thread, and the frames its queue takes."""
        return self._writer.depth, self._writer.capacity

    @property
    def recording(self) -> bool:
        return self._run is not None

    def begin_session(self, audio: MediaDescription | None, audio_mode: str) -> None:
        """A new RTSP session: what its audio will become in the segments."""
        self._audio = audio_track_for(audio, audio_mode)
        self._audio_codec = self._audio.codec.value if self._audio is not None else None
        if audio is not None and self._audio is None and audio_mode != "off":
            log.warning(
                'camera=%s audio %s/%d is not stored (audio = %r; G.711 needs audio = "aac")',
                self.camera_id,
                audio.encoding,
                audio.clock_rate,
                audio_mode,
            )

    async def video(self, au: VideoAccessUnit, recv_mono_ns: int) -> None:
        run = self._run
        media_90k = 0
        if run is not None and au.loss_before:
            # The depacketizer dropped everything since the loss up to this keyframe: that
            # stretch is not recorded, so it is a gap with its reason, not a long last frame.
            await self.end_run(
                RunEndReason.PACKET_LOSS, "packets lost; recording resumed at the next keyframe"
            )
            run = None
        if run is not None:
            try:
                media_90k = run.timeline.video(au.timestamp, recv_mono_ns)
            except CameraClockJumpError as exc:
                log.warning("camera=%s %s; starting a new run", self.camera_id, exc)
                await self.end_run(RunEndReason.CLOCK_JUMP, str(exc))
                run = None
        if run is None:
            if not au.is_keyframe or au.parameters is None:
                return
            run, media_90k = await self._start_run(au, recv_mono_ns)
        if au.parameters is not None:
            self._params = au.parameters
        pending = self._pending
        if pending is not None:
            if media_90k <= pending.media_90k:
                # Two pictures with one timestamp (a camera quirk): keep both, a tick apart;
                # the next frame's duration gives the tick back, so run time stays exact.
                media_90k = pending.media_90k + 1
            duration = media_90k - pending.media_90k
            run.last_duration_90k = duration
            await self._write_pending(run, pending, duration)
            seg = run.segment
            if au.is_keyframe and seg is not None:
                seg_start = run.timeline.wall_90k(seg.media_start_90k)
                frame_wall = run.timeline.wall_90k(media_90k)
                rotate = self._policy.should_rotate(seg_start, frame_wall, True, au.new_parameters)
                if rotate and not await self._close_segment(run, media_90k):
                    run, media_90k = await self._start_run(au, recv_mono_ns)
        # Pending before the open: if a shutdown lands during the open, end_run still writes
        # this keyframe into the new segment instead of leaving it empty.
        self._pending = _Pending(au.nal_units, media_90k, au.is_keyframe)
        if run.segment is None:
            await self._open_segment(run, media_90k)
        recent = self._recent
        recent.append((recv_mono_ns, sum(len(n) for n in au.nal_units)))
        while recent[0][0] < recv_mono_ns - RATE_WINDOW_NS:
            recent.popleft()

    async def audio(self, frame: AudioFrame, stream: int, recv_mono_ns: int) -> None:
        run = self._run
        if run is None or self._audio is None or run.segment is None:
            return
        media_90k = run.timeline.audio(stream, frame.timestamp, frame.clock_rate, recv_mono_ns)
        rel_90k = media_90k - run.segment.media_start_90k
        if rel_90k < 0:
            return
        pts = rel_90k * frame.clock_rate // 90_000
        self._submit(WriteAudio(frame, pts))

    async def sender_report(self, ntp_ns: int, rtp_timestamp: int) -> None:
        """An RTCP sender report on the video stream: the camera's clock against ours.

        Stored on the run once (camera clock minus NVR clock, ns); an offset over 2 s is
        logged, because an officer comparing the picture's overlay with our times needs it.
        """
        run = self._run
        if run is None or run.clock_offset_known:
            return
        media_90k = run.timeline.media_of(rtp_timestamp)
        if media_90k is None:
            return
        nvr_ns = run.timeline.wall_90k(media_90k) * 100_000 // 9
        offset_ns = ntp_ns - nvr_ns
        run.clock_offset_known = True
        await self._index.set_run_clock_offset(run.id, offset_ns)
        if abs(offset_ns) > CLOCK_WARN_NS:
            log.warning(
                "camera=%s clock is %+.1f s off the NVR clock (RTCP sender report)",
                self.camera_id,
                offset_ns / 1e9,
            )

    async def end_run(self, reason: RunEndReason, detail: str | None = None) -> None:
        """Close the open segment (its last frame keeps the previous frame's duration), end the run.

        The run's row is ended whatever happens to the segment: a failed segment is recovered
        to its whole fragments (or marked missing) and the run ends where the kept data ends.
        """
        run = self._run
        if run is None:
            return
        self._run = None
        pending, self._pending = self._pending, None
        seg = run.segment
        if run.closing is not None and not run.closing.done():
            # Stopped in the middle of a rotation: let that close finish first.
            with contextlib.suppress(Exception):
                await run.closing
        end_90k = run.end_90k if run.end_90k is not None else run.timeline.start_90k
        try:
            if seg is not None:
                end_media = seg.media_start_90k
                if pending is not None:
                    try:
                        await self._write_pending(run, pending, run.last_duration_90k)
                        end_media = pending.media_90k + run.last_duration_90k
                    except StorageError:  # the writer is behind, or this segment failed
                        end_media = pending.media_90k
                try:
                    times = run.timeline.close_segment(end_media)
                except SplitError as split:
                    times = split.times
                end_90k, error = await self._finish_segment(run, seg, times)
                if error is not None and str(error) not in (detail or ""):
                    detail = f"{detail}; {error}" if detail else str(error)
        finally:
            await self._end_run_row(run.id, end_90k, reason, detail)
        log.info(
            "camera=%s run %d ended: %s%s",
            self.camera_id,
            run.id,
            reason.value,
            f" ({detail})" if detail else "",
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)

    # -- internals --

    async def _start_run(self, au: VideoAccessUnit, recv_mono_ns: int) -> tuple[_Run, int]:
        """Start a run at keyframe ``au``; returns the run and the frame's media time (0)."""
        params = au.parameters
        assert params is not None and au.is_keyframe
        timeline = RunTimeline(
            start_wall_ns=self._clock.wall_ns(), start_mono_ns=self._clock.monotonic_ns()
        )
        media_90k = timeline.video(au.timestamp, recv_mono_ns)
        run_id, cancelled = await _despite_cancel(self._index.start_run(
            self.camera_id,
            timeline.start_90k,
            video_codec=params.codec.value,
            width=params.width,
            height=params.height,
            audio_codec=self._audio_codec,
            clock_offset_ns=self.clock_offset_ns,
        ))  # fmt: skip
        self._params = params
        self._pending = None
        self._run = run = _Run(run_id, timeline,
                               clock_offset_known=self.clock_offset_ns is not None)  # fmt: skip
        self.runs += 1
        if cancelled:
            raise asyncio.CancelledError  # the run is noted: end_run will end its row
        if self.clock_offset_ns is not None and abs(self.clock_offset_ns) > CLOCK_WARN_NS:
            log.warning("camera=%s clock is %+.1f s off the NVR clock (ONVIF); run %d",
                        self.camera_id, self.clock_offset_ns / 1e9, run_id)  # fmt: skip
        log.info(
            "camera=%s run %d started (%s %sx%s)",
            self.camera_id,
            run_id,
            params.codec.value,
            params.width,
            params.height,
        )
        return run, media_90k

    async def _open_segment(self, run: _Run, media_90k: int) -> None:
        params = self._params
        assert params is not None
        start_90k = run.timeline.wall_90k(media_90k)
        rel = segment_rel_path(self.camera_id, start_90k)
        seg_id, cancelled = await _despite_cancel(
            self._index.open_segment(run.id, self.camera_id, rel, start_90k)
        )
        cmd = OpenSegment(self._root / rel, params, self._audio)
        self._writer.control(cmd)
        run.segment = _Segment(seg_id, rel, media_90k, start_90k, asyncio.wrap_future(cmd.done))
        if cancelled:
            raise asyncio.CancelledError  # the segment is noted: end_run will close it

    def _submit(self, cmd: WriteVideo | WriteAudio) -> None:
        if not self._writer.submit(cmd):
            raise WriterBehindError(f"camera {self.camera_id}: writer queue full")

    async def _write_pending(self, run: _Run, pending: _Pending, duration_90k: int) -> None:
        seg = run.segment
        assert seg is not None
        if seg.done.done():
            seg.done.result()  # raises the writer's error for this segment
        self._submit(
            WriteVideo(
                pending.nal_units,
                pending.media_90k - seg.media_start_90k,
                duration_90k,
                pending.is_keyframe,
            )
        )
        seg.frames += 1
        self.frames += 1

    async def _close_segment(self, run: _Run, media_end_90k: int) -> bool:
        """Close the open segment at ``media_end_90k``; False if the run had to end there.

        A clock split ends the run with ``clock_jump`` (the caller starts a new one); a write
        error ends it too and is raised, so the session ends and the camera backs off.
        """
        seg = run.segment
        assert seg is not None
        split: SplitError | None = None
        try:
            times = run.timeline.close_segment(media_end_90k)
        except SplitError as exc:
            times, split = exc.times, exc
        end_90k, error = await self._finish_segment(run, seg, times)
        if split is None and error is None:
            return True
        self._pending = None
        self._run = None
        if error is not None:
            reason = (
                RunEndReason.DISK_FULL
                if isinstance(error, StorageFullError)
                else RunEndReason.ERROR
            )
            await self._end_run_row(run.id, end_90k, reason, str(error))
            raise error
        await self._end_run_row(run.id, end_90k, RunEndReason.CLOCK_JUMP, str(split))
        log.warning("camera=%s %s; starting a new run", self.camera_id, split)
        return False

    async def _end_run_row(
        self, run_id: int, end_90k: int, reason: RunEndReason, detail: str | None
    ) -> None:
        self.runs_ended[reason] += 1
        await self._index.end_run(run_id, end_90k, reason, detail)

    async def _finish_segment(
        self, run: _Run, seg: _Segment, times: SegmentTimes
    ) -> tuple[int, StorageError | None]:
        """Hand the close to the writer, wait for the file's facts, close the row.

        Returns the segment's wall end and, if the writer failed, its error: the file is then
        cut back to its whole fragments and closed with what they hold (or marked missing).
        The close runs as its own task, shielded: a shutdown arriving in the middle of a
        rotation waits for it (end_run) instead of leaving the row open.
        """
        run.segment = None
        run.closing = asyncio.ensure_future(self._close_files_and_row(run, seg, times))
        return await asyncio.shield(run.closing)

    async def _close_files_and_row(
        self, run: _Run, seg: _Segment, times: SegmentTimes
    ) -> tuple[int, StorageError | None]:
        if not seg.done.done():
            self._writer.control(CloseSegment())
        try:
            facts = await seg.done
        except StorageError as exc:
            recovered = await asyncio.to_thread(recover_segment_file, self._root / seg.rel_path)
            if recovered is None:
                await self._index.mark_segment_missing(seg.id)
                log.error("camera=%s segment %s lost: %s", self.camera_id, seg.rel_path, exc)
                run.end_90k = times.start_90k
                return times.start_90k, exc
            end_90k = times.start_90k + recovered.media_duration_90k
            await self._index.close_segment(seg.id, end_90k, recovered, start_90k=times.start_90k)
            log.error(
                "camera=%s segment %s kept %d frames after a write error: %s",
                self.camera_id,
                seg.rel_path,
                recovered.video_frames,
                exc,
            )
            run.end_90k = end_90k
            return end_90k, exc
        await self._index.close_segment(seg.id, times.end_90k, facts, start_90k=times.start_90k)
        self.segments_closed += 1
        self.bytes_closed += facts.size_bytes
        run.end_90k = times.end_90k
        return times.end_90k, None

    def stats(self) -> RecorderStats:
        params = self._params
        recent = self._recent
        fps: float | None = None
        kbps: int | None = None
        if len(recent) >= 2:
            span_ns = recent[-1][0] - recent[0][0]
            if span_ns > 0:
                fps = round((len(recent) - 1) * 1e9 / span_ns, 2)
                kbps = sum(size for _, size in list(recent)[1:]) * 8 * 10**6 // span_ns
        return RecorderStats(
            self.runs, self.segments_closed, self.frames, self.bytes_closed,
            self._run.id if self._run is not None else None,
            params.codec.value if params else None,
            params.width if params else None,
            params.height if params else None,
            fps, kbps,
        )  # fmt: skip
