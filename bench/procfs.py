"""What the bench scripts share: /proc readers, the machine's facts, and the --nvr-src helpers.

The /proc readers measure other processes (a recorder under test, the simulated camera) from
the outside: CPU time from /proc/PID/stat, memory from /proc/PID/status and smaps_rollup,
write calls from /proc/PID/io, descriptors from /proc/PID/fd, and the whole machine's busy
share from /proc/stat. Each reads the file once, at the moment of the call; the callers decide
when to sample. Linux only.

``--nvr-src DIR`` (a snapshot of src/, e.g. from ``git archive``) makes a benchmark measure
that snapshot instead of the working tree, which may change during a long run:
``nvr_src_first_on_path`` for the scripts that import nvr, ``nvr_env`` for the ones that start
``nvr`` as a child process.

Stdlib only; imported by the scripts in this directory (which Python puts on sys.path when it
runs one of them).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
NVR_BIN = REPO_ROOT / ".venv" / "bin" / "nvr"
SYSTEM_PYTHON = "/usr/bin/python3"  # the simulated camera needs the Debian PyGObject
CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcReadError(RuntimeError):
    """A field the kernel always provides was missing from a /proc file."""


# --- one process --------------------------------------------------------------------------


def _stat_cpu_s(stat: str) -> float:
    """utime + stime (fields 14 and 15) of a /proc stat line, in seconds."""
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the whole thread group, exited threads included."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())


def task_cpu_s(pid: int, tid: int) -> float:
    """CPU seconds of one thread (/proc/PID/task/TID/stat)."""
    return _stat_cpu_s(Path(f"/proc/{pid}/task/{tid}/stat").read_text())


def task_count(pid: int) -> int:
    """Live threads now."""
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_count(pid: int) -> int:
    """Open file descriptors now (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _kib_field(path: Path, key: str) -> int | None:
    """The number after `key:` in a `key: value kB` file, or None if the key is absent."""
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmHWM: peak RSS, VmRSS, RssAnon, ...), in KiB."""
    value = _kib_field(Path(f"/proc/{pid}/status"), key)
    if value is None:
        raise ProcReadError(f"{key} missing from /proc/{pid}/status")
    return value


def pss_kib(pid: int) -> int:
    """Proportional set size now (each shared page split between its users), in KiB."""
    return _kib_field(Path(f"/proc/{pid}/smaps_rollup"), "Pss") or 0


def io_wchar(pid: int) -> int:
    """Bytes the process has passed to write-like system calls (files and sockets alike)."""
    return _kib_field(Path(f"/proc/{pid}/io"), "wchar") or 0  # a byte count, same layout


# --- the machine --------------------------------------------------------------------------


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def meminfo_kib(key: str) -> int:
    """A field of /proc/meminfo (MemTotal, MemAvailable, ...), in KiB; 0 if absent."""
    return _kib_field(Path("/proc/meminfo"), key) or 0


def first_line(cmd: list[str]) -> str:
    """The first line a command prints on stdout ("not found" if it cannot run)."""
    try:
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    except OSError:
        return "not found"
    return (res.stdout.strip().splitlines() or [""])[0]


def host_facts() -> dict[str, object]:
    """What every results file records: the commit, whether src/ was edited, the machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    git = ["git", "-C", str(REPO_ROOT)]
    return {
        "git_head": first_line([*git, "rev-parse", "HEAD"]),
        "src_modified_files": first_line([*git, "status", "--porcelain", "--", "src"]) != "",
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(meminfo_kib("MemTotal") / 2**20, 1),
        "kernel": platform.release(),
    }


def machine_facts() -> dict[str, object]:
    """The machine and the software versions a result depends on (for the results file)."""
    python = str(VENV_PYTHON)
    return host_facts() | {
        "python": first_line([python, "-c", "import sys; print(sys.version.split()[0])"]),
        "pyav": first_line([python, "-c", "import av; print(av.__version__)"]),
        "nvr": first_line([str(NVR_BIN), "--version"]),
        "ffmpeg": first_line(["ffmpeg", "-version"]),
        "gstreamer": first_line([SYSTEM_PYTHON, "-c",
                                 "import gi; gi.require_version('Gst', '1.0');"
                                 "from gi.repository import Gst; Gst.init(None);"
                                 "print(Gst.version_string())"]),
    }  # fmt: skip


# --- which nvr is measured ----------------------------------------------------------------


def nvr_src_first_on_path() -> Path | None:
    """Read --nvr-src from the command line ahead of the script's own parser and put that
    directory first on sys.path, so the `nvr` imported afterwards is the snapshot. Call it
    before importing nvr; the script's parser must accept --nvr-src too."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--nvr-src", type=Path)
    src: Path | None = pre.parse_known_args()[0].nvr_src
    if src is not None:
        sys.path.insert(0, str(src.resolve()))
    return src


def add_nvr_src_argument(parser: argparse.ArgumentParser) -> None:
    """The --nvr-src option every benchmark takes (see ``nvr_src_first_on_path``)."""
    parser.add_argument(
        "--nvr-src",
        type=Path,
        help="measure the nvr in this directory (a snapshot of src/, e.g. from `git archive`), "
        "so edits to the working tree during a run do not leak in",
    )


def nvr_env(nvr_src: Path | None) -> dict[str, str]:
    """This process's environment, with `nvr_src` (if any) first on PYTHONPATH: for starting
    `nvr` as a child that runs the snapshot."""
    env = dict(os.environ)
    if nvr_src is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(nvr_src.resolve()), env.get("PYTHONPATH", "")) if p
        )
    return env
