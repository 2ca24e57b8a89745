"""The per-camera supervisor: connect, stream, record; on any failure end the run, back off, retry.

One camera's failure never touches another's: each supervisor is its own task and catches
everything its session and recorder raise, except cancellation (shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from nvr.clock import Clock
from nvr.config import CameraConfig
from nvr.errors import (
    CameraAuthError,
    CameraClosedError,
    CameraError,
    CameraStalledError,
    DepacketizeError,
    NvrError,
    StorageFullError,
)
from nvr.ingest.depacketize import Depacketizer, depacketizer_for
from nvr.ingest.rtp import parse_rtp
from nvr.ingest.session import RtspSession
from nvr.ingest.source import StreamSource
from nvr.media import AudioFrame, VideoAccessUnit
from nvr.storage.model import RunEndReason
from nvr.storage.recorder import Recorder, WriterBehindError
from nvr.storage.retention import StorageGate

log = logging.getLogger(__name__)

FRAME_QUEUE_MAX = 2000  # frames between the socket and the recorder before the run is ended
STREAMING_RESETS_BACKOFF_S = 30.0  # a session that streamed this long clears the failure count


class CameraState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    DISABLED = "disabled"
    STOPPED = "stopped"
    STORAGE_FULL = "storage_full"  # not recording: only held footage left on a full disk


@dataclass(frozen=True, slots=True)
class CameraStatus:
    id: str
    state: CameraState
    failures: int  # consecutive failed sessions
    last_error: str | None
    last_error_kind: str | None  # "auth", "connect", "closed", "timeout", "error", ...
    last_frame_wall_ns: int | None
    runs: int
    frames: int
    segments_closed: int
    current_run_id: int | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    bitrate_kbps: int | None = None


def backoff_delay_s(failures: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with jitter: between half and all of min(max, initial*2^(n-1))."""
    ceiling = min(max_s, initial_s * (1 << min(30, max(0, failures - 1))))
    return ceiling * (0.5 + 0.5 * rng.random())


def end_reason(exc: BaseException) -> RunEndReason:
    if isinstance(exc, CameraStalledError):
        return RunEndReason.TIMEOUT
    if isinstance(exc, CameraClosedError):
        return RunEndReason.CAMERA_CLOSED
    if isinstance(exc, StorageFullError):
        return RunEndReason.DISK_FULL
    if isinstance(exc, WriterBehindError):
        return RunEndReason.WRITER_BEHIND
    return RunEndReason.ERROR


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, CameraAuthError):
        return "auth"
    names = {
        RunEndReason.TIMEOUT: "timeout",
        RunEndReason.CAMERA_CLOSED: "closed",
        RunEndReason.DISK_FULL: "disk_full",
        RunEndReason.WRITER_BEHIND: "writer_behind",
    }
    reason = end_reason(exc)
    if reason in names:
        return names[reason]
    return "connect" if type(exc).__name__ == "CameraConnectError" else "error"


def _first_error(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@dataclass(frozen=True, slots=True)
class _SenderReport:
    ntp_ns: int
    rtp_timestamp: int


_Item = tuple[int, VideoAccessUnit | AudioFrame | _SenderReport, int]


class CameraSupervisor:
    def __init__(
        self,
        cfg: CameraConfig,
        recorder: Recorder,
        clock: Clock,
        source: StreamSource,
        *,
        rng: random.Random | None = None,
        session_factory: Callable[..., RtspSession] = RtspSession,
        storage_gate: StorageGate | None = None,
    ) -> None:
        self.cfg = cfg
        self._gate = storage_gate
        self.recorder = recorder
        self._source = source
        self._clock = clock
        self._rng = rng or random.Random()
        self._session_factory = session_factory
        self.state = CameraState.DISABLED if not cfg.enabled else CameraState.CONNECTING
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_kind: str | None = None
        self._last_frame_mono_ns: int | None = None  # last complete video frame
        self._last_packet_mono_ns: int | None = None  # last video RTP packet
        self.last_frame_wall_ns: int | None = None
        self.last_frame_mono_ns: int | None = None  # last video frame handed to the recorder
        self.connects = 0  # sessions attempted: the first connect and every reconnect
        self._last_logged_mono_ns: int | None = None

    def status(self) -> CameraStatus:
        st = self.recorder.stats()
        return CameraStatus(
            self.cfg.id, self.state, self.failures, self.last_error, self.last_error_kind,
            self.last_frame_wall_ns, st.runs, st.frames, st.segments_closed,
            st.run_id, st.codec, st.width, st.height, st.fps, st.bitrate_kbps,
        )

    async def run_forever(self) -> None:
        if not self.cfg.enabled:
            return
        try:
            while True:
                if self._gate is not None and not self._gate.ok:
                    self.state = CameraState.STORAGE_FULL
                    await self._gate.wait_ok()
                    log.info("camera=%s storage has room again; reconnecting", self.cfg.id)
                self.state = CameraState.CONNECTING
                self.connects += 1
                started_ns = self._clock.monotonic_ns()
                try:
                    await self._session_once()
                    raise CameraClosedError("the camera ended the stream")
                except asyncio.CancelledError:
                    raise
                except Exception as raw:
                    exc = _first_error(raw)
                    if isinstance(exc, asyncio.CancelledError):
                        raise exc from None
                    self._source.session_ended(streamed=self.state is CameraState.STREAMING)
                    if isinstance(exc, StorageFullError) and self._gate is not None:
                        self._gate.report_full()  # retention frees space at once
                    await self._after_failure(exc, started_ns)
                    if self._gate is not None and not self._gate.ok:
                        continue  # no backoff: wait for space at the top of the loop
                delay = backoff_delay_s(
                    self.failures, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self._rng
                )
                self.state = CameraState.BACKOFF
                await self._clock.sleep(delay)
        except asyncio.CancelledError:
            await asyncio.shield(self.recorder.end_run(RunEndReason.SHUTDOWN))
            self.state = CameraState.STOPPED
            raise

    async def _after_failure(self, exc: BaseException, started_ns: int) -> None:
        streamed_s = (self._clock.monotonic_ns() - started_ns) / 1e9
        if self.state is CameraState.STREAMING and streamed_s >= STREAMING_RESETS_BACKOFF_S:
            self.failures = 0
        self.failures += 1
        detail = str(exc) if isinstance(exc, NvrError) else f"{type(exc).__name__}: {exc}"
        self.last_error, self.last_error_kind = detail, _error_kind(exc)
        try:
            await self.recorder.end_run(end_reason(exc), detail)
        except Exception:
            log.exception("camera=%s could not end the run cleanly", self.cfg.id)
        self._log_failure(detail, exc)

    def _log_failure(self, detail: str, exc: BaseException) -> None:
        """Log at growing intervals: failures 1, 2, 4, 8... then at most every 10 minutes."""
        n = self.failures
        now = self._clock.monotonic_ns()
        quiet = self._last_logged_mono_ns is not None and now - self._last_logged_mono_ns < 600e9
        if n & (n - 1) == 0 or not quiet:
            self._last_logged_mono_ns = now
            level = logging.ERROR if not isinstance(exc, CameraError) else logging.WARNING
            log.log(level, "camera=%s %s (failure %d, retrying with backoff)", self.cfg.id,
                    detail, n)
            if not isinstance(exc, NvrError):
                log.debug("camera=%s traceback", self.cfg.id, exc_info=exc)
        else:
            log.debug("camera=%s %s (failure %d)", self.cfg.id, detail, n)

    async def _session_once(self) -> None:
        cfg = self.cfg
        user, password = cfg.credentials()
        queue: asyncio.Queue[_Item] = asyncio.Queue(FRAME_QUEUE_MAX)
        depacketizers: dict[int, Depacketizer] = {}
        early: list[tuple[int, bytes, int]] = []
        overflow: list[bool] = []

        def deliver(stream: int, data: bytes, recv_ns: int) -> None:
            dep = depacketizers.get(stream)
            if dep is None:
                return
            try:
                pkt = parse_rtp(data)
                dep.push(pkt)
            except DepacketizeError as exc:
                log.debug("camera=%s stream %d: %s", cfg.id, stream, exc)
            if stream == 0:
                self._last_packet_mono_ns = recv_ns
            while (out := dep.pull()) is not None:
                if stream == 0:
                    self._last_frame_mono_ns = recv_ns
                try:
                    queue.put_nowait((stream, out, recv_ns))
                except asyncio.QueueFull:
                    overflow.append(True)
                    return

        def on_packet(stream: int, data: bytes, recv_ns: int) -> None:
            if not depacketizers:
                early.append((stream, data, recv_ns))
                return
            deliver(stream, data, recv_ns)

        def on_sender_report(stream: int, ntp_ns: int, rtp_timestamp: int) -> None:
            if stream == 0:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait((stream, _SenderReport(ntp_ns, rtp_timestamp), 0))

        url = await self._source.stream_url()
        self.recorder.clock_offset_ns = self._source.clock_offset_ns
        session = self._session_factory(
            url,
            username=user,
            password=password,
            transport=cfg.transport,
            want_audio=cfg.audio != "off",
            timeout_s=cfg.connect_timeout_s,
            on_packet=on_packet,
            on_sender_report=on_sender_report,
            clock=self._clock,
        )
        async with session:
            depacketizers[0] = depacketizer_for(session.video)
            if session.audio is not None and cfg.audio != "off":
                try:
                    depacketizers[1] = depacketizer_for(session.audio)
                except CameraError as exc:
                    log.warning("camera=%s audio not recorded: %s", cfg.id, exc)
            self.recorder.begin_session(session.audio, cfg.audio)
            for item in early:
                deliver(*item)
            early.clear()
            self._last_frame_mono_ns = self._last_packet_mono_ns = self._clock.monotonic_ns()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(session.run())
                tg.create_task(self._consume(queue, overflow))
                tg.create_task(self._watchdog())
                tg.create_task(self._source.watch())
                if self._gate is not None:
                    tg.create_task(self._storage_watch(self._gate))

    async def _storage_watch(self, gate: StorageGate) -> None:
        """End the session when retention closes the gate (the disk is full of held data)."""
        await gate.wait_full()
        raise StorageFullError(
            f"camera {self.cfg.id}: storage full and only held footage is left; "
            "recording stopped until space returns"
        )

    async def _consume(self, queue: asyncio.Queue[_Item], overflow: list[bool]) -> None:
        while True:
            stream, item, recv_ns = await queue.get()
            if overflow:
                raise WriterBehindError(
                    f"camera {self.cfg.id}: {FRAME_QUEUE_MAX} frames waiting for the recorder"
                )
            if isinstance(item, VideoAccessUnit):
                self.last_frame_wall_ns = self._clock.wall_ns()
                self.last_frame_mono_ns = self._clock.monotonic_ns()
                await self.recorder.video(item, recv_ns)
                if self.recorder.recording:
                    self.state = CameraState.STREAMING
            elif isinstance(item, AudioFrame):
                await self.recorder.audio(item, stream, recv_ns)
            else:
                await self.recorder.sender_report(item.ntp_ns, item.rtp_timestamp)

    async def _watchdog(self) -> None:
        """End the session when video stops: no packet for ``stall_timeout_s``, or packets that
        never make a frame (no decodable keyframe) for ``max(30 s, 3 x stall_timeout_s)``.

        Liveness is judged on packets, not frames, so a camera with a long keyframe interval
        is not cut off while the recorder waits for its next keyframe after a loss.
        """
        stall_ns = int(self.cfg.stall_timeout_s * 1e9)
        no_frame_ns = max(30 * 10**9, 3 * stall_ns)
        while True:
            now = self._clock.monotonic_ns()
            idle_ns = now - (self._last_packet_mono_ns or now)
            if idle_ns >= stall_ns:
                raise CameraStalledError(
                    f"no video for {idle_ns / 1e9:.1f} s (stall_timeout_s = "
                    f"{self.cfg.stall_timeout_s:g})"
                )
            frameless_ns = now - (self._last_frame_mono_ns or now)
            if frameless_ns >= no_frame_ns:
                raise CameraStalledError(
                    f"video packets arrive but no complete keyframe for {frameless_ns / 1e9:.0f} s"
                )
            await self._clock.sleep(min(0.5, (stall_ns - idle_ns) / 1e9))
