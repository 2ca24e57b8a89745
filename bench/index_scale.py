"""Index at scale: a synthetic year of 16 cameras' 60-s segments, then the queries that read it.

    .venv/bin/python bench/index_scale.py --out docs/benchmarks-index.json [--quick]

1. **Build.** ``Index.open`` makes the index (real schema, real pragmas) in a temporary
   directory. Rows are then bulk-inserted with ``sqlite3`` (journal off, ``synchronous=OFF``
   while building; the file goes back to WAL at the end) in the order the recorder makes them:
   16 cameras interleaved by time. Per camera: one gap a day at a random time, with a reason
   drawn from a fixed mix and a length that fits it, so there is one run per camera per day;
   segments end at the first keyframe (every 2 s) at or after the camera's 60-s rotation grid
   (``assign_staggers``); each run's wall clock runs a few ppm off its media clock. Every
   segment is ``closed``, with a random SHA-256, 25 fps, about 2 Mbit/s (~15 MB a minute), and
   a fragment map from ``encode_fragments``: a fragment at every keyframe and at the first
   frame 0.5 s or more after the fragment's start (as the segmenter's mov options make them),
   so 4 per 2-s GOP and 120 per minute. The blobs come from a pool of a few hundred encoded
   maps (by GOP count), reused. A few holds and exports are added. Full: 365 days (~8.4 M
   segments); ``--quick``: 30 days.
2. **Start-up**: ``Index.open`` (+close), and ``App.start(serve_api=True)`` with 16 disabled
   cameras on that storage, then ``App.stop``; warm, then once after dropping the page cache.
3. **Periodic queries** the daemon runs on timers, each up to 20 times: stop early when their
   total passes ``--budget-s``, and a single call that passes ``--deadline-s`` is interrupted
   (``sqlite3_interrupt`` on the index's reader) and reported as such. Each one's query plan
   (``EXPLAIN QUERY PLAN`` of the SQL it runs, captured from a small index) is kept.
4. **Timeline**: ``GET /api/v1/cameras/{id}/recordings`` over 127.0.0.1 (``make_app``, viewer
   token, aiohttp client, one request at a time), and ``Index.runs``/``segments``/``gaps``
   directly, for 1-hour and 1-day ranges at random cameras and places. Warm: the same ranges
   run once unmeasured first. Cold: fresh ranges right after ``echo 3 > drop_caches``.
5. **A timeline request during a retention pass**: one 1-hour request sent while
   ``closed_bytes`` of one camera (a rules pass's first query for a camera with
   ``retain_bytes``) runs on the same reader connection.

Disk read per call is ``read_bytes`` from ``/proc/self/io`` (reads that missed the page
cache). Wall time is ``perf_counter``. Client and server share one process and event loop
(uvloop). The temporary directory is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import logging
import math
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from procfs import add_nvr_src_argument, host_facts, nvr_src_first_on_path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the token helper lives with the tests
nvr_src_first_on_path()  # before nvr is imported: measure that snapshot, not the working tree
import nvr  # noqa: E402
from nvr.api.server import make_app  # noqa: E402
from nvr.api.times import format_rfc3339  # noqa: E402
from nvr.app import App  # noqa: E402
from nvr.config import parse_config  # noqa: E402
from nvr.errors import StorageError  # noqa: E402
from nvr.ingest.camera import CameraState, CameraStatus  # noqa: E402
from nvr.storage.fragment_map import encode_fragments  # noqa: E402
from nvr.storage.index import Index, segment_rel_path  # noqa: E402
from nvr.storage.model import Fragment  # noqa: E402
from nvr.storage.recovery import IDENTITY_FILE  # noqa: E402
from nvr.storage.segmenter import assign_staggers  # noqa: E402
from support.api import add_token, bearer  # noqa: E402

SECOND = 90_000
DAY = 86_400 * SECOND
SEGMENT = 60 * SECOND
FPS = 25
FRAME = SECOND // FPS  # 3600
GOP_FRAMES = 50  # an IDR every 2 s
GOP = GOP_FRAMES * FRAME
MAX_FRAGMENT = SECOND // 2  # the segmenter's default max_fragment_90k
BITRATE = 2_000_000  # bit/s: 15 MB a minute
CAMERAS = 16
ROW_BYTES_GUESS = 4_300  # disk per segment (a 4 KiB page each, plus the indexes): space check

# (reason, share of the daily gaps, shortest and longest gap in seconds, detail)
GAP_MIX: tuple[tuple[str, float, float, float, str | None], ...] = (
    ("camera_closed", 0.35, 3, 30, "the camera ended the stream"),
    ("timeout", 0.25, 10, 90, "no video for 10.0 s"),
    ("packet_loss", 0.15, 0.5, 4, "12 RTP packets lost; resuming at the next keyframe"),
    ("shutdown", 0.08, 20, 300, None),
    ("error", 0.05, 30, 600, "RTSP DESCRIBE: 503 Service Unavailable"),
    ("clock_jump", 0.04, 0, 2, "wall clock stepped +3.2 s"),
    ("crash", 0.04, 10, 120, "recorder stopped while recording"),
    ("writer_behind", 0.02, 1, 10, "writer queue full (500 frames)"),
    ("parameters_changed", 0.01, 0, 1, "new SPS: 1920x1080 -> 1280x720"),
    ("disk_full", 0.01, 60, 1800, "no space left on device"),
)
LONG_OUTAGES_PER_YEAR = 3  # per camera: a night or a morning down (error or timeout), 2-8 h

log = logging.getLogger("bench.index_scale")


class BenchError(RuntimeError):
    """Set-up failed or a result is wrong (not a measurement)."""


# --- small helpers ----------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(sum(ms) / len(ms), 2),
    }


def read_bytes() -> int:
    """Bytes this process read from storage so far (page-cache misses)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def drop_caches() -> str | None:
    """Flush dirty pages and drop the page cache; None on success, else why it failed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return f"cannot drop the page cache: {exc.strerror or exc}"
    return None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- the synthetic index ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapVariant:
    blob: bytes
    size_bytes: int  # the whole file: init segment + every fragment
    fragments: int


def fragment_pool(rng: random.Random, max_gops: int, variants: int) -> list[list[MapVariant]]:
    """Encoded fragment maps by GOP count (index 0 unused): fragments split as the segmenter
    splits them, frame sizes for ~2 Mbit/s with an I-frame ~6x a P-frame."""
    gop_bytes = BITRATE // 8 * GOP // SECOND
    p_frame = gop_bytes / (GOP_FRAMES + 5)
    pool: list[list[MapVariant]] = [[]]
    for gops in range(1, max_gops + 1):
        out = []
        for _ in range(variants):
            scale = rng.uniform(0.85, 1.15)
            offset = rng.randrange(900, 1300)  # ftyp + moov
            frags: list[Fragment] = []
            for g in range(gops):
                first = g * GOP_FRAMES
                starts = [first]
                for f in range(first + 1, first + GOP_FRAMES):
                    if (f - starts[-1]) * FRAME >= MAX_FRAGMENT:
                        starts.append(f)
                ends = [*starts[1:], first + GOP_FRAMES]
                for a, b in zip(starts, ends, strict=True):
                    size = 100 + 16 * (b - a)  # moof, trun entries
                    for f in range(a, b):
                        base = 6 * p_frame if f == first else p_frame
                        size += int(base * scale * rng.uniform(0.7, 1.3))
                    frags.append(Fragment(a * FRAME, offset, size, a == first))
                    offset += size
            out.append(MapVariant(encode_fragments(frags), offset, len(frags)))
        pool.append(out)
    return pool


class PathMaker:
    """``segment_rel_path`` without a datetime per row (checked against it on a sample)."""

    def __init__(self) -> None:
        self._days: dict[int, tuple[str, str]] = {}

    def __call__(self, camera_id: str, start_90k: int) -> str:
        ms = start_90k // 90
        day, ms_of_day = divmod(ms, 86_400_000)
        parts = self._days.get(day)
        if parts is None:
            d = datetime.fromtimestamp(day * 86_400, UTC)
            parts = self._days[day] = (f"{d:%Y/%m/%d}", f"{d:%Y%m%d}")
        hh, rest = divmod(ms_of_day, 3_600_000)
        mi, rest = divmod(rest, 60_000)
        ss, mss = divmod(rest, 1000)
        return f"{camera_id}/{parts[0]}/{hh:02d}/{parts[1]}T{hh:02d}{mi:02d}{ss:02d}.{mss:03d}Z.mp4"


RUN_START, SEGMENT_ROW, RUN_END = 0, 1, 2
Event = tuple[int, int, tuple[Any, ...]]  # (wall time, kind, values)


def gap_plan(rng: random.Random, t0: int, t1: int) -> list[tuple[int, int, str, str | None]]:
    """(start, end, reason, detail) of one camera's gaps: one a day, a few long outages."""
    reasons = [g[0] for g in GAP_MIX]
    weights = [g[1] for g in GAP_MIX]
    by_reason = {g[0]: g for g in GAP_MIX}
    gaps = []
    for day_start in range(t0 - t0 % DAY, t1, DAY):
        reason = rng.choices(reasons, weights)[0]
        _, _, lo, hi, detail = by_reason[reason]
        start = day_start + rng.randrange(DAY)
        gaps.append((start, start + int(rng.uniform(lo, hi) * SECOND), reason, detail))
    for _ in range(max(1, round(LONG_OUTAGES_PER_YEAR * (t1 - t0) / (365 * DAY)))):
        start = rng.randrange(t0, t1)
        reason = rng.choice(["error", "timeout"])
        detail = "connect: no route to host" if reason == "error" else "no video for 10.0 s"
        gaps.append((start, start + int(rng.uniform(2, 8) * 3600 * SECOND), reason, detail))
    gaps.sort()
    kept: list[tuple[int, int, str, str | None]] = []
    for g in gaps:  # drop gaps inside an earlier one; keep a run of at least a minute between
        if (
            g[0] >= t0 + 2 * SEGMENT
            and g[1] < t1 - SEGMENT
            and (not kept or g[0] >= kept[-1][1] + SEGMENT)
        ):
            kept.append(g)
    return kept


def camera_events(
    ci: int,
    camera_id: str,
    stagger_90k: int,
    *,
    t0: int,
    t1: int,
    rng: random.Random,
    pool: list[list[MapVariant]],
    path_of: PathMaker,
) -> Iterator[Event]:
    """One camera's runs and segments in time order."""
    codec, width, height = ("h265", 2560, 1440) if ci >= 12 else ("h264", 1920, 1080)
    audio = "aac" if ci % 2 == 0 else None
    gaps = gap_plan(rng, t0, t1)
    run_start = t0 + stagger_90k + rng.randrange(SECOND)
    bounds = [*gaps, (t1, t1, "shutdown", None)]  # the last run ends at the span's end
    for gap_start, gap_end, reason, detail in bounds:
        drift = 1 + rng.uniform(-50e-6, 50e-6)  # wall seconds per media second
        offset_ns = rng.randrange(-800_000_000, 800_000_000) if ci % 3 else None
        yield run_start, RUN_START, (camera_id, run_start, codec, width, height, audio, offset_ns)
        gop_wall = GOP * drift
        last_gop = int((gap_start - run_start) // gop_wall)
        j = 0
        end_90k = run_start
        while j < last_gop:
            start_90k = run_start + round(j * gop_wall)
            grid = start_90k - (start_90k - stagger_90k) % SEGMENT + SEGMENT  # next boundary
            k = max(j + 1, math.ceil((grid - run_start) / gop_wall))
            k = min(k, last_gop)
            end_90k = run_start + round(k * gop_wall)
            v = rng.choice(pool[k - j])
            frames = (k - j) * GOP_FRAMES
            yield (
                start_90k,
                SEGMENT_ROW,
                (
                    camera_id,
                    path_of(camera_id, start_90k),
                    start_90k,
                    end_90k,
                    frames * FRAME,
                    v.size_bytes,
                    frames,
                    rng.randbytes(32).hex(),
                    v.blob,
                    start_90k + rng.randrange(2 * SECOND // 10),
                    end_90k + rng.randrange(SECOND // 10, SECOND // 2),
                ),
            )
            j = k
        yield end_90k, RUN_END, (camera_id, end_90k, reason, detail)
        run_start = gap_end


_INSERT_RUN = (
    "INSERT INTO run (camera_id, start_90k, video_codec, width, height, audio_codec, "
    "clock_offset_ns) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_END_RUN = "UPDATE run SET end_90k = ?, end_reason = ?, end_detail = ? WHERE id = ?"
_INSERT_SEGMENT = (
    "INSERT INTO segment (run_id, camera_id, path, state, start_90k, end_90k, "
    "media_duration_90k, bytes, video_frames, sha256, fragments, created_90k, closed_90k) "
    "VALUES (?, ?, ?, 'closed', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class Built:
    db: Path
    root: Path
    cameras: list[str]
    t0: int
    t1: int
    facts: dict[str, Any]


def insert_rows(
    db: sqlite3.Connection, cameras: list[str], t0: int, t1: int, seed: int
) -> dict[str, int]:
    """The runs and segments, in one stream of events merged across cameras by time."""
    rng = random.Random(seed)
    pool = fragment_pool(rng, max_gops=40, variants=8)
    staggers = assign_staggers(cameras, SEGMENT)
    path_of = PathMaker()
    streams = [
        camera_events(
            ci,
            cam,
            staggers[cam],
            t0=t0,
            t1=t1,
            rng=random.Random(seed * 100 + ci),
            pool=pool,
            path_of=path_of,
        )
        for ci, cam in enumerate(cameras)
    ]
    run_of: dict[str, int] = {}
    usage: dict[str, list[int]] = {cam: [0, 0] for cam in cameras}  # bytes, segments
    pending: list[tuple[Any, ...]] = []
    segments = runs = 0
    started = time.perf_counter()
    next_report = 500_000
    db.execute("BEGIN")

    def flush() -> None:
        nonlocal segments, next_report
        if not pending:
            return
        db.executemany(_INSERT_SEGMENT, pending)
        segments += len(pending)
        pending.clear()
        if segments >= next_report:
            db.execute("COMMIT")
            db.execute("BEGIN")
            rate = segments / (time.perf_counter() - started)
            print(f"bench: {segments:,} segments, {rate:,.0f}/s", file=sys.stderr)
            next_report += 500_000

    for _, kind, values in heapq.merge(*streams, key=lambda e: e[0]):
        if kind == SEGMENT_ROW:
            row = (run_of[values[0]], *values)
            if len(pending) % 997 == 0 and row[2] != segment_rel_path(values[0], values[2]):
                raise BenchError(f"path {row[2]!r} is not segment_rel_path's")
            pending.append(row)
            usage[values[0]][0] += values[5]
            usage[values[0]][1] += 1
            continue
        flush()
        if kind == RUN_START:
            cur = db.execute(_INSERT_RUN, values)
            assert cur.lastrowid is not None
            run_of[values[0]] = cur.lastrowid
            runs += 1
        else:
            camera_id, end_90k, reason, detail = values
            db.execute(_END_RUN, (end_90k, reason, detail, run_of[camera_id]))
    flush()
    # What the (dropped) usage triggers would have kept.
    db.executemany(
        "INSERT INTO camera_usage (camera_id, closed_bytes, closed_segments) VALUES (?, ?, ?)",
        [(cam, b, n) for cam, (b, n) in usage.items()],
    )
    db.execute("COMMIT")
    return {"segments": segments, "runs": runs}


def insert_holds_and_exports(
    db: sqlite3.Connection, cameras: list[str], *, t0: int, t1: int, now_90k: int, seed: int
) -> dict[str, int]:
    """A site's year of evidence work: 40 finished exports (a hold on each of 12), 6 holds
    placed directly, 3 of them released later."""
    rng = random.Random(seed + 1)
    db.execute("BEGIN")
    holds = 0
    for n in range(40):
        export_id = rng.randbytes(8).hex()
        cam = rng.choice(cameras)
        start = rng.randrange(t0, t1 - 3600 * SECOND)
        end = start + rng.choice([10, 30, 60]) * 60 * SECOND
        created = min(end + rng.randrange(DAY), now_90k)
        db.execute(
            "INSERT INTO export_job (id, camera_id, start_90k, end_90k, reason, requested_by, "
            "token_name, hold, state, size_bytes, sha256, file_name, created_90k, started_90k, "
            "finished_90k) VALUES (?, ?, ?, ?, ?, ?, 'ops-laptop', ?, 'done', ?, ?, ?, ?, ?, ?)",
            (
                export_id,
                cam,
                start,
                end,
                f"incident {2025_000 + n}",
                "duty officer",
                int(n < 12),
                (end - start) // SECOND * 250_000,
                rng.randbytes(32).hex(),
                f"exports/{export_id}.mp4",
                created,
                created + SECOND,
                created + 20 * SECOND,
            ),
        )
        if n < 12:
            hold_id = rng.randbytes(8).hex()
            db.execute(
                "INSERT INTO hold (id, case_ref, reason, start_90k, end_90k, created_90k, "
                "created_by, export_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hold_id,
                    f"2025/{100 + n}",
                    "export",
                    start,
                    end,
                    created,
                    f"export {export_id}",
                    export_id,
                ),
            )
            db.execute("INSERT INTO hold_camera VALUES (?, ?)", (hold_id, cam))
            holds += 1
    for n in range(6):
        hold_id = rng.randbytes(8).hex()
        start = rng.randrange(t0, t1 - DAY)
        created = min(start + DAY, now_90k)
        released = (created + 30 * DAY, "admin") if n < 3 else (None, None)
        db.execute(
            "INSERT INTO hold (id, case_ref, reason, start_90k, end_90k, until_90k, "
            "created_90k, created_by, released_90k, released_by) VALUES (?, ?, ?, ?, ?, ?, ?, "
            "'ops-laptop', ?, ?)",
            (
                hold_id,
                f"2025/{200 + n}",
                "burglary, street side",
                start,
                start + 6 * 3600 * SECOND,
                now_90k + 90 * DAY if n == 5 else None,
                created,
                *released,
            ),
        )
        for cam in rng.sample(cameras, 3):
            db.execute("INSERT INTO hold_camera VALUES (?, ?)", (hold_id, cam))
        holds += 1
    db.execute("COMMIT")
    return {"exports": 40, "holds": holds}


async def build(work: Path, days: int, seed: int) -> Built:
    """The index and its storage root (identity file, no segment files)."""
    root = work / "storage"
    root.mkdir()
    db_path = root / "index.db"
    index = await Index.open(db_path)  # the real schema and pragmas
    identity = await index.storage_identity()
    await index.close()
    (root / IDENTITY_FILE).write_text(identity + "\n", encoding="ascii")
    now_90k = time.time_ns() * 9 // 100_000
    t1 = now_90k - now_90k % DAY  # the span ends at the last UTC midnight
    t0 = t1 - days * DAY
    cameras = [f"cam-{n:02d}" for n in range(1, CAMERAS + 1)]
    started = time.perf_counter()
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -2000000"):
            db.execute(f"PRAGMA {pragma}")
        # The overlap trigger reads up to 2 h of the run's rows per insert (~30 us a row here):
        # drop the triggers for the load and put the same SQL back after it.
        triggers = db.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger'"
        ).fetchall()
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        db.executemany(
            "INSERT INTO camera (id, name, source) VALUES (?, ?, ?)",
            [
                (c, f"Street {c[-2:]}", f"rtsp://10.20.0.{n}:554/Streaming/Channels/101")
                for n, c in enumerate(cameras, start=11)
            ],
        )
        counts = insert_rows(db, cameras, t0, t1, seed)
        counts |= insert_holds_and_exports(db, cameras, t0=t0, t1=t1, now_90k=now_90k, seed=seed)
        for _, sql in triggers:
            db.execute(sql)
        after = db.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger'").fetchall()
        if sorted(after) != sorted(triggers):
            raise BenchError("the triggers did not come back as they were")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise BenchError(f"journal_mode is {mode} after the build")
    finally:
        db.close()
    os.sync()
    build_s = time.perf_counter() - started
    validated = days <= 31
    if validated:
        validate(db_path)
    index = await Index.open(db_path)
    try:
        await add_token(index, "viewer", name="bench-viewer")
    finally:
        await index.close()
    facts: dict[str, Any] = {
        "build_s": round(build_s, 1),
        "validated": validated,
        "days": days,
        "cameras": CAMERAS,
        **counts,
    }
    facts |= size_facts(db_path, counts["segments"])
    facts["segments_per_s"] = round(counts["segments"] / build_s)
    return Built(db_path, root, cameras, t0, t1, facts)


def validate(db_path: Path) -> None:
    """What the foreign keys and the dropped triggers guard, checked on the whole index (a
    full scan: only for short spans; a year comes from the same code)."""
    db = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)
    try:
        checks = {
            "foreign keys": "SELECT count(*) FROM pragma_foreign_key_check",
            "segments not end to end within their run": (
                "SELECT count(*) FROM (SELECT start_90k, lag(end_90k) OVER w AS prev_end, "
                "row_number() OVER w AS n FROM segment "
                "WINDOW w AS (PARTITION BY run_id ORDER BY start_90k)) "
                "WHERE n > 1 AND prev_end <> start_90k"
            ),
            "runs not spanning their segments": (
                "SELECT count(*) FROM run AS r JOIN (SELECT run_id, min(start_90k) AS s, "
                "max(end_90k) AS e FROM segment GROUP BY run_id) AS x ON x.run_id = r.id "
                "WHERE x.s <> r.start_90k OR x.e <> r.end_90k"
            ),
            "runs overlapping the camera's next run": (
                "SELECT count(*) FROM (SELECT start_90k, lag(end_90k) OVER "
                "(PARTITION BY camera_id ORDER BY start_90k) AS prev_end FROM run) "
                "WHERE prev_end > start_90k"
            ),
            "open runs": "SELECT count(*) FROM run WHERE end_90k IS NULL",
            "cameras whose kept totals differ from their rows": (
                "SELECT count(*) FROM camera_usage AS u LEFT JOIN (SELECT camera_id, "
                "sum(bytes) AS b, count(*) AS n FROM segment WHERE state = 'closed' "
                "GROUP BY camera_id) AS x ON x.camera_id = u.camera_id "
                "WHERE x.b IS NOT u.closed_bytes OR x.n IS NOT u.closed_segments"
            ),
        }
        for what, sql in checks.items():
            bad = db.execute(sql).fetchone()[0]
            if bad:
                raise BenchError(f"synthetic index: {bad} {what}")
    finally:
        db.close()


def size_facts(db_path: Path, segments: int) -> dict[str, Any]:
    """Sizes after a checkpoint, and what one segment row holds (from a sample of rows)."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size, page_count, freelist = (
            db.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_size", "page_count", "freelist_count")
        )
        mid = segments // 2
        sample = db.execute(
            "SELECT avg(length(fragments)), avg((length(fragments) - 1) / 17), avg(length(path)), "
            "avg(bytes), avg(end_90k - start_90k) FROM segment WHERE id BETWEEN ? AND ?",
            (mid, mid + 9999),
        ).fetchone()
        run_stats = db.execute(
            "SELECT end_reason, count(*) FROM run GROUP BY end_reason ORDER BY 2 DESC"
        ).fetchall()
    finally:
        db.close()
    db_bytes = file_size(db_path)
    wal_bytes = file_size(db_path.with_name(db_path.name + "-wal"))
    return {
        "db_bytes": db_bytes,
        "wal_bytes_after_checkpoint": wal_bytes,
        "page_size": page_size,
        "page_count": page_count,
        "freelist_pages": freelist,
        "disk_bytes_per_segment": round((db_bytes + wal_bytes) / max(1, segments)),
        "sample_fragment_map_bytes": round(sample[0]),
        "sample_fragments_per_segment": round(sample[1], 1),
        "sample_path_bytes": round(sample[2]),
        "sample_segment_mb": round(sample[3] / 1e6, 2),
        "sample_segment_s": round(sample[4] / SECOND, 2),
        "runs_by_end_reason": dict(run_stats),
    }


# --- query plans ------------------------------------------------------------------------------

Captured = list[tuple[str, Any]]


class _TracedIndex(Index):
    """Records the SQL (and parameters) each read runs: used on a small index to learn what
    the daemon's queries are, so their plans can be shown for the big one."""

    captured: Captured | None = None

    @contextlib.asynccontextmanager
    async def _read(
        self, what: str, sql: str, params: Sequence[object] | Mapping[str, object]
    ) -> AsyncIterator[Any]:
        if self.captured is not None:
            self.captured.append((sql, params))
        async with super()._read(what, sql, params) as cur:
            yield cur


def plan_lines(db: sqlite3.Connection, sql: str, params: Any) -> list[str]:
    """EXPLAIN QUERY PLAN as indented lines."""
    depth: dict[int, int] = {0: -1}
    out = []
    for node, parent, _, detail in db.execute("EXPLAIN QUERY PLAN " + sql, params):
        depth[node] = depth.get(parent, -1) + 1
        out.append("  " * depth[node] + detail)
    return out


QueryFn = Callable[[Index], Awaitable[object]]


def daemon_queries(cameras: Sequence[str], end: int) -> list[tuple[str, str, QueryFn]]:
    """(name, who runs it and how often, the call): the timers' queries, then start-up's.
    ``end``: the end of the recorded span (every row is older)."""
    cam = cameras[0]
    return [
        ("counts()", "metrics refresh: every 5 s while /metrics is scraped",
         lambda ix: ix.counts()),
        ("held_ranges()", "retention: each rules pass (60 s), each space pass under pressure",
         lambda ix: ix.held_ranges()),
        (f"latest_closed_segment('{cam}')", "snapshot.jpg without ?at (on demand)",
         lambda ix: ix.latest_closed_segment(cam)),
        ("open_runs()", "start-up: recovery", lambda ix: ix.open_runs()),
        ("open_segments()", "start-up: recovery", lambda ix: ix.open_segments()),
        ("unfinished_exports()", "start-up: ExportManager.start",
         lambda ix: ix.unfinished_exports()),
        ("deleting_segments()", "start-up: recovery (finish_deletions); nvr check",
         lambda ix: ix.deleting_segments()),
        (f"closed_bytes('{cam}')", "retention rules pass: every 60 s, cameras with retain_bytes",
         lambda ix: ix.closed_bytes(cam)),
        (f"old_missing_segments('{cam}', end)",
         "retention rules pass: every 60 s, once per camera with retain_days",
         lambda ix: ix.old_missing_segments(cam, end)),
        ("oldest_segments(None, limit=2000)",
         "retention space pass: every 1 s while free space is under the floor + headroom",
         lambda ix: ix.oldest_segments(None, limit=2000)),
        (f"oldest_segments('{cam}', limit=2000)",
         "retention rules pass: every 60 s, once per camera with retain_days/retain_bytes",
         lambda ix: ix.oldest_segments(cam, limit=2000)),
    ]  # fmt: skip


def timeline_calls(cam: str, start: int, end: int) -> list[tuple[str, QueryFn]]:
    return [
        ("runs", lambda ix: ix.runs(cam, start, end)),
        ("segments", lambda ix: ix.segments(cam, start, end)),
        ("gaps", lambda ix: ix.gaps(cam, start, end)),
    ]


async def capture_plans(
    work: Path, big_db: Path, cameras: Sequence[str], t0: int, t1: int
) -> dict[str, list[dict[str, Any]]]:
    """Run each query once on a small index to capture its SQL; explain it on the big one."""
    small = await _TracedIndex.open(work / "plans.db")
    assert isinstance(small, _TracedIndex)
    calls = [(name, fn) for name, _, fn in daemon_queries(cameras, t1)]
    mid = (t0 + t1) // 2
    calls += [(f"timeline {name}", fn) for name, fn in timeline_calls(cameras[0], mid, mid + DAY)]
    captured: dict[str, Captured] = {}
    try:
        for name, fn in calls:
            small.captured = captured[name] = []
            await fn(small)
    finally:
        await small.close()
    db = sqlite3.connect(f"{big_db.as_uri()}?mode=ro", uri=True)
    try:
        return {
            name: [{"sql": sql, "plan": plan_lines(db, sql, params)} for sql, params in stmts]
            for name, stmts in captured.items()
        }
    finally:
        db.close()


# --- measurements -----------------------------------------------------------------------------


async def call_with_deadline(index: Index, fn: QueryFn, deadline_s: float) -> tuple[float, bool]:
    """Seconds the call took, and whether it was interrupted at ``deadline_s``."""
    started = time.perf_counter()
    task = asyncio.ensure_future(fn(index))
    done, _ = await asyncio.wait({task}, timeout=deadline_s)
    if done:
        task.result()
        return time.perf_counter() - started, False
    await index._reader.interrupt()
    with contextlib.suppress(StorageError):
        await task
    return time.perf_counter() - started, True


async def measure_periodic(
    index: Index,
    built: Built,
    args: argparse.Namespace,
    *,
    cold: bool,
    skip: Collection[str] = (),
) -> list[dict[str, Any]]:
    out = []
    for name, who, fn in daemon_queries(built.cameras, built.t1):
        if name in skip:
            continue
        if cold:
            failed = drop_caches()
            if failed:
                return []
        times: list[float] = []
        interrupted = False
        io_before = read_bytes()
        for _ in range(1 if cold else args.periodic_runs):
            elapsed, interrupted = await call_with_deadline(index, fn, args.deadline_s)
            times.append(elapsed)
            if interrupted or sum(times) > args.budget_s:
                break
        io_read = read_bytes() - io_before
        if interrupted and io_read:
            # Rough: the call read the file at this rate and would have read all of it.
            db_bytes = file_size(built.db)
            extra = {"read_mb_before_interrupt": round(io_read / 1e6),
                     "est_s_to_read_whole_file": round(times[-1] * db_bytes / io_read)}  # fmt: skip
        else:
            extra = {}
        row: dict[str, Any] = {
            "query": name,
            "called_by": who,
            "first_ms": round(times[0] * 1000, 1),
            **summary_ms(times),
            "interrupted_at_deadline": interrupted,
            "disk_read_mb_per_call": round(io_read / len(times) / 1e6, 1),
            **extra,
        }
        print(f"bench: {'cold' if cold else 'warm'} {json.dumps(row)}", file=sys.stderr)
        out.append(row)
    return out


@dataclass(frozen=True, slots=True)
class Range:
    camera: str
    start_90k: int
    end_90k: int


def random_ranges(rng: random.Random, built: Built, span: int, n: int) -> list[Range]:
    out = []
    for _ in range(n):
        start = built.t0 + rng.randrange((built.t1 - built.t0 - span) // 90) * 90  # whole ms
        out.append(Range(rng.choice(built.cameras), start, start + span))
    return out


def statuses(cameras: Sequence[str]) -> list[CameraStatus]:
    return [
        CameraStatus(
            id=c,
            state=CameraState.STREAMING,
            failures=0,
            last_error=None,
            last_error_kind=None,
            last_frame_wall_ns=None,
            runs=1,
            frames=0,
            segments_closed=0,
        )
        for c in cameras
    ]


@contextlib.asynccontextmanager
async def serving(index: Index, cameras: Sequence[str]) -> AsyncIterator[str]:
    """The real API for ``index`` on 127.0.0.1; yields its base URL."""
    status = statuses(cameras)
    runner = web.AppRunner(make_app(lambda: status, index), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def http_get(session: aiohttp.ClientSession, base: str, r: Range) -> tuple[float, bytes]:
    params = {"start": format_rfc3339(r.start_90k), "end": format_rfc3339(r.end_90k)}
    started = time.perf_counter()
    async with session.get(f"{base}/api/v1/cameras/{r.camera}/recordings", params=params) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise BenchError(f"recordings {r}: HTTP {resp.status}: {body[:200]!r}")
    return time.perf_counter() - started, body


async def http_pass(
    session: aiohttp.ClientSession, base: str, ranges: Sequence[Range]
) -> tuple[list[float], dict[str, float]]:
    times = []
    segs = gaps = size = 0
    for r in ranges:
        elapsed, body = await http_get(session, base, r)
        times.append(elapsed)
        doc = json.loads(body)
        segs += len(doc["segments"])
        gaps += len(doc["gaps"])
        size += len(body)
    n = len(ranges)
    return times, {
        "segments_mean": round(segs / n, 1),
        "gaps_mean": round(gaps / n, 2),
        "body_kb_mean": round(size / n / 1024, 1),
    }


async def direct_pass(index: Index, ranges: Sequence[Range]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"runs": [], "segments": [], "gaps": [], "all three": []}
    for r in ranges:
        total = 0.0
        for name, fn in timeline_calls(r.camera, r.start_90k, r.end_90k):
            started = time.perf_counter()
            await fn(index)
            elapsed = time.perf_counter() - started
            out[name].append(elapsed)
            total += elapsed
        out["all three"].append(total)
    return out


async def measure_timeline(
    index: Index, built: Built, args: argparse.Namespace, rng: random.Random
) -> tuple[list[dict[str, Any]], str | None]:
    spans = {"1 hour": 3600 * SECOND, "1 day": DAY}
    rows: list[dict[str, Any]] = []
    cams = built.cameras
    headers = bearer(args.token)
    async with serving(index, cams) as base, aiohttp.ClientSession(headers=headers) as session:
        warm = {k: random_ranges(rng, built, v, args.requests) for k, v in spans.items()}
        for span, ranges in warm.items():
            await http_pass(session, base, ranges)  # warm-up, unmeasured
            times, extra = await http_pass(session, base, rng.sample(ranges, len(ranges)))
            rows.append(
                {"cache": "warm", "span": span, "path": "HTTP", **summary_ms(times), **extra}
            )
            direct = await direct_pass(index, ranges)
            for name, ts in direct.items():
                rows.append(
                    {
                        "cache": "warm",
                        "span": span,
                        "path": f"Index.{name}"
                        if name != "all three"
                        else "Index: runs+segments+gaps",
                        **summary_ms(ts),
                    }
                )
            print(f"bench: warm timeline {span} done", file=sys.stderr)
        dropped: str | None = None
        for path in ("HTTP", "direct"):
            dropped = drop_caches()
            if dropped:
                break
            for span, width in spans.items():
                ranges = random_ranges(rng, built, width, args.cold_requests)
                io_before = read_bytes()
                if path == "HTTP":
                    times, extra = await http_pass(session, base, ranges)
                    rows.append(
                        {
                            "cache": "cold",
                            "span": span,
                            "path": "HTTP",
                            **summary_ms(times),
                            **extra,
                        }
                    )
                else:
                    ts = (await direct_pass(index, ranges))["all three"]
                    rows.append(
                        {
                            "cache": "cold",
                            "span": span,
                            "path": "Index: runs+segments+gaps",
                            **summary_ms(ts),
                        }
                    )
                rows[-1]["disk_read_mb_mean"] = round(
                    (read_bytes() - io_before) / len(ranges) / 1e6, 2
                )
            print(f"bench: cold timeline {path} done", file=sys.stderr)
    return rows, dropped


async def timeline_during_retention(
    index: Index, built: Built, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    """One 1-hour request while ``closed_bytes`` of a camera runs on the index's reader."""
    r = random_ranges(rng, built, 3600 * SECOND, 1)[0]
    async with (
        serving(index, built.cameras) as base,
        aiohttp.ClientSession(headers=bearer(args.token)) as session,
    ):
        await http_get(session, base, r)  # its pages warm: only the wait is measured
        scan = asyncio.ensure_future(index.closed_bytes(built.cameras[0]))
        await asyncio.sleep(0.2)
        request = asyncio.ensure_future(http_get(session, base, r))
        started = time.perf_counter()
        done, _ = await asyncio.wait({request}, timeout=args.during_deadline_s)
        interrupted = not done
        if interrupted:
            await index._reader.interrupt()
        with contextlib.suppress(StorageError):
            await scan
        await request
        elapsed = time.perf_counter() - started
    return {
        "query_running": f"closed_bytes('{built.cameras[0]}')",
        "request_ms": round(elapsed * 1000, 1),
        "scan_interrupted": interrupted,
        "deadline_s": args.during_deadline_s,
    }


def app_config(built: Built) -> str:
    cams = "".join(
        f'\n[[cameras]]\nid = "{c}"\nurl = "rtsp://10.20.0.{n}:554/Streaming/Channels/101"\n'
        "enabled = false\n"
        for n, c in enumerate(built.cameras, start=11)
    )
    return (
        f'[storage]\npath = "{built.root}"\nindex = "{built.db}"\n'
        "min_free_bytes = 0\nmin_free_percent = 0\n"
        '\n[api]\nlisten = "127.0.0.1:0"\n' + cams
    )


async def app_cycle(built: Built, stop_deadline_s: float) -> dict[str, Any]:
    """``App.start(serve_api=True)`` then ``App.stop``, each timed; a stop that waits past
    ``stop_deadline_s`` has the index's running read interrupted so it can finish."""
    cfg = parse_config(app_config(built))
    app = App(cfg)
    started = time.perf_counter()
    await app.start(serve_api=True)
    ready = time.perf_counter()
    stop = asyncio.ensure_future(app.stop())
    done, _ = await asyncio.wait({stop}, timeout=stop_deadline_s)
    interrupted = False
    if not done and app.index is not None:
        interrupted = True
        await app.index._reader.interrupt()
    await stop
    stopped = time.perf_counter()
    return {
        "start_ms": round((ready - started) * 1000, 1),
        "stop_ms": round((stopped - ready) * 1000, 1),
        "stop_interrupted_at_deadline": interrupted,
    }


async def measure_startup(built: Built, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    opens, closes = [], []
    for _ in range(10):
        started = time.perf_counter()
        index = await Index.open(built.db)
        opened = time.perf_counter()
        await index.close()
        opens.append(opened - started)
        closes.append(time.perf_counter() - opened)
    out["index_open_warm"] = summary_ms(opens)
    out["index_close_warm"] = summary_ms(closes)
    out["app_warm"] = [await app_cycle(built, args.stop_deadline_s) for _ in range(args.app_cycles)]
    print(f"bench: start-up warm {json.dumps(out)}", file=sys.stderr)
    failed = drop_caches()
    if failed:
        out["cold"] = failed
        return out
    started = time.perf_counter()
    index = await Index.open(built.db)
    out["index_open_cold_ms"] = round((time.perf_counter() - started) * 1000, 1)
    await index.close()
    drop_caches()
    out["app_cold"] = await app_cycle(built, args.stop_deadline_s)
    print(f"bench: start-up cold {json.dumps(out['app_cold'])}", file=sys.stderr)
    return out


# --- report -----------------------------------------------------------------------------------


def interrupted_note(r: Mapping[str, Any]) -> str:
    if not r["interrupted_at_deadline"]:
        return ""
    est = r.get("est_s_to_read_whole_file")
    return f"yes, after {r['read_mb_before_interrupt']} MB read" + (
        f" (whole file at that rate: ~{est} s)" if est else ""
    )


def markdown(report: Mapping[str, Any]) -> str:
    b = report["build"]
    lines = [
        f"Index: {b['segments']:,} segments, {b['runs']:,} runs, {b['days']} days x "
        f"{b['cameras']} cameras; built in {b['build_s']} s ({b['segments_per_s']:,} segments/s); "
        f"{(b['db_bytes'] + b['wal_bytes_after_checkpoint']) / 2**30:.2f} GiB on disk "
        f"({b['disk_bytes_per_segment']} bytes per segment; page size {b['page_size']})",
        "",
        "| cache | range | path | n | p50 ms | p99 ms | max ms | segments | body KiB | "
        "disk MB/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["timeline"]:
        lines.append(
            f"| {r['cache']} | {r['span']} | {r['path']} | {r['n']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['max_ms']} | {r.get('segments_mean', '')} | "
            f"{r.get('body_kb_mean', '')} | {r.get('disk_read_mb_mean', '')} |"
        )
    lines += [
        "",
        "| query | cache | n | first ms | p50 ms | p99 ms | disk MB/call | "
        "interrupted | called by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cache in ("warm", "cold"):
        for r in report["periodic"].get(cache, []):
            lines.append(
                f"| `{r['query']}` | {cache} | {r['n']} | {r['first_ms']} | {r['p50_ms']} | "
                f"{r['p99_ms']} | {r['disk_read_mb_per_call']} | "
                f"{interrupted_note(r)} | {r['called_by']} |"
            )
    s = report["startup"]
    lines += [
        "",
        f"Index.open warm: p50 {s['index_open_warm']['p50_ms']} ms, max "
        f"{s['index_open_warm']['max_ms']} ms; cold: {s.get('index_open_cold_ms')} ms",
    ]
    for n, c in enumerate(s["app_warm"], start=1):
        lines.append(
            f"App warm {n}: start {c['start_ms']} ms, stop {c['stop_ms']} ms"
            + (" (interrupted)" if c["stop_interrupted_at_deadline"] else "")
        )
    if "app_cold" in s:
        c = s["app_cold"]
        lines.append(
            f"App cold: start {c['start_ms']} ms, stop {c['stop_ms']} ms"
            + (" (interrupted)" if c["stop_interrupted_at_deadline"] else "")
        )
    d = report["during_retention"]
    lines.append(
        f"1-hour request during {d.get('query_running', 'a retention query')}: "
        f"{d['request_ms']} ms"
        + (" (scan interrupted at the deadline)" if d["scan_interrupted"] else "")
    )
    return "\n".join(lines)


def machine_facts() -> dict[str, object]:
    return host_facts() | {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": aiohttp.__version__,
        "nvr_imported_from": str(Path(nvr.__file__).parent),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--quick", action="store_true", help="30 days instead of 365")
    p.add_argument("--days", type=int, help="span of the synthetic index (overrides --quick)")
    p.add_argument("--requests", type=int, default=300, help="warm timeline requests per range")
    p.add_argument("--cold-requests", type=int, default=100, help="cold requests per range")
    p.add_argument("--periodic-runs", type=int, default=20, help="runs of each periodic query")
    p.add_argument(
        "--budget-s",
        type=float,
        default=30.0,
        help="stop repeating a periodic query once its runs took this long",
    )
    p.add_argument(
        "--deadline-s",
        type=float,
        default=120.0,
        help="interrupt one periodic query call after this long",
    )
    p.add_argument(
        "--stop-deadline-s",
        type=float,
        default=30.0,
        help="interrupt the index's read after App.stop waited this long",
    )
    p.add_argument(
        "--during-deadline-s",
        type=float,
        default=30.0,
        help="interrupt the retention scan after a timeline request waited this long",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the temporary directory for the index is made",
    )
    p.add_argument("--app-cycles", type=int, default=2, help="App start/stop cycles, warm")
    p.add_argument("--seed", type=int, default=7)
    add_nvr_src_argument(p)
    return p.parse_args(argv)


def fit_days(wanted: int, workdir: Path) -> tuple[int, str | None]:
    """The span that fits the free space (with a 10 GB margin)."""
    free = shutil.disk_usage(workdir).free
    per_day = CAMERAS * 1440 * ROW_BYTES_GUESS
    fits = int((free - 10e9) // per_day)
    if fits >= wanted:
        return wanted, None
    if fits < 1:
        raise BenchError(f"{workdir}: {free / 1e9:.1f} GB free is not enough for one day")
    return fits, f"{free / 1e9:.0f} GB free: {fits} days instead of {wanted}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    wanted = args.days or (30 if args.quick else 365)
    days, shortened = fit_days(wanted, args.workdir)
    rng = random.Random(args.seed)
    report: dict[str, Any] = {"days_wanted": wanted, "days_shortened": shortened}
    with tempfile.TemporaryDirectory(prefix="nvr-bench-index-", dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"bench: building {days} days x {CAMERAS} cameras in {work}", file=sys.stderr)
        built = await build(work, days, args.seed)
        report["build"] = built.facts
        print(f"bench: {json.dumps(built.facts)}", file=sys.stderr)
        report["plans"] = await capture_plans(work, built.db, built.cameras, built.t0, built.t1)
        report["startup"] = await measure_startup(built, args)
        index = await Index.open(built.db)
        try:
            args.token = await add_token(index, "viewer", name="bench-viewer-2")
            periodic: dict[str, Any] = {}
            drop_caches()  # the periodic queries start from a cold cache, then repeat warm
            periodic["warm"] = await measure_periodic(index, built, args, cold=False)
            report["timeline"], dropped = await measure_timeline(index, built, args, rng)
            report["drop_caches"] = dropped or "ok"
            report["during_retention"] = await timeline_during_retention(index, built, args, rng)
            # A call cut off at the deadline warm would only be cut off again.
            hopeless = {r["query"] for r in periodic["warm"] if r["interrupted_at_deadline"]}
            periodic["cold"] = await measure_periodic(index, built, args, cold=True, skip=hopeless)
            periodic["not_run_cold"] = sorted(hopeless)
            report["periodic"] = periodic
        finally:
            await index.close()
        report["work_dir"] = str(work)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    facts = machine_facts()
    started = time.perf_counter()
    measured = uvloop.run(run(args))
    report = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "mode": "quick" if args.quick else "full",
        "machine": facts,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "token", "nvr_src", "workdir")
        },
        **measured,
        "total_s": round(time.perf_counter() - started, 1),
    }
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
