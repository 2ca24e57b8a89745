"""Export jobs: a clip and its manifest written under the storage root, a few at a time.

A job is a row in the index (``export_job``) before any work starts, so it survives a
restart: at start-up every job still ``queued`` or ``running`` is run again from the
beginning (its partial file is discarded; the clip is rebuilt from the same segments, so the
result is the same bytes), and a job whose recording has gone since is marked ``failed`` with
the reason. At most ``concurrency`` jobs write at once; the others wait their turn in order.
Progress lives in memory (bytes written of the clip's known size).

A job with ``hold`` places an evidence hold over its range on submission (case
``export <id>``), so retention keeps its source even while the job waits; a job resumed after
a restart has its hold already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nvr.errors import StorageError
from nvr.storage.clip import Clip, NoRecordingError, plan_clip
from nvr.storage.export_file import build_manifest, write_clip_file, write_json
from nvr.storage.index import Index
from nvr.storage.index_rows import ExportRow
from nvr.storage.leases import ReaderLeases

log = logging.getLogger(__name__)

EXPORT_DIR = "_exports"  # not a valid camera id, so never a camera's directory


@dataclass(frozen=True, slots=True)
class ExportRequest:
    camera_id: str
    start_90k: int
    end_90k: int
    reason: str
    requested_by: str
    token_name: str | None = None
    hold: bool = True


def manifest_name(file_name: str) -> str:
    return file_name.removesuffix(".mp4") + ".json"


async def camera_facts(index: Index, camera_id: str) -> dict[str, object]:
    """Who the camera is, for a manifest: id, name, source (no secrets) and ONVIF identity."""
    row = await index.camera(camera_id)
    if row is None:
        return {"id": camera_id}
    return {
        "id": row.id, "name": row.name, "source": row.source,
        "onvif": {"manufacturer": row.onvif_manufacturer, "model": row.onvif_model,
                  "serial": row.onvif_serial, "mac": row.onvif_mac},
    }  # fmt: skip


async def write_export(
    index: Index,
    root: Path,
    clip: Clip,
    path: Path,
    *,
    export_id: str,
    request: Mapping[str, object],
    created_90k: int,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Write the clip to ``path`` and its manifest beside it; returns (size, sha256)."""
    written = await asyncio.to_thread(write_clip_file, clip, path, on_progress)
    runs = await index.runs(clip.camera_id, clip.delivered_start_90k, clip.delivered_end_90k)
    offsets = {r.id: r.clock_offset_ns for r in runs if any(s.run_id == r.id for s in clip.sources)}
    manifest = build_manifest(
        clip, written, export_id=export_id, file_name=path.name,
        camera=await camera_facts(index, clip.camera_id), run_clock_offsets_ns=offsets,
        request=request, created_90k=created_90k,
    )  # fmt: skip
    await asyncio.to_thread(write_json, path.with_name(manifest_name(path.name)), manifest)
    return written.size_bytes, written.sha256


class ExportManager:
    def __init__(
        self, index: Index, root: Path, leases: ReaderLeases, *, concurrency: int = 2
    ) -> None:
        self._index = index
        self._root = root
        self._leases = leases
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._progress: dict[str, tuple[int, int]] = {}  # id -> (bytes written, clip size)

    async def start(self) -> None:
        """Run again every job a previous process left unfinished, oldest first."""
        for row in await self._index.unfinished_exports():
            log.info("export %s (camera=%s) was %s at shutdown; running it again",
                     row.id, row.camera_id, row.state.value)  # fmt: skip
            self._spawn(row)

    async def stop(self) -> None:
        """Cancel running jobs; they stay unfinished in the index and resume at next start."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def submit(self, req: ExportRequest) -> ExportRow:
        export_id = secrets.token_hex(8)
        row = await self._index.create_export(
            export_id, req.camera_id, req.start_90k, req.end_90k, reason=req.reason,
            requested_by=req.requested_by, token_name=req.token_name, hold=req.hold,
            file_name=f"{EXPORT_DIR}/{export_id}.mp4",
        )  # fmt: skip
        if req.hold:  # placed now, so the source cannot be deleted while the job waits
            try:
                await self._index.add_hold(
                    secrets.token_hex(8), [req.camera_id], req.start_90k, req.end_90k,
                    case_ref=f"export {export_id}", reason=req.reason,
                    created_by=req.token_name or req.requested_by, export_id=export_id,
                )  # fmt: skip
            except StorageError as exc:
                await self._fail(row, f"could not place its hold: {exc}")
                raise
        seconds = (req.end_90k - req.start_90k) // 90_000
        log.info("export %s queued: camera=%s, %d s, requested by %r", export_id,
                 req.camera_id, seconds, req.requested_by)  # fmt: skip
        self._spawn(row)
        return row

    def progress(self, export_id: str) -> tuple[int, int] | None:
        return self._progress.get(export_id)

    async def wait(self, export_id: str) -> None:
        """Until the job ends (tests and the CLI)."""
        task = self._tasks.get(export_id)
        if task is not None:
            await asyncio.shield(task)

    def _spawn(self, row: ExportRow) -> None:
        task = asyncio.create_task(self._run(row), name=f"export-{row.id}")
        self._tasks[row.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(row.id, None))

    async def _run(self, row: ExportRow) -> None:
        async with self._slots:
            try:
                await self._index.export_started(row.id)
                # Leased by range before the segments are looked up, until the file is written.
                with self._leases.hold_range(row.camera_id, row.start_90k, row.end_90k):
                    await self._write(row)
            except NoRecordingError:
                await self._fail(row, "nothing was recorded in the asked range")
            except StorageError as exc:
                await self._fail(row, str(exc))
            finally:
                self._progress.pop(row.id, None)

    async def _write(self, row: ExportRow) -> None:
        clip = await plan_clip(self._index, self._root, row.camera_id, row.start_90k, row.end_90k)
        self._progress[row.id] = (0, clip.size_bytes)

        def on_progress(done: int) -> None:
            self._progress[row.id] = (done, clip.size_bytes)

        request = {"reason": row.reason, "requested_by": row.requested_by,
                   "token_name": row.token_name, "hold": row.hold}  # fmt: skip
        assert row.file_name is not None
        size, sha = await write_export(
            self._index, self._root, clip, self._root / row.file_name, export_id=row.id,
            request=request, created_90k=row.created_90k, on_progress=on_progress,
        )  # fmt: skip
        await self._index.export_done(row.id, size, sha)
        log.info("export %s done: %d bytes, sha256 %s", row.id, size, sha)

    async def _fail(self, row: ExportRow, why: str) -> None:
        log.warning("export %s (camera=%s) failed: %s", row.id, row.camera_id, why)
        await self._index.export_failed(row.id, why)
