"""Wiring and lifecycle: recovery, cameras, API; signals and systemd notifications."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from nvr.api.server import make_app
from nvr.clock import Clock, SystemClock
from nvr.config import CameraConfig, Config
from nvr.exports import ExportManager
from nvr.ingest.camera import CameraState, CameraStatus, CameraSupervisor
from nvr.ingest.onvif import DeviceIdentity
from nvr.ingest.source import FixedSource, OnvifSource, StreamSource
from nvr.storage.index import Index
from nvr.storage.leases import ReaderLeases
from nvr.storage.recorder import Recorder
from nvr.storage.recovery import open_checked_index, recover
from nvr.storage.retention import CameraRule, Floor, Retention
from nvr.storage.segmenter import assign_staggers
from nvr.systemd import notify, watchdog_interval_s

log = logging.getLogger(__name__)


class App:
    def __init__(self, cfg: Config, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.index: Index | None = None
        self.supervisors: list[CameraSupervisor] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.leases = ReaderLeases()  # segments being read: not to be deleted (I6)
        self.exports: ExportManager | None = None
        self.retention: Retention | None = None
        self._retention_task: asyncio.Task[None] | None = None

    def statuses(self) -> list[CameraStatus]:
        return [s.status() for s in self.supervisors]

    async def start(self, *, serve_api: bool = True) -> None:
        cfg = self.cfg
        root = cfg.storage.path
        self.index = index = await open_checked_index(
            root, cfg.storage.index_path, require_mount=cfg.storage.require_mount
        )
        report = await recover(index, root)
        if report.segments_recovered or report.runs_ended:
            log.info(
                "recovered %d segments (%d frames), ended %d runs as crash",
                report.segments_recovered,
                report.frames_kept,
                report.runs_ended,
            )
        self.exports = ExportManager(index, root, self.leases,
                                     concurrency=cfg.api.export_concurrency)  # fmt: skip
        await self.exports.start()
        self.retention = Retention(
            index, root, self.leases, self.clock,
            [CameraRule(c.id, c.retain_days, c.retain_bytes) for c in cfg.cameras],
            Floor(cfg.storage.min_free_bytes or 0, cfg.storage.min_free_percent),
            interval_s=cfg.storage.retention_interval_s, space_check_s=cfg.storage.space_check_s,
        )  # fmt: skip
        await self.retention.space_pass()  # room to record before the cameras start
        self._retention_task = asyncio.create_task(self.retention.run_forever(), name="retention")
        segment_90k = cfg.storage.segment_seconds * 90_000
        staggers = assign_staggers((c.id for c in cfg.cameras), segment_90k)
        for cam in cfg.cameras:
            await index.upsert_camera(cam.id, cam.name, cam.safe_url)
            recorder = Recorder(
                cam.id,
                root=root,
                index=index,
                clock=self.clock,
                segment_seconds=cfg.storage.segment_seconds,
                writer_queue_frames=cfg.storage.writer_queue_frames,
                stagger_offset_90k=staggers[cam.id],
            )
            sup = CameraSupervisor(cam, recorder, self.clock, self._source_for(cam),
                                   storage_gate=self.retention.gate)  # fmt: skip
            self.supervisors.append(sup)
            self._tasks.append(asyncio.create_task(sup.run_forever(), name=f"camera-{cam.id}"))
        if serve_api:
            host, _, port = cfg.api.listen.rpartition(":")
            api = make_app(self.statuses, index, root, clock=self.clock, leases=self.leases,
                           exports=self.exports,
                           max_clip_90k=cfg.api.max_clip_seconds * 90_000,
                           config=cfg.public)  # fmt: skip
            self._runner = web.AppRunner(api, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, host.strip("[]"), int(port)).start()
            log.info("API listening on http://%s", cfg.api.listen)
        log.info("recording %d cameras into %s", len(self.supervisors), root)

    def _source_for(self, cam: CameraConfig) -> StreamSource:
        if cam.url is not None:
            return FixedSource(cam.url)
        index = self.index
        assert index is not None

        async def store_identity(ident: DeviceIdentity) -> None:
            await index.set_camera_identity(cam.id, serial=ident.serial, mac=ident.mac,
                                            manufacturer=ident.manufacturer,
                                            model=ident.model)  # fmt: skip

        return OnvifSource(cam, self.clock, on_identity=store_identity)

    def status_line(self) -> str:
        states = [s.state for s in self.supervisors]
        streaming = sum(1 for s in states if s is CameraState.STREAMING)
        return f"{streaming}/{len(states)} cameras streaming"

    async def stop(self) -> None:
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for sup, res in zip(self.supervisors, results, strict=True):
            if isinstance(res, Exception):
                log.error("camera=%s stopped with %r", sup.cfg.id, res)
        await asyncio.gather(*(s.recorder.close() for s in self.supervisors))
        if self._runner is not None:
            await self._runner.cleanup()
        if self.exports is not None:
            await self.exports.stop()  # unfinished jobs resume at the next start
        if self.index is not None:
            await self.index.close()


async def serve(cfg: Config) -> int:
    """Run until SIGTERM/SIGINT; a second signal stops at once. Returns the exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second %s: stopping immediately", signame)
            raise SystemExit(1)
        log.info("%s: stopping (closing open segments)", signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.warning("SIGHUP: configuration reload is not supported yet")
    )
    app = App(cfg)
    try:
        await app.start()
    except BaseException:
        await app.stop()  # close what did open (the index's thread would keep us alive)
        raise
    notify("READY=1\nSTATUS=" + app.status_line())
    interval = watchdog_interval_s()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval or 5.0)
            notify(("WATCHDOG=1\n" if interval else "") + "STATUS=" + app.status_line())
    finally:
        notify("STOPPING=1")
        await app.stop()
    return 0
