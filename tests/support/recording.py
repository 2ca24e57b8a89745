"""Run the recorder in-process against the simulated camera and read back what it wrote."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av

from nvr.app import App
from nvr.config import Config, parse_config
from nvr.media import VideoCodec
from nvr.storage.nal_framing import annexb_nal_units, sample_nal_units


def make_config(storage: Path, cameras: str, *, segment_seconds: int = 2) -> Config:
    """A config with the given ``[[cameras]]`` TOML text, storage under ``storage``."""
    text = f"""
[storage]
path = "{storage}"
segment_seconds = {segment_seconds}
[api]
listen = "127.0.0.1:1"
{cameras}
"""
    return parse_config(text)


def camera_toml(
    cam_id: str,
    url: str,
    *,
    transport: str = "tcp",
    audio: str = "off",
    username: str | None = None,
    password: str | None = None,
    extra: str = "",
) -> str:
    lines = [
        "[[cameras]]",
        f'id = "{cam_id}"',
        f"url = {json.dumps(url)}",
        f'transport = "{transport}"',
        f'audio = "{audio}"',
        "backoff_initial_s = 0.3",
        "backoff_max_s = 2",
        "stall_timeout_s = 3",
    ]
    if username is not None:
        lines.append(f"username = {json.dumps(username)}")
    if password is not None:
        lines.append(f"password = {json.dumps(password)}")
    return "\n".join(lines) + "\n" + extra + "\n"


@dataclass(frozen=True)
class Run:
    id: int
    camera_id: str
    start_90k: int
    end_90k: int | None
    end_reason: str | None
    end_detail: str | None
    clock_offset_ns: int | None


@dataclass(frozen=True)
class Segment:
    id: int
    run_id: int
    camera_id: str
    path: str
    state: str
    start_90k: int
    end_90k: int | None
    media_duration_90k: int | None
    video_frames: int | None
    size_bytes: int | None
    sha256: str | None


class IndexReader:
    """Read-only look at the index through plain sqlite3, as an outside observer would."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def _query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        if not self.db.exists():
            return []
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # schema not created yet
        finally:
            con.close()

    def runs(self, camera_id: str | None = None) -> list[Run]:
        rows = self._query(
            "SELECT id, camera_id, start_90k, end_90k, end_reason, end_detail, clock_offset_ns "
            "FROM run "
            "WHERE ?1 IS NULL OR camera_id = ?1 ORDER BY id",
            camera_id,
        )
        return [Run(*r) for r in rows]  # type: ignore[arg-type]  # columns match the fields

    def segments(self, camera_id: str | None = None, state: str | None = None) -> list[Segment]:
        rows = self._query(
            "SELECT id, run_id, camera_id, path, state, start_90k, end_90k, media_duration_90k, "
            "video_frames, bytes, sha256 FROM segment "
            "WHERE (?1 IS NULL OR camera_id = ?1) AND (?2 IS NULL OR state = ?2) "
            "ORDER BY camera_id, start_90k",
            camera_id,
            state,
        )
        return [Segment(*r) for r in rows]  # type: ignore[arg-type]  # columns match the fields


async def poll(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Wait until ``check()`` holds, or fail naming ``what``. Polls; never a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def record_until(
    cfg: Config, what: str, check: Callable[[IndexReader], bool], timeout_s: float = 60.0
) -> tuple[App, IndexReader]:
    """Start the recorder, wait for ``check``, stop it cleanly; returns the (stopped) app."""
    app = App(cfg)
    reader = IndexReader(cfg.storage.index_path)
    await app.start(serve_api=False)
    try:
        await poll(what, lambda: check(reader), timeout_s)
    finally:
        await app.stop()
    return app, reader


def ffprobe_errors(path: Path) -> str:
    """What ``ffprobe -v error`` says about a file (empty when it reads cleanly)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", str(path)], capture_output=True, text=True, check=False
    )
    return (out.stderr + out.stdout).strip()


def ffprobe_streams(path: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_streams", "-show_format",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    streams: list[dict[str, object]] = json.loads(out.stdout)["streams"]
    return streams


def ffprobe_duration_s(path: Path) -> float:
    """The video stream's duration as ffprobe reads it (audio may run a frame longer)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip())


def _length_size(codec: VideoCodec, extradata: bytes) -> int:
    if codec is VideoCodec.H264:
        return (extradata[4] & 3) + 1
    return (extradata[21] & 3) + 1


def mp4_video_units(path: Path, codec: VideoCodec) -> list[tuple[bytes, ...]]:
    """Each video sample of an MP4 as its NAL units, byte for byte."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        extradata = stream.codec_context.extradata
        assert extradata is not None
        size = _length_size(codec, extradata)
        return [
            tuple(sample_nal_units(bytes(packet), size))
            for packet in container.demux(stream)
            if packet.size
        ]


def ts_video_units(path: Path, codec: VideoCodec) -> list[tuple[bytes, ...]]:
    """Each access unit of an MPEG-TS clip as NAL units: what the camera serves, AUDs included."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [
            tuple(annexb_nal_units(bytes(p)))
            for p in container.demux(stream)
            if p.size
        ]


def check_cyclic_run(recorded: list[tuple[bytes, ...]], source: list[tuple[bytes, ...]]) -> int:
    """Assert ``recorded`` is consecutive frames of the looped ``source``; returns where it began.

    This is both the byte-identity check and the frame-count check: a lost, duplicated or
    altered frame breaks the sequence.
    """
    assert recorded, "nothing recorded"
    starts = [i for i, unit in enumerate(source) if unit == recorded[0]]
    assert starts, "the first recorded frame is not a frame of the source clip"
    start = starts[0]
    for k, unit in enumerate(recorded):
        expected = source[(start + k) % len(source)]
        if unit != expected:
            raise AssertionError(
                f"recorded frame {k} differs from source frame {(start + k) % len(source)}: "
                f"{[len(n) for n in unit]} vs {[len(n) for n in expected]} NAL bytes"
            )
    return start
