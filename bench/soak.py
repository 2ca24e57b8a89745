"""Soak: one `nvr run` recording N cameras for a long time, every client dropped on a schedule.

    .venv/bin/python bench/soak.py --minutes 30 --cameras 16 --drop-every-s 300 \
        --out docs/benchmarks-soak.json

One simulated camera (tools/fakecam.py via tests/support/fakecam.py, no auth) serves the
looped-file passthrough mounts /file/h264 and /file/h265, half the cameras on each. One
`nvr run` process records all of them (60 s segments, TCP, audio off) into a temporary storage
directory. Every --drop-every-s seconds the camera closes every client connection at once
(FakeCam.drop(), as a camera reboot or a network cut would).

Every --sample-every-s seconds (10) the daemon's VmRSS, open file descriptors (entries of
/proc/PID/fd), live threads and CPU seconds are read from /proc and kept as a series. At the
end: SIGTERM, then

- every second accounted for: per camera, from its first run's start to its last run's end,
  the closed segments and the gaps between runs (each gap carrying the end reason of the run
  before it) must tile the span exactly (integer 90 kHz units; touching is fine, any hole or
  overlap is reported with its size);
- `ffprobe -v error` on a random sample of closed segments (none may print anything);
- `nvr check --config ... --json` must exit 0.

Results: a Markdown report on stdout and JSON (--out). Progress goes to stderr, one line per
sample. Runs under the project's venv Python (stdlib only); the fakecam runs under
/usr/bin/python3. The /proc readers and machine facts are bench/procfs.py's; the camera set-up
is bench/record.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from procfs import (
    NVR_BIN,
    REPO_ROOT,
    add_nvr_src_argument,
    cpu_s,
    fd_count,
    machine_facts,
    nvr_env,
    status_kib,
    task_count,
)
from record import LOOPBACK, MOUNTS, SEGMENT_SECONDS, nvr_config, wait_idle

from support.fakecam import FakeCam  # importable once record has put tests/ on sys.path

HZ = 90_000


class SoakError(RuntimeError):
    """The soak could not set up or run (not a measurement result)."""


# --- samples ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # since `nvr run` was launched
    rss_kib: int  # VmRSS
    rss_anon_kib: int  # of which RssAnon (heap, stacks); the rest is mapped files and shmem
    fds: int  # entries of /proc/PID/fd
    threads: int
    cpu_s: float  # utime + stime, every thread
    fakecam_cpu_s: float
    clients: int  # client sessions the camera holds (-1: the control API did not answer)


def take_sample(t0: float, pid: int, cam: FakeCam) -> Sample:
    clients = -1
    with contextlib.suppress(Exception):
        clients = sum(m.clients for m in cam.stats().values())
    return Sample(
        t_s=round(time.monotonic() - t0, 2),
        rss_kib=status_kib(pid, "VmRSS"),
        rss_anon_kib=status_kib(pid, "RssAnon"),
        fds=fd_count(pid),
        threads=task_count(pid),
        cpu_s=cpu_s(pid),
        fakecam_cpu_s=cpu_s(cam.pid),
        clients=clients,
    )


@dataclass(frozen=True, slots=True)
class Drop:
    t_s: float  # since launch
    wall_90k: int  # wall clock at the drop, 90 kHz units since the epoch (as the index)
    dropped: int  # connections the camera closed
    before: Sample  # just before the drop


WARMUP_S = 60.0  # samples before this (connecting, first segments) are left out of the stats
SETTLE_S = 30.0  # samples this soon after a drop (reconnecting) are left out of the slope


@dataclass(frozen=True, slots=True)
class SeriesStats:
    first: float  # the first sample after the warm-up
    min: float  # from the warm-up on
    max: float
    last: float
    # Least-squares slope over the settled samples of the second half of the window: t >= T/2
    # and not within SETTLE_S after a drop (a sample taken mid-reconnect has fewer fds).
    second_half_slope_per_10min: float
    slope_samples: int


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope dy/dx; 0 with fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def series_stats(
    samples: Sequence[dict[str, float]],
    drops_t_s: Sequence[float],
    key: str,
    scale: float,
    total_s: float,
) -> SeriesStats:
    """`samples`: Sample dicts (asdict or read back from the JSON)."""
    values = [(s["t_s"], float(s[key]) * scale) for s in samples if s["t_s"] >= WARMUP_S]
    if not values:  # a run shorter than the warm-up
        values = [(s["t_s"], float(s[key]) * scale) for s in samples]
    ys = [y for _, y in values]

    def settled(t: float) -> bool:
        return not any(d <= t < d + SETTLE_S for d in drops_t_s)

    half = [(t, y) for t, y in values if t >= total_s / 2 and settled(t)]
    return SeriesStats(
        first=round(ys[0], 2),
        min=round(min(ys), 2),
        max=round(max(ys), 2),
        last=round(ys[-1], 2),
        second_half_slope_per_10min=round(slope(half) * 600, 3),
        slope_samples=len(half),
    )


def derive_series(result: dict[str, object], total_s: float) -> None:
    """(Re)compute the RSS, fd and thread statistics of `result` from its samples and drops."""
    samples = result["samples"]
    drops = result["drops"]
    assert isinstance(samples, list) and isinstance(drops, list)
    drop_ts = [float(d["t_s"]) for d in drops]
    for name, key, scale in (
        ("rss_mib", "rss_kib", 1 / 1024),
        ("fds", "fds", 1.0),
        ("threads", "threads", 1.0),
    ):
        result[name] = asdict(series_stats(samples, drop_ts, key, scale, total_s))
    result["stats_warmup_s"] = WARMUP_S
    result["stats_settle_s"] = SETTLE_S


# --- every second accounted for -----------------------------------------------------------


@dataclass(slots=True)
class CameraAccount:
    camera: str
    mount: str
    runs: int = 0
    segments: int = 0  # closed
    not_closed_segments: int = 0  # open, missing or deleting after the stop
    span_s: float = 0.0  # first run's start to last run's end
    recorded_s: float = 0.0  # sum of closed segments
    gap_s_by_reason: dict[str, float] = field(default_factory=dict)
    gaps: int = 0
    longest_gap_s: float = 0.0
    holes: list[dict[str, float]] = field(default_factory=list)  # {at_s, s}: nothing covers
    overlaps: list[dict[str, float]] = field(default_factory=list)  # {at_s, s}: covered twice
    gaps_without_reason: int = 0
    run_end_reasons: dict[str, int] = field(default_factory=dict)
    first_start_90k: int = 0
    last_end_90k: int = 0
    gap_list: list[dict[str, object]] = field(default_factory=list)  # {start_90k, s, reason}

    @property
    def ok(self) -> bool:
        return not self.holes and not self.overlaps and self.gaps_without_reason == 0


def account(db: Path, mounts: dict[str, str]) -> list[CameraAccount]:
    """Tile each camera's span with closed segments and reasoned gaps (index opened read-only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        runs = con.execute(
            "select id, camera_id, start_90k, end_90k, end_reason from run "
            "order by camera_id, start_90k, id"
        ).fetchall()
        segs = con.execute(
            "select run_id, state, start_90k, end_90k from segment order by start_90k, id"
        ).fetchall()
    finally:
        con.close()
    segs_by_run: dict[int, list[tuple[str, int, int | None]]] = defaultdict(list)
    for run_id, state, start, end in segs:
        segs_by_run[int(run_id)].append((str(state), int(start), end))
    runs_by_cam: dict[str, list[tuple[int, int, int | None, str | None]]] = defaultdict(list)
    for run_id, cam, start, end, reason in runs:
        runs_by_cam[str(cam)].append((int(run_id), int(start), end, reason))

    out: list[CameraAccount] = []
    for cam in sorted(set(mounts) | set(runs_by_cam)):
        acc = CameraAccount(camera=cam, mount=mounts.get(cam, "?"))
        out.append(acc)
        cam_runs = runs_by_cam.get(cam, [])
        acc.runs = len(cam_runs)
        if not cam_runs:
            continue
        # (start, end, kind): kind "rec" for a closed segment, otherwise the gap's reason.
        pieces: list[tuple[int, int, str]] = []
        reasons: dict[str, int] = defaultdict(int)
        for i, (run_id, _start, end, reason) in enumerate(cam_runs):
            reasons[str(reason)] += 1
            for state, s_start, s_end in segs_by_run.get(run_id, []):
                if state == "closed" and s_end is not None:
                    pieces.append((s_start, int(s_end), "rec"))
                    acc.segments += 1
                else:
                    acc.not_closed_segments += 1
            if i + 1 < len(cam_runs):
                nxt_start = cam_runs[i + 1][1]
                if end is None:  # an open run followed by another: nothing can account for it
                    acc.gaps_without_reason += 1
                    continue
                if nxt_start > int(end):
                    if reason is None:
                        acc.gaps_without_reason += 1
                    pieces.append((int(end), nxt_start, str(reason)))
                elif nxt_start < int(end):
                    acc.overlaps.append(
                        {"at_s": (nxt_start - cam_runs[0][1]) / HZ,
                         "s": (int(end) - nxt_start) / HZ}
                    )  # fmt: skip
        acc.run_end_reasons = dict(reasons)
        first = cam_runs[0][1]
        ends = [int(r[2]) for r in cam_runs if r[2] is not None]
        last = max(ends) if ends else first
        acc.first_start_90k, acc.last_end_90k = first, last
        acc.span_s = (last - first) / HZ
        cursor = first
        gap_by_reason: dict[str, int] = defaultdict(int)
        for start, end, kind in sorted(pieces):
            if start > cursor:
                acc.holes.append({"at_s": (cursor - first) / HZ, "s": (start - cursor) / HZ})
            elif start < cursor:
                acc.overlaps.append(
                    {"at_s": (start - first) / HZ, "s": (min(cursor, end) - start) / HZ}
                )
            cursor = max(cursor, end)
            if kind == "rec":
                acc.recorded_s += (end - start) / HZ
            else:
                acc.gaps += 1
                gap_by_reason[kind] += end - start
                acc.longest_gap_s = max(acc.longest_gap_s, (end - start) / HZ)
                acc.gap_list.append({"start_90k": start, "s": (end - start) / HZ, "reason": kind})
        if cursor < last:
            acc.holes.append({"at_s": (cursor - first) / HZ, "s": (last - cursor) / HZ})
        acc.recorded_s = round(acc.recorded_s, 3)
        acc.span_s = round(acc.span_s, 3)
        acc.longest_gap_s = round(acc.longest_gap_s, 3)
        acc.gap_s_by_reason = {k: round(v / HZ, 3) for k, v in sorted(gap_by_reason.items())}
    return out


def gaps_per_drop(
    accounts: Sequence[CameraAccount], drops: Sequence[Drop]
) -> list[dict[str, object]]:
    """Each gap is matched to the latest drop at or before its start (5 s of slack for the
    clock and for the run's last frame preceding the drop). Per drop: gaps, cameras, sizes."""
    per: list[dict[str, object]] = []
    matched = 0
    total = sum(len(a.gap_list) for a in accounts)
    for i, d in enumerate(drops):
        lo = d.wall_90k - 5 * HZ
        hi = drops[i + 1].wall_90k - 5 * HZ if i + 1 < len(drops) else None
        sizes: list[float] = []
        reasons: dict[str, int] = defaultdict(int)
        cams: set[str] = set()
        for a in accounts:
            for g in a.gap_list:
                start = g["start_90k"]
                assert isinstance(start, int)
                if start >= lo and (hi is None or start < hi):
                    s = g["s"]
                    assert isinstance(s, float)
                    sizes.append(s)
                    reasons[str(g["reason"])] += 1
                    cams.add(a.camera)
        matched += len(sizes)
        per.append({
            "t_s": d.t_s,
            "dropped": d.dropped,
            "gaps": len(sizes),
            "cameras_with_gap": len(cams),
            "reasons": dict(reasons),
            "gap_s_min": round(min(sizes), 3) if sizes else None,
            "gap_s_mean": round(sum(sizes) / len(sizes), 3) if sizes else None,
            "gap_s_max": round(max(sizes), 3) if sizes else None,
        })  # fmt: skip
    if total != matched:
        per.append({"t_s": None, "unmatched_gaps": total - matched})
    return per


# --- checks after the stop ----------------------------------------------------------------


def probe_sample(root: Path, db: Path, n: int, seed: int) -> dict[str, object]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        paths = [str(p) for (p,) in con.execute("select path from segment where state='closed'")]
    finally:
        con.close()
    rng = random.Random(seed)
    chosen = sorted(rng.sample(paths, min(n, len(paths))))
    bad: list[str] = []
    for rel in chosen:
        res = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
             str(root / rel)],
            check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if res.returncode != 0 or res.stderr.strip():
            first = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[0]
            bad.append(f"{rel}: {first}")
    return {"probed": len(chosen), "of_closed": len(paths), "bad": len(bad), "complaints": bad}


def nvr_check(config: Path, env: dict[str, str]) -> dict[str, object]:
    res = subprocess.run(
        [str(NVR_BIN), "check", "--config", str(config), "--json"],
        check=False, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    parsed: object = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(res.stdout)
    return {"exit_code": res.returncode, "output": parsed if parsed is not None else res.stdout,
            "stderr_tail": res.stderr[-1000:]}  # fmt: skip


def log_summary(log: Path) -> dict[str, object]:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    warn = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln]
    return {"lines": len(lines), "warnings_or_errors": len(warn), "first_warnings": warn[:5]}


# --- the run ------------------------------------------------------------------------------


def write_config(cam: FakeCam, cameras: int, root: Path, path: Path) -> dict[str, str]:
    mounts = {f"cam-{i:02d}": MOUNTS[i % 2] for i in range(cameras)}
    path.write_text(nvr_config(root, {c: cam.url(m) for c, m in mounts.items()}, f"{LOOPBACK}:0"))
    return mounts


def log(msg: str) -> None:
    print(f"soak {time.strftime('%H:%M:%S')}: {msg}", file=sys.stderr, flush=True)


def soak(args: argparse.Namespace, cam: FakeCam, workdir: Path) -> dict[str, object]:
    root = workdir / "storage"
    config = workdir / "nvr.toml"
    mounts = write_config(cam, args.cameras, root, config)
    nvr_log = workdir / "nvr.log"
    env = nvr_env(args.nvr_src)
    total_s = args.minutes * 60.0
    samples: list[Sample] = []
    drops: list[Drop] = []
    fake0 = cpu_s(cam.pid)
    t0 = time.monotonic()
    with nvr_log.open("wb") as err:
        proc = subprocess.Popen(
            [str(NVR_BIN), "run", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env,
        )  # fmt: skip
    log(f"nvr run pid {proc.pid}, {args.cameras} cameras, {args.minutes:g} min, "
        f"drops every {args.drop_every_s:g} s, workdir {workdir}")  # fmt: skip
    next_sample = 0.0
    next_drop = args.drop_every_s
    try:
        while True:
            now = time.monotonic() - t0
            if proc.poll() is not None:
                raise SoakError(f"nvr run exited early with {proc.returncode}")
            if now >= total_s:
                break
            if now >= next_drop:
                before = take_sample(t0, proc.pid, cam)
                wall = time.time_ns() * HZ // 10**9
                n = cam.drop()
                drops.append(Drop(round(now, 2), wall, n, before))
                log(f"drop {len(drops)} at {now:.0f} s: {n} connections closed "
                    f"(rss {before.rss_kib / 1024:.1f} MiB, fds {before.fds})")  # fmt: skip
                next_drop += args.drop_every_s
            if now >= next_sample:
                s = take_sample(t0, proc.pid, cam)
                samples.append(s)
                log(f"t={s.t_s:.0f}s rss={s.rss_kib / 1024:.1f}MiB fds={s.fds} "
                    f"threads={s.threads} cpu={s.cpu_s:.1f}s clients={s.clients}")  # fmt: skip
                next_sample += args.sample_every_s
            wake = min(next_sample, next_drop, total_s)
            time.sleep(max(0.05, min(1.0, wake - (time.monotonic() - t0))))
        final = take_sample(t0, proc.pid, cam)
        samples.append(final)
    finally:
        t_stop = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    stop_s = time.monotonic() - t_stop
    window_s = t_stop - t0
    log(f"stopped: exit {proc.returncode} after {stop_s:.2f} s; checking")
    raw = {"samples": [asdict(x) for x in samples], "drops": [asdict(d) for d in drops]}
    (workdir / "raw.json").write_text(json.dumps(raw) + "\n")  # if the checks below fail
    db = root / "index.db"
    accounts = account(db, mounts)
    probed = probe_sample(root, db, args.probe, args.seed)
    checked = nvr_check(config, env)
    recorded = sum(a.recorded_s for a in accounts)
    gap_total: dict[str, float] = defaultdict(float)
    for a in accounts:
        for k, v in a.gap_s_by_reason.items():
            gap_total[k] += v
    result: dict[str, object] = {
        "window_s": round(window_s, 2),
        "stop_s": round(stop_s, 2),
        "exit_code": proc.returncode,
        "cpu_s": round(final.cpu_s, 2),
        "cpu_pct_one_core": round(final.cpu_s / window_s * 100, 1),
        "fakecam_cpu_pct_one_core": round((final.fakecam_cpu_s - fake0) / window_s * 100, 1),
        "accounted": {
            "all_ok": all(a.ok for a in accounts),
            "cameras_with_runs": sum(1 for a in accounts if a.runs),
            "recorded_s": round(recorded, 1),
            "camera_seconds_of_window": round(args.cameras * window_s, 1),
            "gap_s_by_reason": {k: round(v, 3) for k, v in sorted(gap_total.items())},
            "gaps": sum(a.gaps for a in accounts),
            "longest_gap_s": max((a.longest_gap_s for a in accounts), default=0.0),
            "holes": sum(len(a.holes) for a in accounts),
            "overlaps": sum(len(a.overlaps) for a in accounts),
            "gaps_without_reason": sum(a.gaps_without_reason for a in accounts),
            "not_closed_segments": sum(a.not_closed_segments for a in accounts),
        },
        "per_drop": gaps_per_drop(accounts, drops),
        "cameras": [asdict(a) for a in accounts],
        "drops": [asdict(d) for d in drops],
        "probe": probed,
        "nvr_check": checked,
        "log": log_summary(nvr_log),
        "samples": [asdict(s) for s in samples],
    }
    derive_series(result, window_s)
    return result


# --- report -------------------------------------------------------------------------------


def _fmt_reasons(d: object) -> str:
    if not isinstance(d, dict) or not d:
        return "–"
    return ", ".join(f"{k} {v:.1f}" for k, v in d.items())


def markdown(report: dict[str, object]) -> str:
    r = report["result"]
    assert isinstance(r, dict)
    out: list[str] = []
    acc = r["accounted"]
    ends: dict[str, int] = defaultdict(int)
    for c in r["cameras"]:
        for k, v in c["run_end_reasons"].items():
            ends[k] += v
    out += [
        f"| measure (from {r['stats_warmup_s']:g} s on) | first | min | max | last "
        "| slope, 2nd half (per 10 min) |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("RSS MiB", "rss_mib"), ("open fds", "fds"), ("threads", "threads")):
        s = r[key]
        out.append(
            f"| {name} | {s['first']:g} | {s['min']:g} | {s['max']:g} | {s['last']:g} "
            f"| {s['second_half_slope_per_10min']:+.2f} |"
        )
    out += [
        "",
        f"Window {r['window_s']:.0f} s, nvr CPU {r['cpu_pct_one_core']:.1f} % of one core, "
        f"fakecam {r['fakecam_cpu_pct_one_core']:.1f} %; stop {r['stop_s']:.2f} s, exit "
        f"{r['exit_code']}. Accounted: {acc['recorded_s']:.0f} s recorded of "
        f"{acc['camera_seconds_of_window']:.0f} camera-seconds in the window; gaps "
        f"{acc['gaps']} ({_fmt_reasons(acc['gap_s_by_reason'])} s), longest "
        f"{acc['longest_gap_s']:.2f} s; holes {acc['holes']}, overlaps {acc['overlaps']}, "
        f"gaps without reason {acc['gaps_without_reason']}, segments not closed "
        f"{acc['not_closed_segments']}. ffprobe: {r['probe']['bad']} bad of "
        f"{r['probe']['probed']} probed. `nvr check --json` exit {r['nvr_check']['exit_code']}.",
        "",
        "Runs by end reason: "
        + ", ".join(f"{k} {v}" for k, v in sorted(ends.items()))
        + f". Daemon log: {r['log'].get('warnings_or_errors', '?')} WARNING/ERROR lines.",
        "",
        "| camera | mount | runs | segments | span s | recorded s | gap s by reason "
        "| longest gap s | holes | overlaps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cameras"]:
        out.append(
            f"| {c['camera']} | {c['mount']} | {c['runs']} | {c['segments']} "
            f"| {c['span_s']:.1f} | {c['recorded_s']:.1f} | {_fmt_reasons(c['gap_s_by_reason'])} "
            f"| {c['longest_gap_s']:.2f} | {len(c['holes'])} | {len(c['overlaps'])} |"
        )
    out += [
        "",
        "| drop at s | closed | gaps | cameras | reasons | gap s min / mean / max | RSS MiB before "
        "| fds before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, p in zip(r["drops"], r["per_drop"], strict=False):
        b = d["before"]
        sizes = (
            "–" if p["gaps"] == 0
            else f"{p['gap_s_min']:.2f} / {p['gap_s_mean']:.2f} / {p['gap_s_max']:.2f}"
        )  # fmt: skip
        reasons = ", ".join(f"{k} {v}" for k, v in p["reasons"].items()) or "–"
        out.append(
            f"| {d['t_s']:.0f} | {d['dropped']} | {p['gaps']} | {p['cameras_with_gap']} "
            f"| {reasons} | {sizes} | {b['rss_kib'] / 1024:.1f} | {b['fds']} |"
        )
    return "\n".join(out)


def over_time(report: dict[str, object], every_s: float) -> str:
    """RSS / fds / threads, one row per `every_s`: the settled sample nearest each mark (not
    in the warm-up, not within SETTLE_S after a drop), and the last sample."""
    r = report["result"]
    assert isinstance(r, dict)
    samples = r["samples"]
    drop_ts = [float(d["t_s"]) for d in r["drops"]]
    settled = [
        s
        for s in samples
        if s["t_s"] >= WARMUP_S and not any(d <= s["t_s"] < d + SETTLE_S for d in drop_ts)
    ] or samples
    rows = ["| t min | RSS MiB | open fds | threads | nvr CPU s |", "|---|---|---|---|---|"]
    chosen: list[dict[str, float]] = []
    mark = 0.0
    while mark <= samples[-1]["t_s"] + 1:
        s = min(settled, key=lambda x: (abs(x["t_s"] - mark), x["t_s"]))
        if s not in chosen:
            chosen.append(s)
        mark += every_s
    if samples[-1] not in chosen:
        chosen.append(samples[-1])
    for s in chosen:
        rows.append(
            f"| {s['t_s'] / 60:.1f} | {s['rss_kib'] / 1024:.1f} | {s['fds']} | {s['threads']} "
            f"| {s['cpu_s']:.1f} |"
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--cameras", type=int, default=16)
    p.add_argument("--drop-every-s", type=float, default=300.0)
    p.add_argument("--sample-every-s", type=float, default=10.0)
    p.add_argument("--probe", type=int, default=20, help="segments to ffprobe, chosen at random")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, help="JSON results file")
    p.add_argument("--table-from", type=Path, help="only print the report of a results file")
    p.add_argument("--table-every-s", type=float, default=300.0, help="rows of the time table")
    add_nvr_src_argument(p)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--media-dir", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=None, help="keep recordings here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_from is not None:
        saved = json.loads(args.table_from.read_text())
        res = saved["result"]
        derive_series(res, float(res["window_s"]))  # with this version's warm-up and settling
        if args.out is not None:
            args.out.write_text(json.dumps(saved, indent=2) + "\n")
        print(markdown(saved))
        print()
        print(over_time(saved, args.table_every_s))
        return 0
    if shutil.which("ffprobe") is None:
        raise SystemExit("ffprobe not found")
    media_dir = args.media_dir or Path(f"/tmp/nvr-bench-media-{args.width}x{args.height}")
    keep = args.workdir is not None
    workdir = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="nvr-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    facts["nvr_src"] = str(args.nvr_src) if args.nvr_src is not None else "installed (src/)"
    facts["loadavg_1m_before"] = os.getloadavg()[0]
    log(json.dumps(facts))
    cam = FakeCam()
    try:
        cam.start("none", media_dir=media_dir, width=args.width, height=args.height,
                  fps=args.fps, timeout_s=300)  # fmt: skip
        wait_idle(cam, 10)
        result = soak(args, cam, workdir)
    finally:
        cam.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report: dict[str, object] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "minutes": args.minutes,
        "cameras": args.cameras,
        "drop_every_s": args.drop_every_s,
        "sample_every_s": args.sample_every_s,
        "segment_seconds": SEGMENT_SECONDS,
        "source": f"{args.width}x{args.height}@{args.fps} looped files {', '.join(MOUNTS)}",
        "repo": str(REPO_ROOT),
        "machine": facts,
        "result": result,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print()
    print(over_time(report, args.table_every_s))
    acc = result["accounted"]
    assert isinstance(acc, dict)
    probe = result["probe"]
    check = result["nvr_check"]
    assert isinstance(probe, dict) and isinstance(check, dict)
    ok = acc["all_ok"] and probe["bad"] == 0 and check["exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
