"""Wiring and lifecycle: recovery, cameras, API; signals (SIGHUP reloads) and systemd
notifications."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from nvr.api.server import make_app
from nvr.clock import Clock, SystemClock
from nvr.config import CameraConfig, Config
from nvr.errors import ConfigError
from nvr.exports import ExportManager
from nvr.ingest.camera import CameraState, CameraStatus, CameraSupervisor
from nvr.ingest.onvif import DeviceIdentity
from nvr.ingest.source import FixedSource, OnvifSource, StreamSource
from nvr.metrics import Metrics
from nvr.reload import ReloadReport, one_line, plan_reload, read_config
from nvr.storage.index import Index
from nvr.storage.leases import ReaderLeases
from nvr.storage.recorder import Recorder
from nvr.storage.recovery import open_checked_index, recover
from nvr.storage.retention import CameraRule, Floor, Retention
from nvr.storage.segmenter import assign_staggers
from nvr.systemd import notify, watchdog_interval_s

log = logging.getLogger(__name__)


def _rules(cameras: Iterable[CameraConfig]) -> list[CameraRule]:
    return [CameraRule(c.id, c.retain_days, c.retain_bytes) for c in cameras]


class App:
    def __init__(self, cfg: Config, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.index: Index | None = None
        self.supervisors: list[CameraSupervisor] = []  # in config order
        self._tasks: dict[str, asyncio.Task[None]] = {}  # camera id -> its supervisor's task
        self._staggers_90k: dict[str, int] = {}  # camera id -> its rotation-grid offset
        self._reconfig = asyncio.Lock()  # one reload at a time, and none during stop
        self._runner: web.AppRunner | None = None
        self.leases = ReaderLeases()  # segments being read: not to be deleted (I6)
        self.exports: ExportManager | None = None
        self.retention: Retention | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self.metrics: Metrics | None = None  # with the API

    def statuses(self) -> list[CameraStatus]:
        return [s.status() for s in self.supervisors]

    def public_config(self) -> dict[str, Any]:
        return self.cfg.public()  # the running one: a reload replaces self.cfg

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
            _rules(cfg.cameras),
            Floor(cfg.storage.min_free_bytes or 0, cfg.storage.min_free_percent),
            interval_s=cfg.storage.retention_interval_s, space_check_s=cfg.storage.space_check_s,
        )  # fmt: skip
        await self.retention.space_pass()  # room to record before the cameras start
        self._retention_task = asyncio.create_task(self.retention.run_forever(), name="retention")
        segment_90k = cfg.storage.segment_seconds * 90_000
        staggers = assign_staggers((c.id for c in cfg.cameras), segment_90k)
        for cam in cfg.cameras:
            await self._start_camera(cam, staggers[cam.id])
        if serve_api:
            host, _, port = cfg.api.listen.rpartition(":")
            self.metrics = Metrics(lambda: self.supervisors, index=index,
                                   retention=self.retention, clock=self.clock)  # fmt: skip
            self.metrics.start()
            api = make_app(self.statuses, index, root, clock=self.clock, leases=self.leases,
                           exports=self.exports,
                           max_clip_90k=cfg.api.max_clip_seconds * 90_000,
                           config=self.public_config, metrics=self.metrics)  # fmt: skip
            self._runner = web.AppRunner(api, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, host.strip("[]"), int(port)).start()
            log.info("API listening on http://%s", cfg.api.listen)
        log.info("recording %d cameras into %s", len(self.supervisors), root)

    async def _start_camera(self, cam: CameraConfig, stagger_90k: int) -> None:
        """Upsert the camera's row and record it in a task of its own."""
        index, retention = self.index, self.retention
        assert index is not None and retention is not None
        storage = self.cfg.storage
        await index.upsert_camera(cam.id, cam.name, cam.safe_url)
        recorder = Recorder(
            cam.id,
            root=storage.path,
            index=index,
            clock=self.clock,
            segment_seconds=storage.segment_seconds,
            writer_queue_frames=storage.writer_queue_frames,
            stagger_offset_90k=stagger_90k,
        )
        sup = CameraSupervisor(cam, recorder, self.clock, self._source_for(cam),
                               storage_gate=retention.gate)  # fmt: skip
        self.supervisors.append(sup)
        self._staggers_90k[cam.id] = stagger_90k
        self._tasks[cam.id] = asyncio.create_task(sup.run_forever(), name=f"camera-{cam.id}")

    async def _stop_cameras(self, ids: Collection[str]) -> None:
        """Cancel the cameras' tasks (each open run ends ``shutdown``, its segment closed),
        then stop their writers, all cameras at once. Their statuses stay (``stopped``)."""
        sups = [s for s in self.supervisors if s.cfg.id in ids]
        tasks = [self._tasks.pop(s.cfg.id) for s in sups]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for sup, res in zip(sups, results, strict=True):
            if isinstance(res, Exception):
                log.error("camera=%s stopped with %r", sup.cfg.id, res)
        await asyncio.gather(*(s.recorder.close() for s in sups))

    async def reload(self, new: Config) -> ReloadReport:
        """Apply ``new``'s cameras: start the added, stop the removed, restart the changed, leave
        the rest running. Other sections are kept as they run (a warning names them)."""
        async with self._reconfig:
            running = {s.cfg.id: s.cfg for s in self.supervisors}
            report = plan_reload(running, self.cfg, new)
            if report.not_applied:
                log.warning("reload: [%s] changed but only apply at a restart; keeping the "
                            "running values", "], [".join(report.not_applied))  # fmt: skip
            # Restarted cameras keep their grid offset; added ones fit around the others.
            kept = {i: self._staggers_90k[i] for i in (*report.unchanged, *report.restarted)}
            leaving = {*report.removed, *report.restarted}
            await self._stop_cameras(leaving)
            self.supervisors[:] = [s for s in self.supervisors if s.cfg.id not in leaving]
            for cam_id in report.removed:
                del self._staggers_90k[cam_id]
            self.cfg = self.cfg.model_copy(update={"cameras": new.cameras})
            if self.retention is not None:
                self.retention.rules = _rules(new.cameras)
            segment_90k = self.cfg.storage.segment_seconds * 90_000
            staggers = assign_staggers((c.id for c in new.cameras), segment_90k, fixed=kept)
            starting = {*report.added, *report.restarted}
            for cam in new.cameras:
                if cam.id in starting:
                    await self._start_camera(cam, staggers[cam.id])
            order = {cam.id: n for n, cam in enumerate(new.cameras)}
            self.supervisors.sort(key=lambda s: order[s.cfg.id])
            return report

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
        """For systemd's STATUS=: how many cameras record, which do not and why."""
        statuses = self.statuses()
        streaming = sum(1 for s in statuses if s.state is CameraState.STREAMING)
        line = f"{streaming}/{len(statuses)} cameras streaming"
        failing = [f"{s.id} ({s.last_error_kind or s.state.value})" for s in statuses
                   if s.state not in (CameraState.STREAMING, CameraState.DISABLED)]  # fmt: skip
        if failing:
            shown = ", ".join(failing[:5]) + (
                f" and {len(failing) - 5} more" if len(failing) > 5 else ""
            )
            line += f"; not recording: {shown}"
        if self.retention is not None and not self.retention.gate.ok:
            line += "; STORAGE FULL (only held footage left)"
        return line

    async def stop(self) -> None:
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        async with self._reconfig:  # a reload under way finishes first
            await self._stop_cameras([s.cfg.id for s in self.supervisors])
        if self._runner is not None:
            await self._runner.cleanup()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.exports is not None:
            await self.exports.stop()  # unfinished jobs resume at the next start
        if self.index is not None:
            await self.index.close()


async def _reload_once(app: App, config_path: Path) -> None:
    try:
        new = await asyncio.to_thread(read_config, config_path)
    except ConfigError as exc:
        log.error("configuration reload refused: %s; still running the previous configuration",
                  one_line(str(exc)))  # fmt: skip
        return
    report = await app.reload(new)
    log.info("%s", report.summary())


async def _reload_on_hup(app: App, config_path: Path, hup: asyncio.Event,
                         stop: asyncio.Event) -> None:  # fmt: skip
    """Reload at each SIGHUP, one at a time; SIGHUPs during a reload make one more after it.

    Tells systemd (``Type=notify-reload``) with ``RELOADING=1`` and ``READY=1`` around it.
    """
    while True:
        await hup.wait()
        hup.clear()
        if stop.is_set():
            return
        log.info("SIGHUP: reloading %s", config_path)
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")
        try:
            await _reload_once(app, config_path)
        except Exception:  # a camera's row or task could not be made: the next reload retries
            log.exception("reload failed part way")
        finally:
            notify("READY=1")


START_EXTEND_EVERY_S = 10.0
"""While start-up runs, systemd is asked this often for more time (three times this much)."""


async def _extend_start_timeout() -> None:
    """Keep systemd's start timeout (90 s by default) from killing a start that is working.

    A schema upgrade reads the whole index once, and recovery after a crash reads every open
    segment: minutes on a year of 16 cameras. Killed, the upgrade would roll back and the
    restart would begin it again, for ever. The loop stays free during both (the index works
    in its own thread), so this task runs until ``App.start`` returns."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        await asyncio.sleep(START_EXTEND_EVERY_S)
        waited_s = loop.time() - began
        extend_usec = int(3 * START_EXTEND_EVERY_S * 1_000_000)
        notify(f"EXTEND_TIMEOUT_USEC={extend_usec}\nSTATUS=starting for {waited_s:.0f} s: "
               "opening the index (an upgrade or crash recovery can take minutes)")  # fmt: skip
        log.info("still starting after %.0f s (index upgrade or crash recovery)", waited_s)


async def serve(cfg: Config, config_path: Path) -> int:
    """Run until SIGTERM/SIGINT; a second signal stops at once; SIGHUP re-reads
    ``config_path`` and applies its cameras. Returns the exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            # At once, as promised: open segments stay open and the next start recovers them.
            log.warning("second %s: exiting now; open segments are recovered at next start",
                        signame)  # fmt: skip
            logging.shutdown()
            os._exit(1)
        log.info("%s: stopping (closing open segments)", signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    hup = asyncio.Event()  # set early: a SIGHUP during start-up is served once it is up
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    app = App(cfg)
    keepalive = asyncio.create_task(_extend_start_timeout(), name="start-keepalive")
    try:
        await app.start()
    except BaseException:
        await app.stop()  # close what did open (the index's thread would keep us alive)
        raise
    finally:
        keepalive.cancel()
    notify("READY=1\nSTATUS=" + app.status_line())
    reloader = asyncio.create_task(_reload_on_hup(app, config_path, hup, stop), name="reload")
    interval = watchdog_interval_s()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval or 5.0)
            notify(("WATCHDOG=1\n" if interval else "") + "STATUS=" + app.status_line())
    finally:
        notify("STOPPING=1")
        stop.set()
        hup.set()  # the reloader sees `stop` and returns, after a reload under way
        await reloader
        await app.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0
