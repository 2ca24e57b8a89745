"""The daemon's life under systemd: watchdog pings only from a healthy loop, clean SIGTERM,
a second signal that exits at once, and JSON log lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

import nvr.app as nvr_app
from nvr.app import serve
from nvr.config import load_config
from support.fakecam import FakeCam
from support.recording import IndexReader, camera_toml, ffprobe_errors, poll


class _Listener:
    """A NOTIFY_SOCKET of the test's own, read in a thread that stamps each datagram."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def times(self, what: str) -> list[float]:
        return [t for t, m in list(self.got) if what in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _config(tmp_path: Path, cameras: str) -> Path:
    path = tmp_path / "nvr.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "store"}"\nsegment_seconds = 2\n[api]\n'
                    f'listen = "127.0.0.1:0"\n{cameras}', encoding="utf-8")  # fmt: skip
    return path


async def test_a_blocked_event_loop_stops_the_watchdog_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = _Listener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    path = _config(tmp_path, camera_toml("cam", "rtsp://127.0.0.1:9/unreachable"))
    daemon = asyncio.create_task(serve(load_config(path), path))
    try:
        await poll("READY and a few pings", lambda: len(listener.times("WATCHDOG=1")) >= 3)
        blocked_at = time.monotonic()
        time.sleep(1.5)  # noqa: ASYNC251  (the point: the event loop stalls)
        unblocked_at = time.monotonic()
        await poll("pings again", lambda: any(t > unblocked_at
                                               for t in listener.times("WATCHDOG=1")))  # fmt: skip
        pings = listener.times("WATCHDOG=1")
        during = [t for t in pings if blocked_at + 0.05 < t < unblocked_at]
        assert during == [], "a ping went out while the loop was blocked"
        before = max(t for t in pings if t <= blocked_at + 0.05)
        after = min(t for t in pings if t >= unblocked_at)
        assert after - before >= 1.4
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a clean stop
        assert await asyncio.wait_for(daemon, 30) == 0
    finally:
        if not daemon.done():
            daemon.cancel()
        listener.close()
    assert listener.times("STOPPING=1")
    ready = [m for _, m in listener.got if "READY=1" in m]
    assert ready and "STATUS=0/1 cameras streaming; not recording: cam" in ready[0]


async def test_a_long_start_asks_systemd_for_more_time_until_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that takes long (a schema upgrade of a big index) keeps extending the start
    timeout, with a STATUS saying so, and stops once READY is sent."""
    listener = _Listener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(nvr_app, "START_EXTEND_EVERY_S", 0.05)
    real_start = nvr_app.App.start

    async def slow_start(self: nvr_app.App, *, serve_api: bool = True) -> None:
        # Start-up held until the daemon has asked for more time three times.
        await poll("three extensions", lambda: len(listener.times("EXTEND_TIMEOUT_USEC=")) >= 3)
        await real_start(self, serve_api=serve_api)

    monkeypatch.setattr(nvr_app.App, "start", slow_start)
    path = _config(tmp_path, "")
    daemon = asyncio.create_task(serve(load_config(path), path))
    try:
        await poll("READY", lambda: bool(listener.times("READY=1")))
        await poll("pings after READY", lambda: len(listener.times("WATCHDOG=1")) >= 5)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(daemon, 30) == 0
    finally:
        if not daemon.done():
            daemon.cancel()
        listener.close()
    extensions = [(t, m) for t, m in listener.got if "EXTEND_TIMEOUT_USEC=" in m]
    assert len(extensions) >= 3
    assert all("EXTEND_TIMEOUT_USEC=150000\n" in m and "STATUS=starting for" in m
               for _, m in extensions)  # fmt: skip
    [ready_at] = listener.times("READY=1")
    assert all(t < ready_at for t, _ in extensions), "extensions went on after READY"


async def _start(config: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nvr", "run", "--config", str(config), *extra,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.rtsp
async def test_sigterm_closes_every_segment_within_10_s_and_nothing_is_a_crash_after(
    cam_none: FakeCam, tmp_path: Path
) -> None:
    cams = "".join(camera_toml(f"cam-{i}", cam_none.url("/live/h264")) for i in range(3))
    config = _config(tmp_path, cams)
    reader = IndexReader(tmp_path / "store" / "index.db")
    proc = await _start(config, "--log-format", "json")
    try:
        await poll("every camera mid-segment",
                   lambda: len({s.camera_id for s in reader.segments(state="closed")}) == 3
                   and len(reader.segments(state="open")) == 3, timeout_s=60)  # fmt: skip
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        took_s = time.monotonic() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0 and took_s < 10, (proc.returncode, took_s)
    segments = reader.segments()
    assert segments and {s.state for s in segments} == {"closed"}
    for s in segments[-3:]:
        assert ffprobe_errors(tmp_path / "store" / s.path) == ""
    assert {r.end_reason for r in reader.runs()} == {"shutdown"}
    # JSON log lines: one object each, camera context lifted out.
    lines = [json.loads(line) for line in stderr.decode().splitlines()]
    assert {"cam-0", "cam-1", "cam-2"} <= {d.get("camera") for d in lines}
    assert all({"time", "level", "logger", "message"} <= set(d) for d in lines)
    # The next start finds nothing to recover: no run ends `crash`.
    proc = await _start(config)
    try:
        await poll("the restarted daemon recording", lambda: len(reader.runs()) >= 6, 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert "crash" not in {r.end_reason for r in reader.runs()}


@pytest.mark.rtsp
async def test_a_second_signal_exits_at_once(cam_none: FakeCam, tmp_path: Path) -> None:
    config = _config(tmp_path, camera_toml("cam", cam_none.url("/live/h264")))
    reader = IndexReader(tmp_path / "store" / "index.db")
    proc = await _start(config)
    try:
        await poll("recording", lambda: len(reader.segments(state="open")) == 1, 60)
        # Two different signals (two SIGTERMs sent back to back merge into one pending signal).
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # Both signals arrive long before a clean stop could finish (the writer threads alone
    # take longer): the second one ends the process at once, with status 1.
    assert proc.returncode == 1, stderr.decode()[-500:]
    assert "second SIGINT: exiting now" in stderr.decode()
    assert reader.segments(state="open")  # left for the next start's recovery
