"""Clip benchmark: our any-range MP4 (file and HTTP) next to a PyAV remux and ffmpeg concat.

    .venv/bin/python bench/clip.py --out docs/benchmarks-clip.json [--quick]

A 720p25 H.264 loop (ffmpeg testsrc2, libx264 at 2 Mbit/s, an IDR every 25 frames, no
B-frames) is fed through the real recorder with a simulated clock (tests/support/recorded.py),
60-s segments, once, into a temporary directory. For each range (10 and 60 minutes; --quick:
1 and 10), starting 20.52 s into the recording's second segment (mid-segment, 13 frames into
a GOP), each method runs once unmeasured and then --reps times, the order rotated each time.
The page cache is warm: every segment is read once before, and stays cached (RAM >> data).

- ours, file:   ``plan_clip`` + ``Clip.chunks()`` written to a file (an export's clip, without
                the SHA-256, fsync and manifest);
- ours, export: ``plan_clip`` + ``write_clip_file`` (the same, hashed and fsynced);
- ours, HTTP:   ``GET video.mp4`` from the real app on 127.0.0.1 in this process, read with
                aiohttp into a file; first byte: request sent -> first body byte read. A
                fresh app per request, so its clip cache is empty. Also 64 KiB ``Range``
                requests in the middle of the clip: as a first request, and repeated on the
                same app (a seeking player; the plan may come from the cache);
- PyAV remux:   demux the segments, mux the packets from the keyframe at or before the start
                up to the end into a new MP4 (no decoding);
- ffmpeg concat: ``ffmpeg -f concat -safe 0 -i LIST -c copy`` over every segment the range
                touches, as a child process.

Before each run, as many bytes as the segments touched are written to a scratch file and
deleted (``recycle_pages``: on a VM, fresh pages are slow to write). Each output is checked
with ffprobe (``-v error`` must print nothing; video packets counted), then deleted, and dirty
pages are flushed (``os.sync``), all outside the timed part. Wall time is
``perf_counter``; CPU is ``process_time`` for in-process methods (the HTTP rows count the
server and the client, both in this process) and the child's rusage for ffmpeg.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import uvloop
from aiohttp import web
from procfs import add_nvr_src_argument, first_line, host_facts, nvr_src_first_on_path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the fast recorder driver lives with the tests
nvr_src_first_on_path()  # before nvr is imported: measure that snapshot, not the working tree
import nvr  # noqa: E402
from nvr.api.server import make_app  # noqa: E402
from nvr.api.times import format_rfc3339  # noqa: E402
from nvr.ingest.camera import CameraState, CameraStatus  # noqa: E402
from nvr.media import VideoCodec, VideoParameters  # noqa: E402
from nvr.storage.clip import Clip, plan_clip  # noqa: E402
from nvr.storage.export_file import write_clip_file  # noqa: E402
from nvr.storage.index import Index  # noqa: E402
from nvr.storage.index_rows import SegmentRow  # noqa: E402
from nvr.storage.leases import ReaderLeases  # noqa: E402
from nvr.storage.model import SegmentState  # noqa: E402
from nvr.storage.nal_framing import annexb_nal_units  # noqa: E402
from support.api import add_token, bearer  # noqa: E402
from support.media import Clip as SourceClip  # noqa: E402
from support.recorded import record_clip  # noqa: E402

SECOND = 90_000
FPS = 25
CAMERA = "gate"
WRITE_BYTES = 4 << 20  # what an export writes at a time (export_file._WRITE_BYTES)
RANGE_BYTES = 64 << 10
START_INTO_SEGMENT_90K = 20 * SECOND + 13 * SECOND // FPS  # 20.52 s: mid-segment, mid-GOP
ENCODE = [
    "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS}",
    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
    "-b:v", "2M", "-maxrate", "2M", "-bufsize", "2M",
    "-g", str(FPS), "-keyint_min", str(FPS), "-sc_threshold", "0", "-bf", "0",
]  # fmt: skip
STATUS = CameraStatus(id=CAMERA, state=CameraState.STREAMING, failures=0, last_error=None,
                      last_error_kind=None, last_frame_wall_ns=None, runs=1, frames=0,
                      segments_closed=0)  # fmt: skip


class BenchError(RuntimeError):
    """Set-up failed or an output is wrong (not a measurement)."""


# --- the recording --------------------------------------------------------------------------


def encode_source(path: Path, frames: int) -> SourceClip:
    """Encode the loop with ffmpeg (Annex B) and split it into access units with PyAV."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", *ENCODE, "-frames:v", str(frames)]
    subprocess.run([*cmd, "-f", "h264", str(path)], check=True)
    units: list[tuple[tuple[bytes, ...], bool]] = []
    with av.open(str(path), format="h264") as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                nals = tuple(annexb_nal_units(bytes(packet)))
                units.append((nals, any(n[0] & 0x1F == 5 for n in nals)))
    if not units or not units[0][1]:
        raise BenchError("the encoded loop does not start with an IDR")
    pick = {n[0] & 0x1F: n for n in units[0][0]}
    return SourceClip(VideoParameters(VideoCodec.H264, pick[7], pick[8], None, 1280, 720), units)


@dataclass(frozen=True, slots=True)
class Recording:
    root: Path
    segments: list[SegmentRow]  # closed, in order
    seconds: float
    make_s: float  # wall time to record it
    source_mbit_s: float

    def touching(self, start_90k: int, end_90k: int) -> list[SegmentRow]:
        return [s for s in self.segments if s.start_90k < end_90k and (s.end_90k or 0) > start_90k]


async def make_recording(work: Path, seconds: float) -> Recording:
    src = work / "loop.h264"
    source = encode_source(src, 20 * FPS)
    mbit_s = src.stat().st_size * 8 / (len(source.units) / FPS) / 1e6
    src.unlink()
    root = work / "storage"
    root.mkdir()
    t0 = time.perf_counter()
    index = await record_clip(root, source, seconds=seconds, fps=FPS, segment_seconds=60,
                              camera_id=CAMERA)  # fmt: skip
    make_s = time.perf_counter() - t0
    try:
        rows = await index.segments(CAMERA, 0, 1 << 62)
    finally:
        await index.close()
    closed = [r for r in rows if r.state is SegmentState.CLOSED]
    if len(closed) != len(rows):
        raise BenchError(f"{len(rows) - len(closed)} segments are not closed")
    return Recording(root, closed, seconds, make_s, mbit_s)


# --- measurements ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timed:
    wall_s: float
    cpu_s: float
    out_bytes: int
    ttfb_s: float | None = None


@dataclass(slots=True)
class Run:
    wall_s: float
    cpu_s: float
    out_bytes: int
    video_packets: int
    probe_errors: str
    ttfb_s: float | None


@dataclass(slots=True)
class Result:
    range_min: int
    method: str
    runs: list[Run] = field(default_factory=list)

    def wall(self) -> list[float]:
        return [r.wall_s for r in self.runs]

    def ttfb(self) -> list[float]:
        return [r.ttfb_s for r in self.runs if r.ttfb_s is not None]

    def summary(self) -> dict[str, object]:
        last = self.runs[-1]
        ttfb = self.ttfb()
        return {
            "range_min": self.range_min,
            "method": self.method,
            "wall_s_median": round(statistics.median(self.wall()), 3),
            "wall_s_min": round(min(self.wall()), 3),
            "cpu_s_median": round(statistics.median(r.cpu_s for r in self.runs), 3),
            "out_bytes": last.out_bytes,
            "video_packets": last.video_packets,
            "clean": all(not r.probe_errors for r in self.runs),
            "ttfb_ms_median": round(statistics.median(ttfb) * 1000, 1) if ttfb else None,
            "ttfb_ms_min": round(min(ttfb) * 1000, 1) if ttfb else None,
        }


async def timed_in_process(work: Awaitable[tuple[int, float | None]]) -> Timed:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out_bytes, first_byte = await work
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Timed(wall, cpu, out_bytes, None if first_byte is None else first_byte - wall0)


def _write_chunks(clip: Clip, out: Path) -> int:
    done = 0
    with out.open("wb") as f:
        for data in clip.chunks(size=WRITE_BYTES):
            f.write(data)
            done += len(data)
    return done


@dataclass(slots=True)
class Bench:
    rec: Recording
    index: Index
    headers: dict[str, str]
    work: Path

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """A fresh app (so an empty clip cache) on 127.0.0.1; yields its base URL."""
        app = make_app(lambda: [STATUS], self.index, self.rec.root, leases=ReaderLeases())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}"
        finally:
            await runner.cleanup()

    async def ours_file(self, start_90k: int, end_90k: int, out: Path) -> Timed:
        async def go() -> tuple[int, float | None]:
            clip = await plan_clip(self.index, self.rec.root, CAMERA, start_90k, end_90k)
            return await asyncio.to_thread(_write_chunks, clip, out), None

        return await timed_in_process(go())

    async def ours_export(self, start_90k: int, end_90k: int, out: Path) -> Timed:
        async def go() -> tuple[int, float | None]:
            clip = await plan_clip(self.index, self.rec.root, CAMERA, start_90k, end_90k)
            written = await asyncio.to_thread(write_clip_file, clip, out)
            return written.size_bytes, None

        return await timed_in_process(go())

    async def _get(
        self, url: str, start_90k: int, end_90k: int, out: Path | None, byte_range: str | None
    ) -> tuple[int, float | None]:
        """Download into ``out`` (or discard); returns (bytes, time of the first body byte)."""
        params = {"start": format_rfc3339(start_90k), "end": format_rfc3339(end_90k)}
        headers = dict(self.headers)
        if byte_range is not None:
            headers["Range"] = byte_range
        timeout = aiohttp.ClientTimeout(total=None)
        first: float | None = None
        done = 0
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{url}/api/v1/cameras/{CAMERA}/video.mp4",
                        params=params, headers=headers) as resp,
        ):  # fmt: skip
            if resp.status != (206 if byte_range else 200):
                raise BenchError(f"video.mp4: HTTP {resp.status}: {await resp.text()}")
            f = out.open("wb") if out is not None else None
            try:
                async for data in resp.content.iter_any():
                    if first is None:
                        first = time.perf_counter()
                    if f is not None:
                        f.write(data)  # page cache; blocking the loop for well under a ms
                    done += len(data)
            finally:
                if f is not None:
                    f.close()
        return done, first

    async def ours_http(self, start_90k: int, end_90k: int, out: Path) -> Timed:
        async with self.serve() as url:
            return await timed_in_process(self._get(url, start_90k, end_90k, out, None))

    async def ours_http_range(self, start_90k: int, end_90k: int, at: int, again: bool) -> Timed:
        """64 KiB at ``at``; ``again``: after the same request once (a seeking player)."""
        byte_range = f"bytes={at}-{at + RANGE_BYTES - 1}"
        async with self.serve() as url:
            if again:
                await self._get(url, start_90k, end_90k, None, byte_range)
            got = await timed_in_process(self._get(url, start_90k, end_90k, None, byte_range))
        if got.out_bytes != RANGE_BYTES:
            raise BenchError(f"Range request: {got.out_bytes} bytes, not {RANGE_BYTES}")
        return got

    async def pyav_remux(self, start_90k: int, end_90k: int, out: Path) -> Timed:
        touched = self.rec.touching(start_90k, end_90k)
        segs = [(s.start_90k, self.rec.root / s.path) for s in touched]

        async def go() -> tuple[int, float | None]:
            await asyncio.to_thread(pyav_remux, segs, start_90k, end_90k, out)
            return (await asyncio.to_thread(out.stat)).st_size, None

        return await timed_in_process(go())

    async def ffmpeg_concat(self, start_90k: int, end_90k: int, out: Path) -> Timed:
        listing = self.work / "concat.txt"
        lines = [f"file '{self.rec.root / s.path}'" for s in self.rec.touching(start_90k, end_90k)]
        listing.write_text("\n".join(lines) + "\n")
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0",
               "-i", str(listing), "-c", "copy", str(out)]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall0 = time.perf_counter()
        res = await asyncio.to_thread(
            subprocess.run, cmd, check=False, capture_output=True, text=True
        )
        wall = time.perf_counter() - wall0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0 or res.stderr.strip():
            raise BenchError(f"ffmpeg concat: exit {res.returncode}: {res.stderr[-800:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return Timed(wall, cpu, (await asyncio.to_thread(out.stat)).st_size)


def pyav_remux(
    segments: Sequence[tuple[int, Path]], start_90k: int, end_90k: int, out: Path
) -> int:
    """Stream copy of [keyframe at or before start, end) into ``out``; returns packets muxed."""
    tb = Fraction(1, SECOND)
    held: list[tuple[av.Packet[av.VideoStream], int, int, int]] = []  # the GOP before start
    first_90k: int | None = None  # wall time of the first packet muxed: output time 0
    muxed = 0
    with av.open(str(out), "w", format="mp4") as output:
        ostream: av.VideoStream | None = None
        for seg_start_90k, path in segments:
            with av.open(str(path)) as source:
                istream = source.streams.video[0]
                if ostream is None:
                    ostream = output.add_stream_from_template(istream)
                    ostream.time_base = tb
                itb = istream.time_base
                assert itb is not None
                for packet in source.demux(istream):
                    if packet.pts is None or packet.dts is None:
                        continue  # the demuxer's final empty packet
                    pts = seg_start_90k + int(packet.pts * itb * SECOND)
                    dts = seg_start_90k + int(packet.dts * itb * SECOND)
                    dur = int((packet.duration or 0) * itb * SECOND)
                    if pts >= end_90k:
                        break
                    if first_90k is None and pts <= start_90k:
                        if packet.is_keyframe:
                            held.clear()
                        if held or packet.is_keyframe:
                            held.append((packet, pts, dts, dur))
                        continue
                    held.append((packet, pts, dts, dur))
                    for p, p_pts, p_dts, p_dur in held:
                        if first_90k is None:
                            first_90k = p_dts
                        p.stream = ostream
                        p.time_base = tb
                        p.pts, p.dts, p.duration = p_pts - first_90k, p_dts - first_90k, p_dur
                        output.mux(p)
                        muxed += 1
                    held.clear()
    return muxed


def probe(path: Path) -> tuple[str, int]:
    """(what ``ffprobe -v error`` said, video packets read)."""
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
         "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    errors = res.stderr.strip() or ("" if res.returncode == 0 else f"exit {res.returncode}")
    try:
        return errors, int(res.stdout.strip().rstrip(","))
    except ValueError:
        return errors or f"no packet count: {res.stdout!r}", 0


# --- the session ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Range:
    minutes: int
    start_90k: int
    end_90k: int


def pick_ranges(rec: Recording, minutes: Sequence[int]) -> list[Range]:
    start = rec.segments[1].start_90k + START_INTO_SEGMENT_90K
    out = []
    for m in minutes:
        end = start + m * 60 * SECOND
        if end > (rec.segments[-1].end_90k or 0):
            raise BenchError(f"the recording is too short for {m} minutes from the start")
        out.append(Range(m, start, end))
    return out


def warm_up(rec: Recording) -> None:
    """Read every segment into the page cache."""
    for seg in rec.segments:
        with (rec.root / seg.path).open("rb") as f:
            while f.read(8 << 20):
                pass


def recycle_pages(work: Path, scratch_bytes: int) -> None:
    """Write and delete ``scratch_bytes``, so the next writer gets pages freed just now.

    On this VM, writing into memory the guest has not touched yet, or freed more than about a
    second ago (the host takes idle free pages back), is 3-8x slower than into pages freed just
    before (measured: 0.18 s against 0.5-1.5 s for 880 MB). Without this, a method's time
    depended on how long the previous output had been deleted.
    """
    scratch = work / "scratch"
    block = bytes(4 << 20)
    with scratch.open("wb") as f:
        for _ in range(scratch_bytes // len(block) + 1):
            f.write(block)
    scratch.unlink()
    os.sync()


Method = Callable[[int, int, Path], Awaitable[Timed]]


async def measure(
    rec: Recording, ranges: Sequence[Range], reps: int, work: Path
) -> dict[str, object]:
    async with await Index.open(rec.root / "index.db") as index:
        token = await add_token(index, "viewer", "bench")
        return await _measure(Bench(rec, index, bearer(token), work), ranges, reps, work)


async def _measure(
    bench: Bench, ranges: Sequence[Range], reps: int, work: Path
) -> dict[str, object]:
    methods: dict[str, Method] = {
        "ours, file": bench.ours_file,
        "ours, export (+SHA-256, fsync)": bench.ours_export,
        "ours, HTTP": bench.ours_http,
        "PyAV remux": bench.pyav_remux,
        "ffmpeg concat": bench.ffmpeg_concat,
    }
    await asyncio.to_thread(warm_up, bench.rec)
    results: list[Result] = []
    facts: list[dict[str, object]] = []
    for r in ranges:
        clip = await plan_clip(bench.index, bench.rec.root, CAMERA, r.start_90k, r.end_90k)
        mid = clip.size_bytes // 2
        facts.append({
            "minutes": r.minutes, "start_90k": r.start_90k, "end_90k": r.end_90k,
            "keyframe_before_start_s": (r.start_90k - clip.first_frame_90k) / SECOND,
            "clip_bytes": clip.size_bytes, "clip_header_bytes": len(clip.header),
            "clip_video_frames": clip.video_frames, "clip_pieces": len(clip.pieces),
            "segments_touched": len(bench.rec.touching(r.start_90k, r.end_90k)),
            "range_request": f"bytes={mid}-{mid + RANGE_BYTES - 1}",
        })  # fmt: skip
        by_name = {name: Result(r.minutes, name) for name in methods}
        ranged = [Result(r.minutes, "ours, HTTP Range 64 KiB mid-clip, first request"),
                  Result(r.minutes, "ours, HTTP Range 64 KiB mid-clip, repeated")]  # fmt: skip
        names = list(methods)
        out_bytes = sum(s.size_bytes or 0 for s in bench.rec.touching(r.start_90k, r.end_90k))
        for rep in range(reps + 1):  # rep 0: warm-up, not kept
            for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotated
                method = methods[name]
                out = work / "out.mp4"
                await asyncio.to_thread(recycle_pages, work, out_bytes)
                got = await method(r.start_90k, r.end_90k, out)
                errors, packets = await asyncio.to_thread(probe, out)
                out.unlink()
                os.sync()
                if rep:
                    by_name[name].runs.append(
                        Run(got.wall_s, got.cpu_s, got.out_bytes, packets, errors, got.ttfb_s)
                    )
                print(f"bench: {r.minutes} min, {name}, rep {rep}: {got.wall_s:.3f} s "
                      f"wall, {got.cpu_s:.3f} s CPU, {packets} packets {errors!r}",
                      file=sys.stderr)  # fmt: skip
            for again, res in enumerate(ranged):
                got = await bench.ours_http_range(r.start_90k, r.end_90k, mid, bool(again))
                if rep:
                    res.runs.append(Run(got.wall_s, got.cpu_s, got.out_bytes, 0, "", got.ttfb_s))
        results += [*by_name.values(), *ranged]
        if not all(res.runs[-1].out_bytes == clip.size_bytes
                   for res in (by_name["ours, file"], by_name["ours, HTTP"])):  # fmt: skip
            raise BenchError("our file or download differs in size from the planned clip")
    return {"ranges": facts, "results": [res.summary() for res in results],
            "runs": [{"range_min": res.range_min, "method": res.method,
                      "runs": [asdict(x) for x in res.runs]} for res in results]}  # fmt: skip


# --- report ---------------------------------------------------------------------------------


def markdown_table(results: Sequence[dict[str, object]]) -> str:
    head = ("| range | method | wall s, median (min) | CPU s, median | MiB out | video packets "
            "| ffprobe | first byte ms, median (min) |")  # fmt: skip
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        ranged = "Range" in str(r["method"])
        ttfb = "" if r["ttfb_ms_median"] is None else f"{r['ttfb_ms_median']} ({r['ttfb_ms_min']})"
        size = f"{int(str(r['out_bytes'])) / 2**20:.1f}"
        rows.append(
            f"| {r['range_min']} min | {r['method']} | {r['wall_s_median']} ({r['wall_s_min']}) "
            f"| {r['cpu_s_median']} | {'0.06' if ranged else size} "
            f"| {'' if ranged else r['video_packets']} "
            f"| {'' if ranged else ('clean' if r['clean'] else 'ERRORS')} | {ttfb} |"
        )
    return "\n".join(rows)


def ratios(results: Sequence[dict[str, object]]) -> dict[str, float]:
    """Median wall time of ours over the other ways, per range."""
    wall = {(str(r["range_min"]), str(r["method"])): float(str(r["wall_s_median"]))
            for r in results}  # fmt: skip
    out = {}
    for (m, name), t in wall.items():
        if name.startswith("ours") and "Range" not in name:
            for other in ("ffmpeg concat", "PyAV remux"):
                out[f"{m} min: {name} / {other}"] = round(t / wall[(m, other)], 3)
    return out


def machine_facts() -> dict[str, object]:
    return host_facts() | {
        "python": platform.python_version(),
        "pyav": av.__version__,
        "aiohttp": aiohttp.__version__,
        "ffmpeg": first_line(["ffmpeg", "-version"]),
        "nvr_imported_from": str(Path(nvr.__file__).parent),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--quick", action="store_true", help="12 min recorded; 1- and 10-min ranges")
    p.add_argument("--reps", type=int, default=3, help="measured repetitions (after a warm-up)")
    add_nvr_src_argument(p)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, object]:
    seconds, minutes = (720.0, [1, 10]) if args.quick else (3720.0, [10, 60])
    with tempfile.TemporaryDirectory(prefix="nvr-bench-clip-") as tmp:
        work = Path(tmp)
        print(f"bench: recording {seconds:g} s ...", file=sys.stderr)
        rec = await make_recording(work, seconds)
        recording = {
            "seconds": seconds, "segments": len(rec.segments),
            "bytes": sum(s.size_bytes or 0 for s in rec.segments),
            "source_mbit_s": round(rec.source_mbit_s, 2), "make_s": round(rec.make_s, 1),
        }  # fmt: skip
        print(f"bench: {json.dumps(recording)}", file=sys.stderr)
        measured = await measure(rec, pick_ranges(rec, minutes), args.reps, work)
    return {"recording": recording, **measured}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    facts = machine_facts()
    measured = uvloop.run(run(args))
    results = measured["results"]
    assert isinstance(results, list)
    report = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "mode": "quick" if args.quick else "full",
        "reps": args.reps,
        "page_cache": "warm: segments read once, then one unmeasured pass of every method; "
        "before each run, a scratch file as large as the touched segments written and deleted",
        "source": " ".join(["ffmpeg", *ENCODE, "-frames:v", str(20 * FPS), "-f", "h264"]),
        "machine": facts,
        **measured,
        "ratios_wall_median": ratios(results),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(results))
    print()
    for k, v in ratios(results).items():
        print(f"- {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
