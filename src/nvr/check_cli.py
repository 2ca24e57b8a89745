"""``nvr check``: verify that the index and the storage tree agree (invariants I1–I4).

Reads the index named by the configuration and walks the camera directories; ``--hash``
also compares every closed segment's SHA-256; ``--repair`` quarantines files with no row,
marks rows with no file ``missing`` and finishes interrupted deletions (``storage.check``).
It may run beside ``nvr run``. It never creates an index or an identity file: a storage
path that is not this index's is refused.

Exit status: 0 clean (open segments are only noted), 1 problems found (with ``--repair``:
problems left, such as files that differ from their rows, which are never repaired), 2 the
check could not run (configuration, storage refused, or an error while checking).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from nvr.config import Config, load_config
from nvr.errors import NvrError, StorageError
from nvr.storage.check import LABELS, CheckProgress, CheckReport, ProblemKind, check_storage
from nvr.storage.index import Index
from nvr.storage.recovery import check_mounted, check_storage_identity

SHOWN = 20  # problems listed in the human output


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="verify the index against the segment files")
    p.add_argument("--config", "-c", required=True, help="TOML configuration file")
    p.add_argument("--hash", action="store_true", help="also compare every file's SHA-256")
    p.add_argument("--repair", action="store_true",
                   help="quarantine files with no row, mark rows with no file missing, finish "
                   "interrupted deletions (files that differ are only reported)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_check)


class _Progress:
    """Counts on one stderr line, rewritten at most five times a second (terminal only)."""

    def __init__(self) -> None:
        self.shown_at = 0.0
        self.shown = False

    def __call__(self, p: CheckProgress) -> None:
        now = time.monotonic()
        if now - self.shown_at < 0.2:
            return
        self.shown_at = now
        self.shown = True
        gb = p.bytes_hashed / 1e9
        hashed = f", {p.files_hashed} hashed ({gb:.2f} GB)" if p.files_hashed else ""
        print(f"\rchecked {p.rows_checked} rows, {p.files_seen} files{hashed}\033[K", end="",
              file=sys.stderr, flush=True)  # fmt: skip

    def finish(self) -> None:
        if self.shown:
            print(file=sys.stderr)


async def _check(cfg: Config, args: argparse.Namespace, progress: _Progress | None) -> CheckReport:
    root = cfg.storage.path
    if cfg.storage.require_mount:
        check_mounted(root)
    index_path = cfg.storage.index_path
    if not await asyncio.to_thread(index_path.is_file):
        raise StorageError(f"no index at {index_path}: nothing to check")
    async with await Index.open(index_path) as index:
        identity = await index.storage_identity()
        await asyncio.to_thread(check_storage_identity, root, identity, False)
        return await check_storage(index, root, hash_files=args.hash, repair=args.repair,
                                   on_progress=progress)  # fmt: skip


def _print_report(report: CheckReport) -> None:
    states = ", ".join(f"{n} {s}" for s, n in report.rows_by_state.items())
    print(f"checked {report.rows_checked} segment rows ({states or 'none'}) and "
          f"{report.files_seen} files" + (f"; hashed {report.files_hashed} files "
          f"({report.bytes_hashed / 1e9:.2f} GB)" if report.hashed else ""))  # fmt: skip
    width = max(len(label) for label in LABELS.values()) + 1
    for kind in ProblemKind:
        label = f"{LABELS[kind]}:".ljust(width)
        found, fixed = report.found.get(kind, 0), report.repaired.get(kind, 0)
        if kind is ProblemKind.HASH_DIFFERS and not report.hashed:
            print(f"  {label} not checked (--hash)")
            continue
        note = f" ({fixed} repaired)" if fixed else ""
        if kind is ProblemKind.OPEN and found:
            note = " (not a problem: being written, or recovery finishes them at next start)"
        print(f"  {label} {found}{note}")
    for p in report.problems[:SHOWN]:
        print(f"{LABELS[p.kind]}: {p.path}: {p.detail}")
    listed = sum(report.found.values())
    if listed > SHOWN:
        print(f"... and {listed - SHOWN} more (--json lists up to {len(report.problems)})")
    if report.clean:
        repaired = sum(report.repaired.values())
        print(f"OK: {_count(repaired, 'problem')} repaired" if repaired else "OK: no problems")
        return
    differ = sum(report.found.get(k, 0) for k in (ProblemKind.SIZE_DIFFERS,
                                                  ProblemKind.HASH_DIFFERS))  # fmt: skip
    why = ""
    if differ and report.repair:
        why = (f"; {_count(differ, 'file')} differ from what was recorded: never repaired, "
               "file and row are kept as found (evidence)")  # fmt: skip
    elif not report.repair:
        why = "; --repair fixes rows with no file, files with no row, stuck deletions and totals"
    remain = "remains" if report.unrepaired == 1 else "remain"
    print(f"FAILED: {_count(report.unrepaired, 'problem')} {remain}{why}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def run_check(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        message = " ".join(message.split())
        if args.json:
            print(json.dumps({"ok": False, "error": message}))
        else:
            print(f"error: {message}", file=sys.stderr)
        return 2

    progress = _Progress() if sys.stderr.isatty() and not args.json else None
    try:
        cfg = load_config(Path(args.config))
        report = asyncio.run(_check(cfg, args, progress))
    except NvrError as exc:
        return fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    finally:
        if progress is not None:
            progress.finish()
    if args.json:
        print(json.dumps({"ok": report.clean, **report.as_json()}))
    else:
        _print_report(report)
    return 0 if report.clean else 1
