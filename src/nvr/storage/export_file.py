"""An export on disk: the clip file, hashed as it is written, and its JSON manifest (blocking).

The clip goes to ``<name>.part`` first and is renamed once complete and fsynced, so a file
with the final name is always whole. The manifest is what an officer hands over with the
clip: who the camera is, what was asked and what was delivered, the gaps and their reasons,
every source segment with its SHA-256 (the index recorded it when the segment was closed), the
clocks involved, and the SHA-256 of the clip itself.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nvr import __version__
from nvr.errors import StorageError
from nvr.storage.clip import Clip
from nvr.storage.fsync import fsync_dir

MANIFEST_VERSION = 1
_WRITE_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class WrittenFile:
    size_bytes: int
    sha256: str


def write_clip_file(
    clip: Clip, path: Path, on_progress: Callable[[int], None] | None = None
) -> WrittenFile:
    """Write ``clip`` to ``path`` (via ``path.part``), fsync it, return its size and hash."""
    part = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    done = 0
    # Hashing runs in a thread of its own, a chunk behind the writes (hashlib and file writes
    # both release the GIL on large buffers), so the hash costs little extra wall time.
    hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="export-sha256")
    hashed: concurrent.futures.Future[None] | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with part.open("wb") as f:
            for data in clip.chunks(size=_WRITE_BYTES):
                f.write(data)
                if hashed is not None:
                    hashed.result()
                hashed = hasher.submit(digest.update, data)
                done += len(data)
                if on_progress is not None:
                    on_progress(done)
            if hashed is not None:
                hashed.result()
            f.flush()
            os.fsync(f.fileno())
        part.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise StorageError(f"export {path.name}: cannot write: {exc.strerror or exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        hasher.shutdown(wait=True)
    return WrittenFile(done, digest.hexdigest())


def write_json(path: Path, document: Mapping[str, object]) -> None:
    """Write a JSON document whole (temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(document, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"{path.name}: cannot write: {exc.strerror or exc}") from exc


def utc_text(t_90k: int) -> str:
    """RFC 3339 in UTC with milliseconds."""
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t_90k * 100 // 9)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _when(t_90k: int) -> dict[str, object]:
    return {"utc": utc_text(t_90k), "t_90k": t_90k}


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h) on LP64: only the leading fields are read; the tail is
    # padding big enough for the kernel to fill.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("tail", ctypes.c_char * 256),
    ]


_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


def nvr_clock_facts() -> dict[str, object]:
    """What the kernel says about this machine's clock discipline (``adjtimex``, read-only)."""
    facts: dict[str, object] = {"source": "adjtimex"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))  # modes 0: read only
    except (OSError, AttributeError) as exc:
        return {"source": "adjtimex", "error": str(exc)}
    if state < 0:
        return {"source": "adjtimex", "error": os.strerror(ctypes.get_errno())}
    facts["synchronized"] = state != _TIME_ERROR and not tx.status & _STA_UNSYNC
    facts["max_error_us"] = tx.maxerror
    facts["estimated_error_us"] = tx.esterror
    return facts


def build_manifest(
    clip: Clip,
    written: WrittenFile,
    *,
    export_id: str,
    file_name: str,
    camera: Mapping[str, object],
    run_clock_offsets_ns: Mapping[int, int | None],
    request: Mapping[str, object],
    created_90k: int,
) -> dict[str, object]:
    """The manifest document (see docs/api.md for its fields)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "export_id": export_id,
        "software": {"name": "nvr", "version": __version__},
        "created": _when(created_90k),
        "request": dict(request),
        "camera": dict(camera),
        "asked": {"start": _when(clip.asked_start_90k), "end": _when(clip.asked_end_90k)},
        "delivered": {
            "start": _when(clip.delivered_start_90k),
            "end": _when(clip.delivered_end_90k),
            "shown_seconds": clip.shown_90k / 90_000,
            "first_keyframe": _when(clip.first_frame_90k),
            "video_frames": clip.video_frames,
            "audio": clip.has_audio,
        },
        "gaps": [
            {
                "start": _when(g.start_90k),
                "end": _when(g.end_90k),
                "reason": g.reason,
                "detail": g.detail,
            }
            for g in clip.gaps
        ],
        "sources": [
            {
                "segment_id": s.segment_id,
                "run_id": s.run_id,
                "path": s.path,
                "start": _when(s.start_90k),
                "end": _when(s.end_90k),
                "bytes": s.size_bytes,
                "sha256": s.sha256,
            }
            for s in clip.sources
        ],
        "clocks": {
            "nvr": nvr_clock_facts(),
            "camera_offset_ms_by_run": {
                str(run): (None if off is None else off / 1e6)
                for run, off in sorted(run_clock_offsets_ns.items())
            },
            "note": "camera offset = camera clock minus NVR clock, when the camera reported it",
        },
        "file": {"name": file_name, "bytes": written.size_bytes, "sha256": written.sha256},
    }
