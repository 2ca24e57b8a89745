"""Start-up recovery (invariant I2) and the storage identity check.

After a crash the index may hold segments in state ``open`` and runs with no end. Each open
segment's file is truncated to its last whole fragment, hashed and closed; its run is ended
with reason ``crash`` at the end of what was kept. Nothing complete is thrown away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from nvr.errors import StorageError
from nvr.storage.index import Index
from nvr.storage.model import RunEndReason
from nvr.storage.recovery_file import recover_segment_file

log = logging.getLogger(__name__)

IDENTITY_FILE = ".nvr-storage"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    segments_recovered: int
    segments_missing: int
    runs_ended: int
    frames_kept: int
    deletions_finished: int = 0


def unlink_segment_files(root: Path, rel_paths: list[str]) -> list[str]:
    """Unlink segment files (blocking); a file already gone is fine. Returns the paths that
    could not be unlinked, which stay in ``deleting`` for the next attempt."""
    failed = []
    for rel in rel_paths:
        try:
            (root / rel).unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot delete %s: %s", rel, exc.strerror or exc)
            failed.append(rel)
    return failed


async def finish_deletions(index: Index, root: Path) -> int:
    """Finish deletions a crash interrupted (I4): unlink what is left, remove the rows."""
    stuck = await index.deleting_segments()
    if not stuck:
        return 0
    failed = set(await asyncio.to_thread(unlink_segment_files, root, [s.path for s in stuck]))
    done = await index.finish_deleting([s.id for s in stuck if s.path not in failed])
    log.warning("recovery: finished %d interrupted segment deletions", done)
    return done


async def recover(index: Index, root: Path) -> RecoveryReport:
    finished = await finish_deletions(index, root)
    recovered = missing = frames = 0
    run_ends: dict[int, int] = {}
    for seg in await index.open_segments():
        path = root / seg.path
        facts = await asyncio.to_thread(recover_segment_file, path) if path.exists() else None
        if facts is None:
            await index.mark_segment_missing(seg.id)
            missing += 1
            log.warning("recovery: segment %s has no usable file; marked missing", seg.path)
            end_90k = seg.start_90k
        else:
            end_90k = seg.start_90k + facts.media_duration_90k
            await index.close_segment(seg.id, end_90k, facts)
            recovered += 1
            frames += facts.video_frames
            log.info("recovery: closed %s: %d frames, %d fragments, %d bytes", seg.path,
                     facts.video_frames, len(facts.fragments), facts.size_bytes)
        run_ends[seg.run_id] = max(run_ends.get(seg.run_id, end_90k), end_90k)
    runs = await index.open_runs()
    for run in runs:
        run_end = run_ends.get(run.id)
        if run_end is None:
            segs = await index.segments(run.camera_id, run.start_90k, 2**62)
            ends = [s.end_90k for s in segs if s.run_id == run.id and s.end_90k is not None]
            run_end = max(ends, default=run.start_90k)
        await index.end_run(run.id, run_end, RunEndReason.CRASH, "recorder stopped while recording")
    if recovered or missing or runs:
        log.warning("recovery: %d open segments closed, %d missing, %d runs ended as crash",
                    recovered, missing, len(runs))
    return RecoveryReport(recovered, missing, len(runs), frames, finished)


def check_mounted(root: Path) -> None:
    """With ``require_mount``: the storage path must be a mount point, so a disk that did not
    mount is refused rather than filled in on the root filesystem as if new."""
    if not root.is_dir() or not os.path.ismount(root):
        raise StorageError(
            f"{root} is not a mounted filesystem (storage.require_mount = true): is the "
            "recording disk mounted? Refusing to record onto the wrong filesystem."
        )


async def open_checked_index(root: Path, index_path: Path, *, require_mount: bool) -> Index:
    """Open (or, on a first run, create) the index of the storage at ``root``, refusing a root
    that is not a mount point when one is required, another installation's disk, or an empty
    directory where the storage was. The caller closes the index."""
    index_is_new = await asyncio.to_thread(_prepare_root, root, index_path, require_mount)
    index = await Index.open(index_path)
    try:
        check_storage_identity(root, await index.storage_identity(), index_is_new)
    except BaseException:
        await index.close()
        raise
    return index


def _prepare_root(root: Path, index_path: Path, require_mount: bool) -> bool:
    """The checks before the index is opened; True when the index is still to be made."""
    if require_mount:
        check_mounted(root)
    root.mkdir(parents=True, exist_ok=True)
    refuse_foreign_root(root, index_path)
    return not index_path.exists()


def refuse_foreign_root(root: Path, index_path: Path) -> None:
    """Before an index is created: a root that already carries an identity belongs to another
    index, and making a new one beside it would record over that installation's disk."""
    marker = root / IDENTITY_FILE
    if not index_path.exists() and marker.exists():
        raise StorageError(
            f"{root}: this storage belongs to an index that is not at {index_path} (its "
            f"identity file {IDENTITY_FILE} exists): point storage.index at that index, or "
            "storage.path at an empty directory for a new installation. Refusing to start."
        )


def read_storage_identity(root: Path) -> str | None:
    """The identity the storage directory carries; None when its file is missing (blocking)."""
    marker = root / IDENTITY_FILE
    try:
        return marker.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise StorageError(f"{marker}: cannot read storage identity: {why}") from None


def check_storage_identity(root: Path, identity: str, index_is_new: bool) -> None:
    """Tie the storage directory to its index, so a missing mount or swapped disk is refused.

    A new index writes the identity file; an existing one must find its own identity there.
    """
    marker = root / IDENTITY_FILE
    found = read_storage_identity(root)
    if found == identity:
        return
    if found is None and index_is_new:
        root.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".tmp-{uuid.uuid4().hex}")
        tmp.write_text(identity + "\n", encoding="ascii")
        tmp.replace(marker)
        return
    if found is None:
        raise StorageError(
            f"{root}: storage identity file {IDENTITY_FILE} is missing but the index exists: "
            "is the storage volume mounted? Mount the recording disk (or correct "
            "storage.path) and try again. Refusing to use a directory that is not this "
            "index's storage."
        )
    raise StorageError(
        f"{root}: storage identity {found} does not match the index ({identity}): this is "
        "another index's storage (wrong disk, or wrong storage.index). Point storage.path "
        "and storage.index at the same installation's disk and index. Refusing to start."
    )
