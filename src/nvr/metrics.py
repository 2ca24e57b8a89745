"""Prometheus metrics: live state read at scrape time, plus the API's and the event loop's counts.

``Metrics`` owns its registry (not prometheus_client's global one, so a process or a test can
hold several). It is itself a collector: at each scrape it reads the supervisors, their
recorders and retention as they are at that moment. What needs a query (segments and exports by
state, holds in force) or a system call (free space) is fetched by ``refresh`` before the scrape
and kept ``cache_s`` seconds, so any scrape rate costs the index a few cheap counts every few
seconds. The API middleware and the event-loop watch count as they go.

Metric names, labels and units are listed in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from nvr.bounded import SingleFlight
from nvr.clock import Clock, SystemClock
from nvr.errors import StorageError
from nvr.ingest.camera import CameraState, CameraSupervisor
from nvr.storage.index import Index
from nvr.storage.index_lifecycle import IndexCounts
from nvr.storage.index_rows import ExportState
from nvr.storage.model import RunEndReason, SegmentState
from nvr.storage.retention import DiskSpace, Retention, disk_space

log = logging.getLogger(__name__)

LOOP_TICK_S = 0.25  # the loop watch sleeps this long and records how late it wakes
LAG_WINDOW_S = 60.0  # nvr_event_loop_lag_max_seconds covers this much of the past
REFRESH_TIMEOUT_S = 2.0  # longest wait for the index counts or statvfs during a scrape
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A running process never sees its own crash: start-up recovery ends those runs (and logs them).
_ENDED_LIVE = [r for r in RunEndReason if r is not RunEndReason.CRASH]

CameraSource = Callable[[], Sequence[CameraSupervisor]]


@dataclass(frozen=True, slots=True)
class _Fetched:
    counts: IndexCounts | None = None
    space: DiskSpace | None = None


class Metrics:
    """The process's metrics. ``start`` the loop watch on the running loop; ``stop`` it."""

    def __init__(
        self,
        cameras: CameraSource,
        *,
        index: Index | None = None,
        retention: Retention | None = None,
        clock: Clock | None = None,
        cache_s: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self._cameras = cameras
        self._retention = retention
        self._clock = clock or SystemClock()
        self._cache_s = cache_s
        self._fetched = _Fetched()
        self._fetched_at: float | None = None  # loop time
        self._refresh_lock = asyncio.Lock()
        self._refresh_error: str | None = None
        self._counts = SingleFlight(index.counts) if index is not None else None
        self._space: SingleFlight[DiskSpace] | None = None
        if retention is not None:
            root = retention.root
            self._space = SingleFlight(lambda: asyncio.to_thread(disk_space, root))
        self._lags: deque[tuple[float, float]] = deque()  # (loop time, lag s) in the window
        self._watch: asyncio.Task[None] | None = None
        self._requests = Counter(
            "nvr_api_requests", "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self._request_seconds = Histogram(
            "nvr_api_request_duration_seconds",
            "Time from a request's arrival to its handler's answer, by route template",
            ["route"], buckets=_API_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._loop_lag = Histogram(
            "nvr_event_loop_lag_seconds",
            f"How late the event loop woke from a {LOOP_TICK_S:g} s sleep",
            buckets=_LAG_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(self)

    # --- lifecycle ---

    def start(self) -> None:
        """Start the event-loop watch (on the running loop)."""
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_loop(), name="loop-lag")

    async def stop(self) -> None:
        for flight in (self._counts, self._space):
            if flight is not None:
                flight.cancel()
        task, self._watch = self._watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_TICK_S)
            now = loop.time()
            lag_s = max(0.0, now - before - LOOP_TICK_S)
            self._loop_lag.observe(lag_s)
            self._lags.append((now, lag_s))
            self._prune_lags(now)

    def _prune_lags(self, now: float) -> None:
        while self._lags and self._lags[0][0] < now - LAG_WINDOW_S:
            self._lags.popleft()

    # --- what the API uses ---

    @property
    def recording_allowed(self) -> bool | None:
        """False while retention's gate is closed (storage full of held footage)."""
        return self._retention.gate.ok if self._retention is not None else None

    def middleware(self) -> Middleware:
        """Count every answer by method, route template ("unmatched" when none) and status."""

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            match = request.match_info
            resource = match.route.resource if match.http_exception is None else None
            route = resource.canonical if resource is not None else "unmatched"
            method = request.method if request.method in _METHODS else "other"
            started = time.perf_counter()
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._count(method, route, exc.status, started)
                raise
            except Exception:
                self._count(method, route, 500, started)
                raise
            self._count(method, route, response.status, started)
            return response

        return count

    def _count(self, method: str, route: str, status: int, started: float) -> None:
        self._requests.labels(method, route, str(status)).inc()
        self._request_seconds.labels(route).observe(time.perf_counter() - started)

    async def refresh(self) -> None:
        """Fetch the index counts and free space again when older than ``cache_s``. A fetch
        that fails or hangs leaves those metrics out of the scrape (and is logged once)."""
        async with self._refresh_lock:
            now = asyncio.get_running_loop().time()
            if self._fetched_at is not None and now - self._fetched_at < self._cache_s:
                return
            problems: list[str] = []
            counts = space = None
            if self._counts is not None:
                try:
                    counts = await self._counts(REFRESH_TIMEOUT_S)
                except TimeoutError:
                    problems.append(f"index counts took over {REFRESH_TIMEOUT_S:g} s")
                except StorageError as exc:
                    problems.append(f"index counts: {exc}")
            if self._space is not None:
                try:
                    space = await self._space(REFRESH_TIMEOUT_S)
                except TimeoutError:
                    problems.append(f"statvfs of the storage took over {REFRESH_TIMEOUT_S:g} s")
                except OSError as exc:
                    problems.append(f"statvfs of the storage: {exc.strerror or exc}")
            error = "; ".join(problems) or None
            if error != self._refresh_error:
                if error is not None:
                    log.warning("metrics: left out of the scrape: %s", error)
                else:
                    log.info("metrics: index counts and free space are back")
                self._refresh_error = error
            self._fetched = _Fetched(counts, space)
            self._fetched_at = now

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    # --- the collector (prometheus_client calls this at each scrape) ---

    def collect(self) -> Iterator[Metric]:
        yield from self._camera_families()
        yield from self._storage_families()
        now = asyncio.get_running_loop().time() if self._watch is not None else None
        if now is not None:
            self._prune_lags(now)
        yield GaugeMetricFamily(
            "nvr_event_loop_lag_max_seconds",
            f"The longest event-loop lag seen in the last {LAG_WINDOW_S:g} s",
            value=max((lag for _, lag in self._lags), default=0.0),
        )

    def _camera_families(self) -> Iterator[Metric]:
        cam = ["camera"]

        def counter(name: str, doc: str, labels: list[str] = cam) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        def gauge(name: str, doc: str, labels: list[str] = cam) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        state = gauge("nvr_camera_state", "1 for the state the camera is in, 0 for the others",
                      ["camera", "state"])  # fmt: skip
        frames = counter("nvr_camera_frames", "Video frames written to segments")
        written = counter("nvr_camera_bytes_written",
                          "Bytes of segment files, counted as each segment closes")  # fmt: skip
        closed = counter("nvr_camera_segments_closed", "Segments closed complete")
        connects = counter("nvr_camera_connects",
                           "RTSP sessions attempted: the first connect and every reconnect")
        started = counter("nvr_camera_runs_started", "Runs started")
        ended = counter("nvr_camera_runs_ended", "Runs ended, by the reason their gap carries",
                        ["camera", "reason"])  # fmt: skip
        failures = gauge("nvr_camera_consecutive_failures", "Sessions failed in a row")
        age = gauge("nvr_camera_last_frame_age_seconds",
                    "Seconds since the last video frame reached the recorder (absent before "
                    "the first)")  # fmt: skip
        fps = gauge("nvr_camera_frames_per_second", "Frames received per second, last 5 s")
        bitrate = gauge("nvr_camera_bitrate_bits_per_second", "Video bit rate, last 5 s")
        depth = gauge("nvr_camera_writer_queue_depth",
                      "Frames (and segment opens and closes) waiting for the writer thread")
        capacity = gauge("nvr_camera_writer_queue_capacity",
                         "Frames the writer queue takes before the run ends writer_behind")
        now_ns = self._clock.monotonic_ns()
        for sup in self._cameras():
            c = sup.cfg.id
            rec = sup.recorder
            st = rec.stats()
            for s in CameraState:
                state.add_metric([c, s.value], 1.0 if sup.state is s else 0.0)
            frames.add_metric([c], st.frames)
            written.add_metric([c], st.bytes_closed)
            closed.add_metric([c], st.segments_closed)
            connects.add_metric([c], sup.connects)
            started.add_metric([c], st.runs)
            for reason in _ENDED_LIVE:
                ended.add_metric([c, reason.value], rec.runs_ended[reason])
            failures.add_metric([c], sup.failures)
            if sup.last_frame_mono_ns is not None:
                age.add_metric([c], max(0, now_ns - sup.last_frame_mono_ns) / 1e9)
            if st.fps is not None:
                fps.add_metric([c], st.fps)
            if st.bitrate_kbps is not None:
                bitrate.add_metric([c], st.bitrate_kbps * 1000)
            queued, room = rec.writer_queue
            depth.add_metric([c], queued)
            capacity.add_metric([c], room)
        yield from (state, frames, written, closed, connects, started, ended, failures, age, fps,
                    bitrate, depth, capacity)  # fmt: skip

    def _storage_families(self) -> Iterator[Metric]:
        fetched = self._fetched
        retention = self._retention
        if retention is not None:
            gate = retention.gate
            yield GaugeMetricFamily(
                "nvr_storage_recording_allowed",
                "0 while recording is stopped because storage is full of held footage",
                value=1.0 if gate.ok else 0.0,
            )
            yield CounterMetricFamily(
                "nvr_storage_full_closures", "Times recording stopped for lack of space",
                value=gate.closed_count,
            )  # fmt: skip
            yield CounterMetricFamily("nvr_retention_deleted_segments",
                                      "Segments retention deleted", value=retention.deleted_total)
            yield CounterMetricFamily("nvr_retention_freed_bytes",
                                      "Bytes retention freed", value=retention.freed_total)
            if fetched.space is not None:
                space = fetched.space
                floor = retention.floor.bytes_for(space.total_bytes)
                for name, doc, value in (
                    ("nvr_storage_free_bytes", "Free space the recorder may use", space.free_bytes),
                    ("nvr_storage_size_bytes", "Size of the storage filesystem", space.total_bytes),
                    ("nvr_storage_floor_bytes", "Free space retention keeps", floor),
                ):
                    yield GaugeMetricFamily(name, doc, value=value)
        counts = fetched.counts
        if counts is not None:
            segments = GaugeMetricFamily("nvr_segments", "Segments in the index, by state",
                                         labels=["state"])  # fmt: skip
            for s in SegmentState:
                segments.add_metric([s.value], counts.segments.get(s.value, 0))
            stored_bytes = GaugeMetricFamily(
                "nvr_camera_stored_bytes", "Bytes of the camera's closed segments on the storage",
                labels=["camera"])  # fmt: skip
            stored_segments = GaugeMetricFamily(
                "nvr_camera_stored_segments", "The camera's closed segments on the storage",
                labels=["camera"])  # fmt: skip
            for cam, (n_bytes, n_segments) in sorted(counts.stored.items()):
                stored_bytes.add_metric([cam], n_bytes)
                stored_segments.add_metric([cam], n_segments)
            yield stored_bytes
            yield stored_segments
            exports = GaugeMetricFamily("nvr_exports", "Export jobs, by state", labels=["state"])
            for e in ExportState:
                exports.add_metric([e.value], counts.exports.get(e.value, 0))
            yield segments
            yield exports
            yield GaugeMetricFamily("nvr_holds_active", "Evidence holds in force",
                                    value=counts.holds_active)  # fmt: skip
