"""kill -9 of the daemon while recording, then a restart: invariant I2 in practice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nvr.app import App
from nvr.config import load_config
from nvr.storage.recovery_file import sha256_file
from support.fakecam import FakeCam
from support.recording import IndexReader, camera_toml, ffprobe_errors, poll

pytestmark = pytest.mark.rtsp


async def test_kill_9_then_restart_recovers_the_open_segment(
    cam_none: FakeCam, tmp_path: Path
) -> None:
    config = tmp_path / "nvr.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "store"}"\nsegment_seconds = 4\n'
        '[api]\nlisten = "127.0.0.1:0"\n'
        + camera_toml("cam", cam_none.url("/file/h264-aac"), audio="copy"),
        encoding="utf-8",
    )
    cfg = load_config(config)
    reader = IndexReader(cfg.storage.index_path)
    log = (tmp_path / "nvr.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nvr", "run", "--config", str(config),
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:

        def open_segment_is_well_under_way() -> bool:
            assert proc.returncode is None, (tmp_path / "nvr.log").read_text()
            closed = reader.segments("cam", "closed")
            opened = reader.segments("cam", "open")
            return bool(closed) and bool(opened) and time.time() - opened[0].start_90k / 90_000 > 2

        await poll("an open segment 2 s in", open_segment_is_well_under_way)
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    victim = reader.segments("cam", "open")[0]

    app = App(cfg)
    await app.start(serve_api=False)  # recovery runs here
    await app.stop()

    after = next(s for s in reader.segments("cam") if s.id == victim.id)
    assert after.state == "closed", after
    path = cfg.storage.path / after.path
    assert ffprobe_errors(path) == ""
    assert after.size_bytes == path.stat().st_size
    assert after.sha256 == sha256_file(path)
    assert after.video_frames and after.video_frames > 0
    crashed = next(r for r in reader.runs("cam") if r.id == victim.run_id)
    assert crashed.end_reason == "crash", crashed
    assert after.end_90k is not None and crashed.end_90k == after.end_90k
    missing_s = killed_at - after.end_90k / 90_000
    print(f"kill -9: {missing_s:.3f} s of video before the kill missing")
    assert missing_s <= 1.0, missing_s
