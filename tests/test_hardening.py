"""The service unit as systemd would check it, and the recorder under MemoryDenyWriteExecute.

``systemd-analyze verify`` checks the unit file (with ExecStart pointed at this checkout's
``nvr``, the only line that depends on where it is installed). systemd's
``MemoryDenyWriteExecute=yes`` refuses memory that is writable and executable, as
``prctl(PR_SET_MDWE)`` does since Linux 6.3; the test applies that prctl to the daemon and to
``nvr clip`` and runs what loads native code: PyAV muxing, G.711 to AAC encoding, H.264
decoding for a snapshot, clip assembly, uvloop and aiohttp.
"""

from __future__ import annotations

import asyncio
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from nvr.api.times import format_rfc3339
from support.fakecam import FakeCam
from support.recording import IndexReader, camera_toml, poll

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "nvr.service"
NVR = Path(sys.executable).with_name("nvr")
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
# Sets MDWE (inherited across exec), then runs argv[1:].
LAUNCHER = (
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
    f"rc = libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0); "
    "sys.exit(f'prctl(PR_SET_MDWE) failed: errno {ctypes.get_errno()}') if rc else None; "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (Debian package systemd)"
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/opt/nvr/.venv/bin/nvr " in text
    unit = tmp_path / "nvr.service"
    unit.write_text(text.replace("/opt/nvr/.venv/bin/nvr", str(NVR)), encoding="utf-8")
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    for directive in (
        "Type=notify", "WatchdogSec=", "Restart=on-failure", "RequiresMountsFor=", "User=nvr",
        "ProtectSystem=strict", "ReadWritePaths=", "NoNewPrivileges=yes", "PrivateTmp=yes",
        "ProtectHome=yes", "MemoryDenyWriteExecute=yes",
    ):  # fmt: skip
        assert directive in text, directive


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(66, 0, 0, 0, 0) >= 0)  # PR_GET_MDWE


def _mdwe(*argv: str) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, *argv]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_mdwe_is_enforced_by_the_launcher() -> None:
    """The control: under the launcher, writable+executable memory is refused."""
    if not _mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    probe = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)"
    out = subprocess.run(_mdwe(sys.executable, "-c", probe), capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert out.returncode != 0 and "PermissionError" in out.stderr, out.stderr


@pytest.mark.rtsp
async def test_the_recorder_runs_under_memory_deny_write_execute(
    cam_none: FakeCam, tmp_path: Path
) -> None:
    if not _mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    port = _free_port()
    store = tmp_path / "store"
    config = tmp_path / "nvr.toml"
    config.write_text(
        f'[storage]\npath = "{store}"\nsegment_seconds = 2\n[api]\nlisten = "127.0.0.1:{port}"\n'
        + camera_toml("g711", cam_none.url("/file/h264-pcma"), audio="aac")
        + camera_toml("hevc", cam_none.url("/file/h265")),
        encoding="utf-8",
    )
    made = await asyncio.to_thread(
        subprocess.run,
        _mdwe(str(NVR), "token", "add", "--config", str(config), "--role", "operator",
              "--name", "mdwe"), capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = made.stdout.strip()
    proc = await asyncio.create_subprocess_exec(
        *_mdwe(str(NVR), "run", "--config", str(config)), stderr=asyncio.subprocess.PIPE
    )
    reader = IndexReader(store / "index.db")
    try:
        await poll("closed segments from both cameras",
                   lambda: {s.camera_id for s in reader.segments(state="closed")}
                   >= {"g711", "hevc"}, timeout_s=60)  # fmt: skip
        seg = reader.segments("g711", "closed")[0]
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            base = f"http://127.0.0.1:{port}/api/v1/cameras/g711"
            async with http.get(f"{base}/snapshot.jpg") as resp:
                assert resp.status == 200 and (await resp.read())[:2] == b"\xff\xd8"
            params = {"start": _rfc3339(seg.start_90k), "end": _rfc3339(seg.end_90k or 0)}
            async with http.get(f"{base}/video.mp4", params=params) as resp:
                assert resp.status == 200 and len(await resp.read()) > 10_000
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    out = tmp_path / "clip.mp4"
    clip = await asyncio.create_subprocess_exec(
        *_mdwe(str(NVR), "clip", "--config", str(config), "--camera", "g711",
               "--start", _rfc3339(seg.start_90k), "--end", _rfc3339(seg.end_90k or 0),
               "-o", str(out)), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await clip.communicate()
    assert clip.returncode == 0, err.decode()
    assert out.stat().st_size > 10_000


def _rfc3339(t_90k: int) -> str:
    return format_rfc3339(t_90k)
