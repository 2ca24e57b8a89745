"""Recording benchmark: `nvr run` side by side with ffmpeg, recording the same cameras.

    .venv/bin/python bench/record.py --out bench-results.json            # N = 1, 8, 32, 64
    .venv/bin/python bench/record.py --quick --out bench-results.json    # N = 1, 4; 20 s

One simulated camera (tools/fakecam.py, no auth) serves looped-file mounts (passthrough, no
encoding). For each camera count N and each recorder, one after the other:

- ours:   one `nvr run` process with N cameras (--codec: all /file/h264, all /file/h265, or
          alternating; TCP, audio off, 60 s segments, API on a free loopback port), stopped
          with SIGTERM T seconds after launch;
- ffmpeg: N `ffmpeg -rtsp_transport tcp -i URL -c copy -f segment -segment_time 60
          -reset_timestamps 1` processes (fragmented MP4), the same job done by the usual
          tool, stopped with SIGTERM T seconds after launch.

Measured for the recorder's own processes only (the fakecam's CPU is reported apart):

- CPU: utime+stime of every thread, from /proc/PID/stat, read when every camera first has a
  non-empty file ("ready") and again just before SIGTERM. The steady part is between the two:
  steady CPU % (of one core) and CPU seconds per stream-hour = steady CPU s / (N x steady s /
  3600). CPU over the whole window (start-up included) is in the JSON.
- Memory: peak RSS (VmHWM) and PSS just before SIGTERM, summed over the processes. The RSS
  target is 60 + 3 x N MiB (the issue's "MB", read as MiB).
- Frames: the fakecam's per-mount `video_access_units` counter (buffers entering the video
  payloader, every client's pipeline added up) is read before launch and just before SIGTERM;
  "served" is the difference. "Written" is, for ours, the sum of `video_frames` of the
  index's closed segments after the stop; for ffmpeg, the video packets ffprobe counts in its
  files. lost = served - written. Frames in flight at the snapshot are written after it, so
  lost can be a few frames below zero.
- Event-loop lag (ours only): `GET /metrics` with a viewer token (made with `nvr token add`
  before launch) every 5 s and once just before SIGTERM. From the last scrape: the p99 of
  `nvr_event_loop_lag_seconds` as the upper bound of the histogram bucket where the
  cumulative count reaches 99 % (since the process started), and the observation count; the
  maximum of `nvr_event_loop_lag_max_seconds` over all scrapes. The scrapes cost our process a
  little CPU, which is counted.
- Files: `ffprobe -v error` on every file after the stop (a file that prints anything or
  fails is "bad"), its duration and its video packets.

A recorder that exits before T, or whose cameras are not all ready by T, stops the series for
that recorder: larger N are not run, and the reason is in the JSON and under the tables.
Results: Markdown tables on stdout and JSON (--out); --table-from reprints the tables of a
results file (older files lack some columns: "–").

Runs under the project's venv Python; the fakecam runs under /usr/bin/python3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from procfs import (
    NVR_BIN,
    REPO_ROOT,
    add_nvr_src_argument,
    cpu_s,
    io_wchar,
    machine_facts,
    machine_ticks,
    nvr_env,
    pss_kib,
    status_kib,
    task_count,
    task_cpu_s,
)
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(REPO_ROOT / "tests"))  # the simulated camera's driver lives with the tests
from support.fakecam import FakeCam, MountStats

LOOPBACK = "127.0.0.1"
SEGMENT_SECONDS = 60
MOUNTS = ("/file/h264", "/file/h265")
SCRAPE_EVERY_S = 5.0
SCRAPE_TIMEOUT_S = 3.0
LAG_QUANTILE = 0.99
COUNTS_FULL, SECONDS_FULL = "1,8,32,64", 60.0
COUNTS_QUICK, SECONDS_QUICK = "1,4", 20.0

Recorder = Literal["ours", "ffmpeg"]
Codec = Literal["h264", "h265", "mixed"]


class BenchError(RuntimeError):
    """The benchmark could not set up or run (not a measurement result)."""


class RecorderFailed(RuntimeError):
    """The recorder under test exited before the end of its window."""


def rss_target_mib(cameras: int) -> float:
    """The issue's memory target for N cameras: 60 MB + 3 MB per camera (taken as MiB)."""
    return 60.0 + 3.0 * cameras


def camera_mounts(codec: Codec, cameras: int) -> list[str]:
    """The mount each camera records: one codec for all, or alternating (mixed)."""
    if codec == "mixed":
        return [MOUNTS[i % 2] for i in range(cameras)]
    return [f"/file/{codec}"] * cameras


# --- the recorder's processes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcSnapshot:
    cpu_s: float  # every thread, live or exited
    main_thread_cpu_s: float  # the threads whose id is the process id (the event loop, for us)
    threads: int  # live threads now
    hwm_kib: int
    pss_kib: int
    wchar: int


def snapshot(pids: Sequence[int]) -> ProcSnapshot:
    """Summed over pids (each one a process with all its threads)."""
    return ProcSnapshot(
        cpu_s=sum(cpu_s(p) for p in pids),
        main_thread_cpu_s=sum(task_cpu_s(p, p) for p in pids),
        threads=sum(task_count(p) for p in pids),
        hwm_kib=sum(status_kib(p, "VmHWM") for p in pids),
        pss_kib=sum(pss_kib(p) for p in pids),
        wchar=sum(io_wchar(p) for p in pids),
    )


# --- the simulated camera -----------------------------------------------------------------


def wait_idle(cam: FakeCam, timeout_s: float) -> None:
    """Until no client pipeline is left from the previous run (or the deadline)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and sum(m.clients for m in cam.stats().values()) > 0:
        time.sleep(0.2)


def frames_served(before: Mapping[str, MountStats], after: Mapping[str, MountStats]) -> int:
    """Video access units the camera fed its payloaders between two stats() reads, summed
    over every mount (and so over every client)."""
    return sum(
        s.video_access_units - (before[m].video_access_units if m in before else 0)
        for m, s in after.items()
    )


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _last_line(path: Path) -> str:
    lines = _tail(path).strip().splitlines()
    return lines[-1] if lines else "(empty log)"


# --- our /metrics -------------------------------------------------------------------------


def bucket_upper_bound(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The upper bound `le` of the first histogram bucket whose cumulative count reaches the
    fraction q of all observations. None when there are none, or when that bucket is +Inf."""
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    for le, cumulative in ordered:
        if cumulative >= q * total:
            return None if math.isinf(le) else le
    return None


@dataclass(slots=True)
class LagScraper:
    """Scrapes our /metrics and keeps what the event-loop lag report needs. Never raises: a
    failed scrape is counted, and the first few messages are kept."""

    url: str
    token: str
    t0: float  # launch, for the error messages
    scrapes: int = 0  # successful ones
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (le s, cumulative)
    observations: int | None = None  # of the last successful scrape
    max_s: float | None = None  # of nvr_event_loop_lag_max_seconds, over every scrape

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{time.monotonic() - self.t0:.1f} s: {message}")

    def scrape(self) -> None:
        request = urllib.request.Request(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT_S) as response:
                text = response.read().decode()
            families = list(text_string_to_metric_families(text))
        except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts; parse errors
            self.error(f"{type(exc).__name__}: {exc}")
            return
        buckets: list[tuple[float, float]] = []
        count: float | None = None
        max_s: float | None = None
        for family in families:
            if family.name == "nvr_event_loop_lag_seconds":
                for s in family.samples:
                    if s.name.endswith("_bucket"):
                        buckets.append((float(s.labels["le"]), s.value))
                    elif s.name.endswith("_count"):
                        count = s.value
            elif family.name == "nvr_event_loop_lag_max_seconds" and family.samples:
                max_s = family.samples[0].value
        if not buckets or count is None or max_s is None:
            self.error("no event-loop lag metrics in the scrape")
            return
        self.scrapes += 1
        self.buckets, self.observations = buckets, int(count)
        self.max_s = max_s if self.max_s is None else max(self.max_s, max_s)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


def viewer_token(config: Path, env: dict[str, str]) -> str:
    """A viewer token from `nvr token add --json` (which creates the index if need be)."""
    cmd = [str(NVR_BIN), "token", "add", "--config", str(config), "--role", "viewer",
           "--name", "bench", "--json"]  # fmt: skip
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60, env=env)
    if res.returncode != 0:
        raise BenchError(f"nvr token add: exit {res.returncode}: {res.stderr.strip()[-500:]}")
    token = json.loads(res.stdout)["token"]
    assert isinstance(token, str)
    return token


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeResult:
    files: int
    bad_files: int
    media_s: float  # sum of the files' format durations, as ffprobe reports them
    video_packets: int  # sum of the files' video packets, as ffprobe counts them
    bytes: int
    complaints: list[str]  # the first few, "<file>: <first line>"


@dataclass(slots=True)
class RunResult:
    recorder: Recorder
    cameras: int
    codec: Codec
    window_s: float  # launch to SIGTERM, measured
    ready_s: float | None  # launch until every camera had a non-empty file; None: never
    cameras_ready: int
    cpu_s: float
    cpu_pct: float  # of one core, over the whole window
    main_thread_cpu_s: float  # of cpu_s, in the main threads (our asyncio loop); rest: others
    threads: int  # live threads just before SIGTERM, summed
    steady_cpu_pct: float | None  # of one core, from ready to SIGTERM
    cpu_s_per_stream_hour: float | None  # steady CPU s / (cameras x steady hours)
    peak_rss_mib: float  # VmHWM, summed over the recorder's processes
    rss_target_mib: float  # 60 + 3 x cameras
    rss_within_target: bool  # peak_rss_mib <= rss_target_mib
    pss_mib: float  # Pss just before SIGTERM, summed
    wchar_mib: float  # bytes passed to write calls (files and sockets), summed
    written_mib: float  # MP4 bytes on disk after the stop
    frames_served: int  # the camera's video access units, launch to the stop snapshot
    frames_written: int | None  # ours: the index's closed segments; ffmpeg: ffprobe's count
    frames_lost: int | None  # served - written
    file_video_packets: int  # ffprobe's count over the files, for either recorder
    lag_p99_le_ms: float | None  # ours: bucket bound of the p99 (None: no data, or over 10 s)
    lag_observations: int | None  # ours: observations in the histogram
    lag_max_ms: float | None  # ours: max of nvr_event_loop_lag_max_seconds over the scrapes
    lag_scrapes: int  # successful /metrics scrapes
    lag_scrape_errors: int
    files: int
    bad_files: int
    media_s: float
    expected_media_s: float  # cameras x window: an upper bound (connecting takes a moment)
    stop_s: float  # SIGTERM until every process had exited
    exit_codes: list[int]
    fakecam_cpu_pct: float
    # All CPUs from /proc/stat, 100 = every core busy. Not in the table: on the VM these runs
    # were made on it sometimes reads less than the recorder's and fakecam's own CPU.
    machine_busy_pct: float
    loadavg_1m_before: float
    log_warnings: int  # ours: WARNING/ERROR lines; ffmpeg: stderr lines
    complaints: list[str] = field(default_factory=list)
    lag_scrape_first_errors: list[str] = field(default_factory=list)
    index: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class Stop:
    """Why the series stopped for a recorder, and the counts not run because of it."""

    recorder: Recorder
    cameras: int
    reason: str
    not_run: list[int] = field(default_factory=list)


def probe(files: Sequence[Path]) -> ProbeResult:
    bad, media_s, packets, total = 0, 0.0, 0, 0
    complaints: list[str] = []
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
           "-show_entries", "stream=nb_read_packets:format=duration", "-of", "json"]  # fmt: skip
    for f in files:
        total += f.stat().st_size
        res = subprocess.run(
            [*cmd, str(f)], check=False, capture_output=True, text=True, timeout=120
        )
        if res.returncode != 0 or res.stderr.strip():
            bad += 1
            if len(complaints) < 5:
                first = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[0]
                complaints.append(f"{f.name}: {first}")
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            out = json.loads(res.stdout)
            media_s += float(out.get("format", {}).get("duration", 0))
            packets += int(out["streams"][0]["nb_read_packets"])
    return ProbeResult(len(files), bad, media_s, packets, total, complaints)


# --- one measured window ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """What run_window measured."""

    ready_s: float | None  # launch until ready_count() reached the camera count
    cameras_ready: int
    snap: ProcSnapshot  # the recorder's processes, just before SIGTERM
    window_s: float  # launch to SIGTERM
    steady_cpu_s: float | None  # recorder CPU from ready to SIGTERM
    frames_served: int  # launch to the snapshot
    fakecam_cpu_pct: float
    machine_busy_pct: float
    exit_codes: list[int]
    stop_s: float  # SIGTERM until every process exited


def run_window(
    launch: Callable[[], list[subprocess.Popen[bytes]]],
    ready_count: Callable[[], int],
    cameras: int,
    seconds: float,
    *,
    cam: FakeCam,
    scraper: LagScraper | None,
) -> Window:
    """Launch -> (ready) -> `seconds` after launch: scrape, read the camera's counters and the
    processes' /proc -> SIGTERM -> wait for exit. RecorderFailed if a process exits early."""
    served0 = cam.stats()
    machine0 = machine_ticks()
    fake0 = cpu_s(cam.pid)
    t0 = time.monotonic()
    procs = launch()
    pids = [p.pid for p in procs]
    deadline = t0 + seconds
    next_scrape = t0 + SCRAPE_EVERY_S
    ready_s: float | None = None
    ready_cpu = 0.0
    n_ready = 0
    failed: str | None = None
    try:
        while time.monotonic() < deadline:
            if ready_s is None:
                n_ready = ready_count()
                if n_ready >= cameras:
                    ready_s = time.monotonic() - t0
                    ready_cpu = sum(cpu_s(p) for p in pids)
            if any(p.poll() is not None for p in procs):
                failed = (
                    f"exited {time.monotonic() - t0:.1f} s after launch (exit codes "
                    f"{sorted({p.returncode for p in procs if p.returncode is not None})}), "
                    f"{n_ready} of {cameras} cameras had a file"
                )
                break
            if scraper is not None and time.monotonic() >= next_scrape:
                scraper.scrape()
                next_scrape += SCRAPE_EVERY_S
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if failed is None:
            if scraper is not None:
                scraper.scrape()
            # Just before stopping, the processes still alive: the camera's counters, then /proc.
            served1 = cam.stats()
            snap = snapshot(pids)
            t_stop = time.monotonic()
            fake1 = cpu_s(cam.pid)
            machine1 = machine_ticks()
    finally:
        t_term = time.monotonic()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        stop_deadline = time.monotonic() + 60
        for p in procs:
            try:
                p.wait(timeout=max(0.1, stop_deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
    if failed is not None:
        raise RecorderFailed(failed)
    stop_s = time.monotonic() - t_term
    window_s = t_stop - t0
    steady = snap.cpu_s - ready_cpu if ready_s is not None and window_s > ready_s else None
    busy = machine1[0] - machine0[0]
    total = machine1[1] - machine0[1]
    if ready_s is None:
        n_ready = ready_count()
    return Window(
        ready_s=ready_s,
        cameras_ready=n_ready,
        snap=snap,
        window_s=window_s,
        steady_cpu_s=steady,
        frames_served=frames_served(served0, served1),
        fakecam_cpu_pct=(fake1 - fake0) / window_s * 100,
        machine_busy_pct=busy / total * 100 if total else 0.0,
        exit_codes=[p.returncode for p in procs],
        stop_s=stop_s,
    )


def _nonempty_mp4_dirs(dirs: Sequence[Path]) -> int:
    return sum(1 for d in dirs if any(f.stat().st_size > 0 for f in d.rglob("*.mp4")))


def _result(
    *,
    recorder: Recorder,
    cameras: int,
    codec: Codec,
    w: Window,
    probed: ProbeResult,
    frames_written: int | None,
    scraper: LagScraper | None,
    loadavg: float,
    log_warnings: int,
    index: dict[str, object],
) -> RunResult:
    expected = cameras * w.window_s
    steady_s = w.window_s - w.ready_s if w.ready_s is not None else 0.0
    per_hour = (
        w.steady_cpu_s / (cameras * steady_s / 3600)
        if w.steady_cpu_s is not None and steady_s > 0
        else None
    )
    peak_rss = round(w.snap.hwm_kib / 1024, 1)
    lag_p99 = None
    if scraper is not None and scraper.buckets:
        le = bucket_upper_bound(scraper.buckets, LAG_QUANTILE)
        lag_p99 = None if le is None else round(le * 1000, 3)
    return RunResult(
        recorder=recorder,
        cameras=cameras,
        codec=codec,
        window_s=round(w.window_s, 2),
        ready_s=None if w.ready_s is None else round(w.ready_s, 2),
        cameras_ready=w.cameras_ready,
        cpu_s=round(w.snap.cpu_s, 2),
        cpu_pct=round(w.snap.cpu_s / w.window_s * 100, 1),
        main_thread_cpu_s=round(w.snap.main_thread_cpu_s, 2),
        threads=w.snap.threads,
        steady_cpu_pct=(
            None if w.steady_cpu_s is None else round(w.steady_cpu_s / steady_s * 100, 1)
        ),
        cpu_s_per_stream_hour=None if per_hour is None else round(per_hour, 1),
        peak_rss_mib=peak_rss,
        rss_target_mib=rss_target_mib(cameras),
        rss_within_target=peak_rss <= rss_target_mib(cameras),
        pss_mib=round(w.snap.pss_kib / 1024, 1),
        wchar_mib=round(w.snap.wchar / 2**20, 1),
        written_mib=round(probed.bytes / 2**20, 1),
        frames_served=w.frames_served,
        frames_written=frames_written,
        frames_lost=None if frames_written is None else w.frames_served - frames_written,
        file_video_packets=probed.video_packets,
        lag_p99_le_ms=lag_p99,
        lag_observations=None if scraper is None else scraper.observations,
        lag_max_ms=(
            None if scraper is None or scraper.max_s is None else round(scraper.max_s * 1000, 1)
        ),
        lag_scrapes=0 if scraper is None else scraper.scrapes,
        lag_scrape_errors=0 if scraper is None else scraper.errors,
        files=probed.files,
        bad_files=probed.bad_files,
        media_s=round(probed.media_s, 1),
        expected_media_s=round(expected, 1),
        stop_s=round(w.stop_s, 2),
        exit_codes=w.exit_codes,
        fakecam_cpu_pct=round(w.fakecam_cpu_pct, 1),
        machine_busy_pct=round(w.machine_busy_pct, 1),
        loadavg_1m_before=loadavg,
        log_warnings=log_warnings,
        complaints=probed.complaints,
        lag_scrape_first_errors=[] if scraper is None else scraper.first_errors,
        index=index,
    )


@dataclass(frozen=True, slots=True)
class Profile:
    py_spy: str  # the py-spy binary
    out: Path  # collapsed stacks ("raw" format), one line per distinct stack with its count


def nvr_config(root: Path, urls: dict[str, str], listen: str) -> str:
    """An `nvr run` config: storage in ``root``, 60-s segments, the API on ``listen``, and
    each camera (id: URL) over TCP with audio off."""
    lines = ["[storage]", f'path = "{root}"', f"segment_seconds = {SEGMENT_SECONDS}", "",
             "[api]", f'listen = "{listen}"']  # fmt: skip
    for cam_id, url in urls.items():
        lines += ["", "[[cameras]]", f'id = "{cam_id}"', f'url = "{url}"', 'transport = "tcp"',
                  'audio = "off"']  # fmt: skip
    return "\n".join(lines) + "\n"


def run_ours(
    cam: FakeCam,
    cameras: int,
    codec: Codec,
    seconds: float,
    workdir: Path,
    *,
    profile: Profile | None,
    nvr_src: Path | None,
) -> RunResult:
    """`profile`: also sample our process with py-spy into a collapsed-stack file.
    `nvr_src`: import the nvr package from this directory instead of the installed one."""
    root = workdir / "storage"
    ids = [f"cam-{i:02d}" for i in range(cameras)]
    port = free_port()
    urls = {i: cam.url(m) for i, m in zip(ids, camera_mounts(codec, cameras), strict=True)}
    config = workdir / "nvr.toml"
    config.write_text(nvr_config(root, urls, f"{LOOPBACK}:{port}"))
    log = workdir / "nvr.log"
    env = nvr_env(nvr_src)
    scraper = LagScraper(f"http://{LOOPBACK}:{port}/metrics", "", time.monotonic())
    try:
        scraper.token = viewer_token(config, env)
    except (BenchError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        scraper.error(f"no token, no scrapes: {exc}")

    spies: list[subprocess.Popen[bytes]] = []

    def launch() -> list[subprocess.Popen[bytes]]:
        scraper.t0 = time.monotonic()
        with log.open("wb") as err:
            cmd = [str(NVR_BIN), "run", "--config", str(config)]
            nvr = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
        if profile is not None:
            # --nonblocking: never pauses the process; the sampler's own CPU is its own.
            # --gil: only the thread holding the GIL, i.e. Python code running (a thread
            # waiting on a lock or in epoll would otherwise count as busy).
            spy = [
                profile.py_spy, "record", "--pid", str(nvr.pid), "--nonblocking", "--gil",
                "--rate", "100",
                "--format", "raw", "--duration", str(max(1, int(seconds) - 2)),
                "--output", str(profile.out),
            ]  # fmt: skip
            with (workdir / "py-spy.log").open("wb") as spy_log:
                spies.append(subprocess.Popen(spy, stdout=spy_log, stderr=spy_log))
        return [nvr]

    loadavg = os.getloadavg()[0]
    try:
        window = run_window(
            launch, lambda: _nonempty_mp4_dirs([root / i for i in ids]), cameras, seconds,
            cam=cam, scraper=scraper if scraper.token else None,
        )  # fmt: skip
    except RecorderFailed as exc:
        raise RecorderFailed(f"{exc}; last log line: {_last_line(log)}") from None
    finally:
        for spy in spies:
            spy.wait(timeout=30)
    probed = probe(sorted(root.rglob("*.mp4")))
    text = _tail(log, 10**7)
    warnings = sum(1 for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln)
    index, written = read_index(root)
    return _result(
        recorder="ours", cameras=cameras, codec=codec, w=window, probed=probed,
        frames_written=written, scraper=scraper, loadavg=loadavg, log_warnings=warnings,
        index=index,
    )  # fmt: skip


def read_index(root: Path) -> tuple[dict[str, object], int | None]:
    """Runs by end reason and segments by state, and the video frames of the closed segments,
    from the index (opened read-only). None for the frames when there is no index."""
    db = root / "index.db"
    if not db.exists():
        return {}, None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        runs = dict(con.execute("select end_reason, count(*) from run group by 1").fetchall())
        segs = dict(con.execute("select state, count(*) from segment group by 1").fetchall())
        (frames,) = con.execute(
            "select coalesce(sum(video_frames), 0) from segment where state = 'closed'"
        ).fetchone()
    finally:
        con.close()
    summary: dict[str, object] = {
        "runs_by_end_reason": {str(k): v for k, v in runs.items()},
        "segments": segs,
    }
    return summary, int(frames)


def run_ffmpeg(
    cam: FakeCam,
    cameras: int,
    codec: Codec,
    seconds: float,
    workdir: Path,
    *,
    profile: Profile | None,
    nvr_src: Path | None,
) -> RunResult:
    del profile, nvr_src  # for ours only
    outs = [workdir / f"cam-{i:02d}" for i in range(cameras)]
    logs = [workdir / f"cam-{i:02d}.log" for i in range(cameras)]
    for d in outs:
        d.mkdir(parents=True)
    mounts = camera_mounts(codec, cameras)
    procs: list[subprocess.Popen[bytes]] = []

    def launch() -> list[subprocess.Popen[bytes]]:
        for out, log, mount in zip(outs, logs, mounts, strict=True):
            cmd = [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp",
                "-i", cam.url(mount), "-c", "copy",
                "-f", "segment", "-segment_time", str(SEGMENT_SECONDS), "-reset_timestamps", "1",
                "-segment_format", "mp4",
                "-movflags", "+frag_keyframe+empty_moov+default_base_moof",
                str(out / "%05d.mp4"),
            ]  # fmt: skip
            with log.open("wb") as err:
                procs.append(
                    subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
                )
        return procs

    loadavg = os.getloadavg()[0]
    try:
        window = run_window(
            launch, lambda: _nonempty_mp4_dirs(outs), cameras, seconds, cam=cam, scraper=None
        )
    except RecorderFailed as exc:
        first = next((i for i, p in enumerate(procs) if p.returncode not in (None, 255)), 0)
        raise RecorderFailed(f"{exc}; cam-{first:02d}: {_last_line(logs[first])}") from None
    probed = probe(sorted(f for d in outs for f in d.glob("*.mp4")))
    warnings = sum(len(_tail(p, 10**7).splitlines()) for p in logs)
    return _result(
        recorder="ffmpeg", cameras=cameras, codec=codec, w=window, probed=probed,
        frames_written=probed.video_packets, scraper=None, loadavg=loadavg,
        log_warnings=warnings, index={},
    )  # fmt: skip


# --- report -------------------------------------------------------------------------------

Row = Mapping[str, object]


def _num(r: Row, key: str, fmt: str) -> str:
    """r[key] formatted, or "–" when the field is missing (an older results file) or None."""
    v = r.get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return "–"
    return format(v, fmt)


def _rss_target(r: Row) -> str:
    target, ok = r.get("rss_target_mib"), r.get("rss_within_target")
    if not isinstance(target, int | float) or not isinstance(ok, bool):
        return "–"
    return f"≤ {target:g}: {'ok' if ok else 'over'}"


def _lag(r: Row) -> str:
    obs = r.get("lag_observations")
    if not isinstance(obs, int) or obs == 0:
        return "–"
    p99 = r.get("lag_p99_le_ms")
    head = f"≤ {p99:g}" if isinstance(p99, int | float) else "> 10000"
    return f"{head} ({_num(r, 'lag_max_ms', '.1f')})"


def _ready(r: Row) -> str:
    ready = r.get("ready_s")
    if isinstance(ready, int | float):
        return f"{ready:.1f}"
    return f"never ({r.get('cameras_ready', '?')}/{r.get('cameras', '?')})"


def markdown_table(results: Sequence[Row]) -> str:
    head = (
        "| N | recorder | CPU s / stream-h | steady CPU % | peak RSS MiB | RSS target MiB "
        "| PSS MiB | frames served / written | frames lost | loop lag p99 (max) ms "
        "| files (bad) | media s (of N×T) | ready s | fakecam CPU % |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        rows.append(
            f"| {r['cameras']} | {r['recorder']} | {_num(r, 'cpu_s_per_stream_hour', '.0f')} "
            f"| {_num(r, 'steady_cpu_pct', '.1f')} | {_num(r, 'peak_rss_mib', '.0f')} "
            f"| {_rss_target(r)} | {_num(r, 'pss_mib', '.0f')} "
            f"| {_num(r, 'frames_served', 'd')} / {_num(r, 'frames_written', 'd')} "
            f"| {_num(r, 'frames_lost', 'd')} | {_lag(r)} "
            f"| {_num(r, 'files', 'd')} ({_num(r, 'bad_files', 'd')}) "
            f"| {_num(r, 'media_s', '.0f')} / {_num(r, 'expected_media_s', '.0f')} "
            f"| {_ready(r)} | {_num(r, 'fakecam_cpu_pct', '.1f')} |"
        )
    return "\n".join(rows)


RATIO_COLUMNS = (
    ("CPU s / stream-h", "cpu_s_per_stream_hour"),
    ("steady CPU %", "steady_cpu_pct"),
    ("peak RSS", "peak_rss_mib"),
    ("PSS", "pss_mib"),
)


def ratio_table(results: Sequence[Row]) -> str:
    """ours / ffmpeg per N, for every N where both recorders have a row."""
    by_n: dict[int, dict[str, Row]] = {}
    for r in results:
        n, rec = r.get("cameras"), r.get("recorder")
        if isinstance(n, int) and isinstance(rec, str):
            by_n.setdefault(n, {})[rec] = r
    head = "| N | " + " | ".join(f"{name} ours/ffmpeg" for name, _ in RATIO_COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(RATIO_COLUMNS) + 1)]
    for n in sorted(by_n):
        ours, ffmpeg = by_n[n].get("ours"), by_n[n].get("ffmpeg")
        if ours is None or ffmpeg is None:
            continue
        cells = []
        for _, key in RATIO_COLUMNS:
            a, b = ours.get(key), ffmpeg.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and b > 0:
                cells.append(f"{a / b:.2f}")
            else:
                cells.append("–")
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def report_text(report: Mapping[str, object]) -> str:
    """The tables of a results file, and where each recorder's series stopped."""
    results = report.get("results")
    rows: list[Row] = (
        [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
    )
    parts = []
    if "source" in report:
        codec = f"; --codec {report['codec']}" if "codec" in report else ""
        parts += [f"Source: {report['source']}{codec}.", ""]
    parts += [markdown_table(rows), "", ratio_table(rows)]
    stopped = report.get("stopped")
    if isinstance(stopped, list) and stopped:
        parts.append("")
        for s in stopped:
            if not isinstance(s, dict):
                continue
            not_run = s.get("not_run") or []
            skipped = f" (not run: N={','.join(map(str, not_run))})" if not_run else ""
            parts.append(f"- {s['recorder']}: stopped at N={s['cameras']}: {s['reason']}{skipped}")
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--counts", default=None, help=f"camera counts, comma-separated (default {COUNTS_FULL})"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"recording window T per run (default {SECONDS_FULL:g})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"for small machines: counts {COUNTS_QUICK}, {SECONDS_QUICK:g} s "
        "(--counts and --seconds still win)",
    )
    p.add_argument(
        "--codec",
        choices=["h264", "h265", "mixed"],
        default="mixed",
        help="the mount every camera records; mixed: /file/h264 and /file/h265 alternately",
    )
    p.add_argument("--recorders", default="ours,ffmpeg", help="comma-separated: ours,ffmpeg")
    p.add_argument("--out", type=Path, help="JSON results file (required unless --table-from)")
    add_nvr_src_argument(p)
    p.add_argument("--table-from", type=Path, help="only print the tables of a results file")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument(
        "--media-dir",
        type=Path,
        default=None,
        help="cache of the looped clips (default /tmp/nvr-bench-media-WxH)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep recordings here (default: a temporary dir, removed)",
    )
    p.add_argument(
        "--py-spy",
        default=None,
        help="py-spy binary: profile our process into <out stem>.py-spy-ours-N.txt "
        "(collapsed stacks); its own CPU is not counted, but it shares the machine",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_from is not None:
        print(report_text(json.loads(args.table_from.read_text())))
        return 0
    if args.out is None:
        raise SystemExit("--out is required")
    counts_arg = args.counts or (COUNTS_QUICK if args.quick else COUNTS_FULL)
    counts = [int(c) for c in counts_arg.split(",") if c.strip()]
    seconds = args.seconds or (SECONDS_QUICK if args.quick else SECONDS_FULL)
    codec: Codec = args.codec
    recorders: list[Recorder] = []
    for name in args.recorders.split(","):
        if name not in ("ours", "ffmpeg"):
            raise SystemExit(f"unknown recorder {name!r}")
        recorders.append("ours" if name == "ours" else "ffmpeg")
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    media_dir = args.media_dir or Path(f"/tmp/nvr-bench-media-{args.width}x{args.height}")
    keep = args.workdir is not None
    base = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="nvr-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    facts["nvr_src"] = str(args.nvr_src) if args.nvr_src is not None else "installed (src/)"
    print(json.dumps(facts), file=sys.stderr)
    cam = FakeCam()
    results: list[RunResult] = []
    stopped: dict[Recorder, Stop] = {}
    try:
        cam.start("none", media_dir=media_dir, width=args.width, height=args.height,
                  fps=args.fps, timeout_s=300)  # fmt: skip
        for n in counts:
            for rec in recorders:
                stop = stopped.get(rec)
                if stop is not None and n > stop.cameras:
                    stop.not_run.append(n)
                    print(f"bench: {rec} x {n} not run: stopped at N={stop.cameras}",
                          file=sys.stderr)  # fmt: skip
                    continue
                wait_idle(cam, 30)
                workdir = base / f"{rec}-{n}"
                workdir.mkdir()
                print(f"bench: {rec} x {n} for {seconds:g} s ...", file=sys.stderr)
                run = run_ours if rec == "ours" else run_ffmpeg
                profile = None
                if args.py_spy is not None:
                    out = args.out.with_name(f"{args.out.stem}.py-spy-{rec}-{n}.txt")
                    profile = Profile(args.py_spy, out)
                try:
                    r = run(cam, n, codec, seconds, workdir, profile=profile,
                            nvr_src=args.nvr_src)  # fmt: skip
                except RecorderFailed as exc:
                    stopped[rec] = Stop(rec, n, f"a recorder {exc}")
                    print(f"bench: {rec} x {n} failed: {exc}", file=sys.stderr)
                else:
                    results.append(r)
                    print(f"bench: {json.dumps(asdict(r))}", file=sys.stderr)
                    if r.ready_s is None:
                        stopped[rec] = Stop(
                            rec, n, f"only {r.cameras_ready} of {n} cameras had a non-empty "
                            f"file within {seconds:g} s",
                        )  # fmt: skip
                if not keep:
                    shutil.rmtree(workdir)
    finally:
        cam.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": seconds,
        "counts": counts,
        "quick": args.quick,
        "codec": codec,
        "source": f"{args.width}x{args.height}@{args.fps} looped files "
        f"{', '.join(sorted(set(camera_mounts(codec, 2))))}",
        "machine": facts,
        "results": [asdict(r) for r in results],
        "stopped": [asdict(s) for s in stopped.values()],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(report_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
