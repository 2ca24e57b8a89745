"""Recording benchmark: `nvr run` side by side with ffmpeg, recording the same cameras.

    .venv/bin/python bench/record.py --counts 4,16 --seconds 60 --out bench-results.json

One simulated camera (tools/fakecam.py, no auth) serves looped-file mounts (passthrough, no
encoding). For each camera count N and each recorder:

- ours:   one `nvr run` process with N cameras (half /file/h264, half /file/h265, TCP, audio off,
          60 s segments), stopped with SIGTERM after T seconds;
- ffmpeg: N `ffmpeg -c copy -f segment` processes (fragmented MP4, 60 s segments), the same job
          done by the usual tool, stopped with SIGTERM after T seconds.

Measured for the recorder's own processes only: CPU seconds (utime+stime of every thread, from
/proc/PID/stat, sampled just before SIGTERM), CPU % of one core over the whole window and over
the steady part (after every camera has a file), peak RSS (VmHWM) and PSS, bytes of MP4
written, and `ffprobe -v error` on every file after the stop (a file that prints anything or
fails is "bad"). The fakecam's CPU and the whole machine's busy share over the same window are
recorded too, so a reader can see the load. Results: a Markdown table on stdout and JSON
(--out).

Runs under the project's venv Python (stdlib only); the fakecam runs under /usr/bin/python3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the simulated camera's driver lives with the tests
from support.fakecam import FakeCam  # noqa: E402

NVR_BIN = REPO_ROOT / ".venv" / "bin" / "nvr"
SYSTEM_PYTHON = "/usr/bin/python3"
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SEGMENT_SECONDS = 60
MOUNTS = ("/file/h264", "/file/h265")

Recorder = Literal["ours", "ffmpeg"]


class BenchError(RuntimeError):
    """The benchmark could not set up or run (not a measurement result)."""


# --- /proc readers ------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of the whole thread group, in seconds (/proc/PID/stat fields 14, 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def task_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmHWM, VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"{key} missing from /proc/{pid}/status")


def pss_kib(pid: int) -> int:
    """Proportional set size now (shared pages split between their users), in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def io_wchar(pid: int) -> int:
    """Bytes the process passed to write-like system calls (files and sockets)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


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
        main_thread_cpu_s=sum(_task_cpu_s(p, p) for p in pids),
        threads=sum(task_count(p) for p in pids),
        hwm_kib=sum(status_kib(p, "VmHWM") for p in pids),
        pss_kib=sum(pss_kib(p) for p in pids),
        wchar=sum(io_wchar(p) for p in pids),
    )


def _task_cpu_s(pid: int, tid: int) -> float:
    """utime + stime of one thread (/proc/PID/task/TID/stat)."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- the simulated camera -----------------------------------------------------------------


def wait_idle(cam: FakeCam, timeout_s: float) -> None:
    """Until no client pipeline is left from the previous run (or the deadline)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and sum(m.clients for m in cam.stats().values()) > 0:
        time.sleep(0.2)


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeResult:
    files: int
    bad_files: int
    media_s: float  # sum of the files' format durations, as ffprobe reports them
    bytes: int
    complaints: list[str]  # the first few, "<file>: <first line>"


@dataclass(slots=True)
class RunResult:
    recorder: Recorder
    cameras: int
    window_s: float  # launch to SIGTERM, measured
    ready_s: float | None  # launch until every camera had a non-empty file; None: never
    cameras_ready: int
    cpu_s: float
    cpu_pct: float  # of one core, over the whole window
    main_thread_cpu_s: float  # of cpu_s, in the main threads (our asyncio loop); rest: others
    threads: int  # live threads just before SIGTERM, summed
    steady_cpu_pct: float | None  # of one core, from ready to SIGTERM
    peak_rss_mib: float  # VmHWM, summed over the recorder's processes
    pss_mib: float  # Pss just before SIGTERM, summed
    wchar_mib: float  # bytes passed to write calls (files and sockets), summed
    written_mib: float  # MP4 bytes on disk after the stop
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
    index: dict[str, object] = field(default_factory=dict)


def probe(files: Sequence[Path]) -> ProbeResult:
    bad, media_s, total = 0, 0.0, 0
    complaints: list[str] = []
    for f in files:
        total += f.stat().st_size
        cmd = ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"]
        res = subprocess.run(
            [*cmd, str(f)], check=False, capture_output=True, text=True, timeout=120
        )
        if res.returncode != 0 or res.stderr.strip():
            bad += 1
            if len(complaints) < 5:
                first = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[0]
                complaints.append(f"{f.name}: {first}")
        with contextlib.suppress(ValueError):
            media_s += float(res.stdout.strip() or 0)
    return ProbeResult(len(files), bad, media_s, total, complaints)


# --- one measured window ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """What run_window measured."""

    ready_s: float | None  # launch until ready_count() reached the camera count
    cameras_ready: int
    snap: ProcSnapshot  # the recorder's processes, just before SIGTERM
    window_s: float  # launch to SIGTERM
    steady_cpu_pct: float | None  # recorder CPU from ready to SIGTERM, % of one core
    fakecam_cpu_pct: float
    machine_busy_pct: float
    exit_codes: list[int]
    stop_s: float  # SIGTERM until every process exited


def run_window(
    launch: Callable[[], list[subprocess.Popen[bytes]]],
    ready_count: Callable[[], int],
    cameras: int,
    seconds: float,
    fakecam_pid: int,
) -> Window:
    """Launch -> (ready) -> `seconds` after launch: snapshot -> SIGTERM -> wait for exit."""
    machine0 = machine_ticks()
    fake0 = cpu_s(fakecam_pid)
    t0 = time.monotonic()
    procs = launch()
    pids = [p.pid for p in procs]
    deadline = t0 + seconds
    ready_s: float | None = None
    ready_cpu = 0.0
    n_ready = 0
    try:
        while time.monotonic() < deadline:
            if ready_s is None:
                n_ready = ready_count()
                if n_ready >= cameras:
                    ready_s = time.monotonic() - t0
                    ready_cpu = snapshot(pids).cpu_s
            if any(p.poll() is not None for p in procs):
                raise BenchError(f"a recorder exited early: {[p.returncode for p in procs]}")
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        snap = snapshot(pids)  # just before stopping: the processes are still alive
        t_stop = time.monotonic()
        fake1 = cpu_s(fakecam_pid)
        machine1 = machine_ticks()
    finally:
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
    stop_s = time.monotonic() - t_stop
    window_s = t_stop - t0
    steady = (
        (snap.cpu_s - ready_cpu) / (window_s - ready_s) * 100
        if ready_s is not None and window_s > ready_s
        else None
    )
    fake_pct = (fake1 - fake0) / window_s * 100
    busy = machine1[0] - machine0[0]
    total = machine1[1] - machine0[1]
    machine_pct = busy / total * 100 if total else 0.0
    if ready_s is None:
        n_ready = ready_count()
    codes = [p.returncode for p in procs]
    return Window(ready_s, n_ready, snap, window_s, steady, fake_pct, machine_pct, codes, stop_s)


def _nonempty_mp4_dirs(dirs: Sequence[Path]) -> int:
    return sum(1 for d in dirs if any(f.stat().st_size > 0 for f in d.rglob("*.mp4")))


def _result(
    *,
    recorder: Recorder,
    cameras: int,
    w: Window,
    probed: ProbeResult,
    loadavg: float,
    log_warnings: int,
    index: dict[str, object],
) -> RunResult:
    expected = cameras * w.window_s
    return RunResult(
        recorder=recorder,
        cameras=cameras,
        window_s=round(w.window_s, 2),
        ready_s=None if w.ready_s is None else round(w.ready_s, 2),
        cameras_ready=w.cameras_ready,
        cpu_s=round(w.snap.cpu_s, 2),
        cpu_pct=round(w.snap.cpu_s / w.window_s * 100, 1),
        main_thread_cpu_s=round(w.snap.main_thread_cpu_s, 2),
        threads=w.snap.threads,
        steady_cpu_pct=None if w.steady_cpu_pct is None else round(w.steady_cpu_pct, 1),
        peak_rss_mib=round(w.snap.hwm_kib / 1024, 1),
        pss_mib=round(w.snap.pss_kib / 1024, 1),
        wchar_mib=round(w.snap.wchar / 2**20, 1),
        written_mib=round(probed.bytes / 2**20, 1),
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
        index=index,
    )


@dataclass(frozen=True, slots=True)
class Profile:
    py_spy: str  # the py-spy binary
    out: Path  # collapsed stacks ("raw" format), one line per distinct stack with its count


def run_ours(
    cam: FakeCam,
    cameras: int,
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
    lines = [
        "[storage]",
        f'path = "{root}"',
        f"segment_seconds = {SEGMENT_SECONDS}",
        "",
        "[api]",
        f'listen = "{LOOPBACK}:0"',
    ]
    for i, cam_id in enumerate(ids):
        lines += [
            "",
            "[[cameras]]",
            f'id = "{cam_id}"',
            f'url = "{cam.url(MOUNTS[i % 2])}"',
            'transport = "tcp"',
            'audio = "off"',
        ]
    config = workdir / "nvr.toml"
    config.write_text("\n".join(lines) + "\n")
    log = workdir / "nvr.log"

    spies: list[subprocess.Popen[bytes]] = []

    def launch() -> list[subprocess.Popen[bytes]]:
        with log.open("wb") as err:
            cmd = [str(NVR_BIN), "run", "--config", str(config)]
            env = dict(os.environ)
            if nvr_src is not None:
                env["PYTHONPATH"] = os.pathsep.join(
                    p for p in (str(nvr_src), env.get("PYTHONPATH", "")) if p
                )
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
    window = run_window(
        launch, lambda: _nonempty_mp4_dirs([root / i for i in ids]), cameras, seconds, cam.pid
    )
    for spy in spies:
        spy.wait(timeout=30)
    probed = probe(sorted(root.rglob("*.mp4")))
    text = _tail(log, 10**7)
    warnings = sum(1 for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln)
    return _result(
        recorder="ours", cameras=cameras, w=window, probed=probed, loadavg=loadavg,
        log_warnings=warnings, index=index_summary(root),
    )  # fmt: skip


def index_summary(root: Path) -> dict[str, object]:
    """Runs by end reason and segments by state, from the index (read-only)."""
    db = root / "index.db"
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        runs = dict(con.execute("select end_reason, count(*) from run group by 1").fetchall())
        segs = dict(con.execute("select state, count(*) from segment group by 1").fetchall())
    finally:
        con.close()
    return {"runs_by_end_reason": {str(k): v for k, v in runs.items()}, "segments": segs}


def run_ffmpeg(
    cam: FakeCam,
    cameras: int,
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

    def launch() -> list[subprocess.Popen[bytes]]:
        procs = []
        for i, (out, log) in enumerate(zip(outs, logs, strict=True)):
            cmd = [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp",
                "-i", cam.url(MOUNTS[i % 2]), "-c", "copy",
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
    window = run_window(launch, lambda: _nonempty_mp4_dirs(outs), cameras, seconds, cam.pid)
    probed = probe(sorted(f for d in outs for f in d.glob("*.mp4")))
    warnings = sum(len(_tail(p, 10**7).splitlines()) for p in logs)
    return _result(
        recorder="ffmpeg", cameras=cameras, w=window, probed=probed, loadavg=loadavg,
        log_warnings=warnings, index={},
    )  # fmt: skip


# --- report -------------------------------------------------------------------------------


def machine_facts() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    mem_kib = status_like(Path("/proc/meminfo"), "MemTotal")

    def version(cmd: list[str]) -> str:
        try:
            res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
            out = res.stdout
        except OSError:
            return "not found"
        return out.strip().splitlines()[0] if out.strip() else ""

    venv_python = str(REPO_ROOT / ".venv" / "bin" / "python")
    git = ["git", "-C", str(REPO_ROOT)]
    return {
        "git_head": version([*git, "rev-parse", "HEAD"]),
        "src_modified_files": version([*git, "status", "--porcelain", "--", "src"]) != "",
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": version([venv_python, "-c", "import sys; print(sys.version.split()[0])"]),
        "pyav": version([venv_python, "-c", "import av; print(av.__version__)"]),
        "nvr": version([str(NVR_BIN), "--version"]),
        "ffmpeg": version(["ffmpeg", "-version"]),
        "gstreamer": version([SYSTEM_PYTHON, "-c",
                              "import gi; gi.require_version('Gst', '1.0');"
                              "from gi.repository import Gst; Gst.init(None);"
                              "print(Gst.version_string())"]),
    }  # fmt: skip


def status_like(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def markdown_table(results: Sequence[RunResult]) -> str:
    head = (
        "| N | recorder | CPU s | CPU % (1 core) | steady CPU % | peak RSS MiB | PSS MiB "
        "| MP4 MiB | files (bad) | media s (of N×T) | ready s | fakecam CPU % |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        steady = "n/a" if r.steady_cpu_pct is None else f"{r.steady_cpu_pct:.1f}"
        ready = "never" if r.ready_s is None else f"{r.ready_s:.1f}"
        rows.append(
            f"| {r.cameras} | {r.recorder} | {r.cpu_s:.1f} | {r.cpu_pct:.1f} | {steady} "
            f"| {r.peak_rss_mib:.0f} | {r.pss_mib:.0f} | {r.written_mib:.1f} "
            f"| {r.files} ({r.bad_files}) | {r.media_s:.0f} / {r.expected_media_s:.0f} "
            f"| {ready} | {r.fakecam_cpu_pct:.1f} |"
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--counts", default="4,16", help="camera counts, comma-separated")
    p.add_argument("--seconds", type=float, default=60.0, help="recording window T per run")
    p.add_argument("--recorders", default="ours,ffmpeg", help="comma-separated: ours,ffmpeg")
    p.add_argument("--out", type=Path, help="JSON results file (required unless --table-from)")
    p.add_argument(
        "--nvr-src",
        type=Path,
        default=None,
        help="run ours with this directory first on PYTHONPATH (a snapshot of src/, e.g. "
        "from `git archive`), so edits in the working tree during a run do not leak in",
    )
    p.add_argument("--table-from", type=Path, help="only print the table of a results file")
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
        saved = json.loads(args.table_from.read_text())["results"]
        print(markdown_table([RunResult(**r) for r in saved]))
        return 0
    if args.out is None:
        raise SystemExit("--out is required")
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
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
    try:
        cam.start("none", media_dir=media_dir, width=args.width, height=args.height,
                  fps=args.fps, timeout_s=300)
        for n in counts:
            for rec in recorders:
                wait_idle(cam, 30)
                workdir = base / f"{rec}-{n}"
                workdir.mkdir()
                print(f"bench: {rec} x {n} for {args.seconds:g} s ...", file=sys.stderr)
                run = run_ours if rec == "ours" else run_ffmpeg
                profile = None
                if args.py_spy is not None:
                    out = args.out.with_name(f"{args.out.stem}.py-spy-{rec}-{n}.txt")
                    profile = Profile(args.py_spy, out)
                r = run(cam, n, args.seconds, workdir, profile=profile, nvr_src=args.nvr_src)
                results.append(r)
                print(f"bench: {json.dumps(asdict(r))}", file=sys.stderr)
                if not keep:
                    shutil.rmtree(workdir)
    finally:
        cam.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": args.seconds,
        "source": f"{args.width}x{args.height}@{args.fps} looped files {', '.join(MOUNTS)}",
        "machine": facts,
        "results": [asdict(r) for r in results],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
