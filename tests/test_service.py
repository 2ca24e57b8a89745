"""`nvr run` as systemd sees it: notifications over NOTIFY_SOCKET, journald priority prefixes,
a clean stop on SIGTERM, and a refusal (with the reason) of a storage directory that is not its
index's."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from support.recording import camera_toml

WATCHDOG_USEC = 400_000  # keep-alives every 0.2 s


def write_config(tmp_path: Path, cameras: str = "") -> Path:
    config = tmp_path / "nvr.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "store"}"\n[api]\nlisten = "127.0.0.1:0"\n{cameras}',
        encoding="utf-8",
    )
    return config


async def _receive_until(sock: socket.socket, wanted: str, seen: list[str]) -> None:
    loop = asyncio.get_running_loop()
    while not any(wanted in m for m in seen):
        data = await loop.sock_recv(sock, 4096)
        seen.append(data.decode())


async def test_notify_watchdog_journal_and_clean_stop(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    config = write_config(tmp_path, camera_toml("cam", "rtsp://127.0.0.1:9/unreachable"))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), JOURNAL_STREAM="8:1234",
               WATCHDOG_USEC=str(WATCHDOG_USEC))  # fmt: skip
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nvr", "run", "--config", str(config),
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    seen: list[str] = []
    try:
        await asyncio.wait_for(_receive_until(sock, "READY=1", seen), 30)
        await asyncio.wait_for(_receive_until(sock, "WATCHDOG=1", seen), 10)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(_receive_until(sock, "STOPPING=1", seen), 10)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()
    assert proc.returncode == 0
    ready = next(m for m in seen if "READY=1" in m)
    assert "STATUS=0/1 cameras streaming" in ready
    lines = stderr.decode().splitlines()
    assert lines and all(line.startswith("<") and line[2] == ">" for line in lines), lines[:5]
    assert any(line.startswith("<6>nvr.app: SIGTERM") for line in lines)
    assert any(line.startswith("<4>") and "camera=cam" in line for line in lines)


async def test_a_storage_directory_of_another_index_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    (store / "index.db").write_bytes(b"")  # an index exists ...
    (store / ".nvr-storage").write_text("someone-else\n")  # ... but the disk is another one's
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nvr", "run", "--config", str(config),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "Refusing to start" in stderr.decode()
