"""Configuration reload: cameras added, removed or changed start, stop or restart without
touching the others; a broken file is refused and the running configuration stays. In-process
with ``App.reload`` and for real through SIGHUP to ``nvr run``, against the simulated camera."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from nvr.app import App
from nvr.errors import ConfigError
from nvr.reload import one_line, plan_reload, read_config
from nvr.storage.retention import CameraRule
from support.fakecam import FakeCam
from support.recording import IndexReader, Run, camera_toml, ffprobe_errors, make_config, poll

ADDED_WITHIN_S = 5.0  # a camera added by a reload has a run this soon


def _closed(reader: IndexReader, cam: str) -> int:
    return len(reader.segments(cam, "closed"))


def _open_run(reader: IndexReader, cam: str) -> Run | None:
    return next((r for r in reader.runs(cam) if r.end_90k is None), None)


def _open_run_id(reader: IndexReader, cam: str) -> int | None:
    """The camera's open run (compared by id: a sender report may fill in its clock offset)."""
    run = _open_run(reader, cam)
    return run.id if run is not None else None


# --- the plan and the file, without cameras ----------------------------------------------


def test_plan_sorts_cameras_by_id_and_names_sections_that_need_a_restart(tmp_path: Path) -> None:
    url = "rtsp://127.0.0.1:9/x"
    old = make_config(tmp_path, camera_toml("a", url) + camera_toml("b", url)
                      + camera_toml("c", url))  # fmt: skip
    new = make_config(tmp_path, camera_toml("a", url) + camera_toml("b", url, transport="udp")
                      + camera_toml("d", url), segment_seconds=4)  # fmt: skip
    running = {cam.id: cam for cam in old.cameras}
    report = plan_reload(running, old, new)
    assert report.added == ("d",) and report.removed == ("c",)
    assert report.restarted == ("b",) and report.unchanged == ("a",)
    assert report.not_applied == ("storage",)
    assert report.summary() == "reload: added d, removed c, restarted b, unchanged 1"
    same = plan_reload(running, old, old)
    assert same.summary() == "reload: added none, removed none, restarted none, unchanged 3"
    assert same.not_applied == ()


def test_a_file_with_a_bad_key_or_an_unreadable_password_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nvr.toml"
    path.write_text('[storage]\nsegment_seconds = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as bad:
        read_config(path)
    line = one_line(str(bad.value))
    assert "\n" not in line and "storage.segment_seconds" in line, line
    missing = tmp_path / "no-such-password"
    gate = camera_toml("gate", "rtsp://127.0.0.1:9/x", extra=f'password_file = "{missing}"')
    path.write_text(gate, encoding="utf-8")
    with pytest.raises(ConfigError, match="camera gate: cannot read password_file"):
        read_config(path)


# --- in-process --------------------------------------------------------------------------


@pytest.mark.rtsp
async def test_reload_touches_only_the_cameras_that_changed(
    cam_none: FakeCam, tmp_path: Path
) -> None:
    keep = camera_toml("keep", cam_none.url("/file/h264"))
    cfg = make_config(tmp_path, keep + camera_toml("change", cam_none.url("/file/h264"))
                      + camera_toml("gone", cam_none.url("/file/h264")))  # fmt: skip
    new_cfg = make_config(
        tmp_path,
        camera_toml("added", cam_none.url("/file/h264"), extra="retain_days = 7")
        + keep
        + camera_toml("change", cam_none.url("/live/h264")),  # another mount
        segment_seconds=3,  # [storage]: needs a restart, so not applied
    )
    reader = IndexReader(cfg.storage.index_path)
    app = App(cfg)
    await app.start(serve_api=False)
    first = ("keep", "change", "gone")
    try:
        await poll("a closed segment of every camera",
                   lambda: all(_closed(reader, c) >= 1 for c in first))  # fmt: skip
        keep_run, change_run = _open_run(reader, "keep"), _open_run(reader, "change")
        assert keep_run is not None and change_run is not None

        reloaded_at = time.monotonic()
        report = await app.reload(new_cfg)
        await poll("a run of the added camera", lambda: bool(reader.runs("added")),
                   timeout_s=ADDED_WITHIN_S)  # fmt: skip
        added_after_s = time.monotonic() - reloaded_at
        print(f"reload: the added camera's first run {added_after_s:.2f} s after the reload")
        assert added_after_s <= ADDED_WITHIN_S

        assert (report.added, report.removed) == (("added",), ("gone",))
        assert (report.restarted, report.unchanged) == (("change",), ("keep",))
        assert report.not_applied == ("storage",)
        assert app.cfg.storage == cfg.storage and app.cfg.cameras == new_cfg.cameras
        assert [s.id for s in app.statuses()] == ["added", "keep", "change"]
        assert app.retention is not None
        assert CameraRule("added", 7.0, None) in app.retention.rules
        assert {r.camera_id for r in app.retention.rules} == {"added", "keep", "change"}

        # The removed camera's run ended at the reload, its segments closed and readable.
        (gone_run,) = reader.runs("gone")
        assert gone_run.end_reason == "shutdown", gone_run
        gone_segments = reader.segments("gone")
        assert gone_segments and all(s.state == "closed" for s in gone_segments)
        for seg in gone_segments:
            assert ffprobe_errors(tmp_path / seg.path) == "", seg
        # The changed camera: the old run ended `shutdown`, a new one records the new mount.
        old_change = next(r for r in reader.runs("change") if r.id == change_run.id)
        assert old_change.end_reason == "shutdown", old_change
        await poll("the changed camera's new run", lambda: len(reader.runs("change")) == 2)
        await poll("a closed segment of the added camera", lambda: _closed(reader, "added") >= 1)
        # The unchanged camera kept recording in the same run all along.
        assert _open_run_id(reader, "keep") == keep_run.id
        assert [r.id for r in reader.runs("keep")] == [keep_run.id]
    finally:
        await app.stop()
    (keep_after,) = reader.runs("keep")
    assert keep_after.id == keep_run.id and keep_after.end_reason == "shutdown"
    assert all(r.end_reason == "shutdown" for r in reader.runs())
    assert all(s.state == "closed" for s in reader.segments())


# --- through SIGHUP -----------------------------------------------------------------------


def _config_text(store: Path, cameras: str, *, segment_seconds: str = "2") -> str:
    return (f'[storage]\npath = "{store}"\nsegment_seconds = {segment_seconds}\n'
            f'[api]\nlisten = "127.0.0.1:0"\n{cameras}')  # fmt: skip


class _Notifications:
    """What the daemon sends to NOTIFY_SOCKET, collected by a task."""

    def __init__(self, sock: socket.socket) -> None:
        self.seen: list[str] = []
        self._task = asyncio.create_task(self._receive(sock))

    async def _receive(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.seen.append((await loop.sock_recv(sock, 4096)).decode())

    def count(self, wanted: str) -> int:
        return sum(1 for m in self.seen if wanted in m.split("\n"))

    def close(self) -> None:
        self._task.cancel()


async def _collect_lines(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode(errors="replace").rstrip("\n"))


@pytest.mark.rtsp
async def test_sighup_refuses_a_broken_file_then_adds_a_camera(
    cam_none: FakeCam, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    config = tmp_path / "nvr.toml"
    cam = camera_toml("cam", cam_none.url("/file/h264"))
    config.write_text(_config_text(store, cam), encoding="utf-8")
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    for name in ("JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    notes = _Notifications(sock)
    reader = IndexReader(store / "index.db")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nvr", "run", "--config", str(config),
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    stderr: list[str] = []
    collector = asyncio.create_task(_collect_lines(proc.stderr, stderr))
    try:
        await poll("READY=1", lambda: notes.count("READY=1") == 1, timeout_s=30)
        await poll("the camera's run", lambda: _open_run(reader, "cam") is not None)
        cam_run = _open_run_id(reader, "cam")

        # A broken file: refused with the key named; everything keeps running.
        config.write_text(_config_text(store, cam, segment_seconds='"x"'), encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        await poll("READY=1 after the refused reload", lambda: notes.count("READY=1") == 2)
        refused = [line for line in stderr if "configuration reload refused" in line]
        assert len(refused) == 1, stderr[-10:]
        assert "storage.segment_seconds" in refused[0]
        assert "still running the previous configuration" in refused[0]
        assert " ERROR " in refused[0]
        reloading = [m for m in notes.seen if "RELOADING=1" in m]
        assert len(reloading) == 1 and "MONOTONIC_USEC=" in reloading[0], notes.seen
        assert proc.returncode is None
        assert _open_run_id(reader, "cam") == cam_run

        # A valid file with a camera added: it records within seconds, the other runs on.
        added = camera_toml("added", cam_none.url("/file/h264"))
        config.write_text(_config_text(store, cam + added), encoding="utf-8")
        hup_at = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        await poll("a run of the added camera", lambda: bool(reader.runs("added")),
                   timeout_s=ADDED_WITHIN_S)  # fmt: skip
        added_after_s = time.monotonic() - hup_at
        print(f"SIGHUP: the added camera's first run {added_after_s:.2f} s after the signal")
        assert added_after_s <= ADDED_WITHIN_S
        await poll("READY=1 after the reload", lambda: notes.count("READY=1") == 3)
        assert any("reload: added added, removed none, restarted none, unchanged 1" in line
                   for line in stderr), stderr[-10:]  # fmt: skip
        assert _open_run_id(reader, "cam") == cam_run

        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        await collector
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        collector.cancel()
        notes.close()
        sock.close()
    assert proc.returncode == 0, stderr[-10:]
    assert {r.camera_id for r in reader.runs()} == {"cam", "added"}
    assert all(r.end_reason == "shutdown" for r in reader.runs())
