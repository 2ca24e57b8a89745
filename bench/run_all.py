#!/usr/bin/env python3
"""Run every benchmark, one after the other: the one command for a full (or quick) set.

    bench/run_all.py --out-dir /tmp/bench [--quick] [--nvr-src SRC] [--only record,clip]

Each benchmark runs as a child process under the project's venv Python, with these settings:

| name        | full                                                 | --quick                    |
|-------------|------------------------------------------------------|----------------------------|
| record      | --counts 1,8,32,64 --seconds 60                      | --quick (N = 1, 4; 20 s)   |
| clip        | (10- and 60-minute ranges of a 62-minute recording)  | --quick                    |
| index_scale | 365 days (skipped if the temp dir lacks the space)   | --quick (30 days)          |
| soak        | --minutes 30 --cameras 16 --drop-every-s 300         | 3 minutes, 2 cameras, 60 s |

Each writes its JSON to DIR/<name>.json; what it prints on stdout (its tables) goes to the
terminal and to DIR/<name>.md; its progress on stderr goes to the terminal only. --nvr-src is
passed to each, so all of them measure the same snapshot of src/. At the end: which ones
succeeded (exit status 0) and how long each took. The exit status is 1 if any failed.

Stdlib only: it may run under any Python 3.11, the children run under .venv/bin/python.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from procfs import VENV_PYTHON, add_nvr_src_argument

BENCH = Path(__file__).resolve().parent
NAMES = ("record", "clip", "index_scale", "soak")
# bench/index_scale.py's own estimate of a full year (365 days x 16 cameras x 1440 segments x
# ~4.3 KB a row) plus the 10 GB it keeps free; below this it would shorten the span instead.
INDEX_FULL_BYTES = 365 * 16 * 1440 * 4_300 + 10 * 10**9


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    status: str  # "ok", "failed (exit N)" or "skipped: why"
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def bench_args(name: str, quick: bool) -> list[str]:
    """The options of one benchmark, --out and --nvr-src aside."""
    if quick:
        if name == "soak":
            return ["--minutes", "3", "--cameras", "2", "--drop-every-s", "60"]
        return ["--quick"]
    if name == "record":
        return ["--counts", "1,8,32,64", "--seconds", "60"]
    if name == "soak":
        return ["--minutes", "30", "--cameras", "16", "--drop-every-s", "300"]
    return []  # clip, index_scale: full by default


def skip_reason(name: str, quick: bool) -> str | None:
    """Why a benchmark cannot run here, checked before starting it (None: it can)."""
    if name == "index_scale" and not quick:
        tmp = Path(tempfile.gettempdir())  # where index_scale builds its index by default
        free = shutil.disk_usage(tmp).free
        if free < INDEX_FULL_BYTES:
            return (
                f"{tmp} has {free / 1e9:.0f} GB free, a year of index needs "
                f"{INDEX_FULL_BYTES / 1e9:.0f} GB (with index_scale's 10 GB margin)"
            )
    return None


def run_one(name: str, args: list[str], out_dir: Path) -> int:
    """Run bench/<name>.py; copy its stdout to the terminal and DIR/<name>.md as it comes."""
    cmd = [str(VENV_PYTHON), str(BENCH / f"{name}.py"), *args]
    print(f"run_all: {' '.join(cmd)}", file=sys.stderr, flush=True)
    with (out_dir / f"{name}.md").open("wb") as md:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            md.write(line)
        return proc.wait()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out-dir", type=Path, required=True, help="where <name>.json/.md go")
    p.add_argument("--quick", action="store_true", help="the small settings (minutes, not hours)")
    add_nvr_src_argument(p)
    p.add_argument(
        "--only",
        default=",".join(NAMES),
        help=f"comma-separated, run in the order given (default: all, {','.join(NAMES)})",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    out_dir: Path = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    common: list[str] = []
    if args.nvr_src is not None:
        common = ["--nvr-src", str(args.nvr_src.resolve())]
    outcomes: list[Outcome] = []
    for name in names:
        started = time.monotonic()
        reason = skip_reason(name, args.quick)
        if reason is not None:
            print(f"run_all: {name} skipped: {reason}", file=sys.stderr, flush=True)
            outcomes.append(Outcome(name, f"skipped: {reason}", 0.0))
            continue
        extra = [*bench_args(name, args.quick), "--out", str(out_dir / f"{name}.json"), *common]
        code = run_one(name, extra, out_dir)
        status = "ok" if code == 0 else f"failed (exit {code})"
        outcomes.append(Outcome(name, status, time.monotonic() - started))
    print()
    print(f"run_all ({'quick' if args.quick else 'full'}), results in {out_dir}:")
    for o in outcomes:
        took = f"{o.seconds / 60:.1f} min" if o.seconds >= 60 else f"{o.seconds:.0f} s"
        print(f"- {o.name}: {o.status}" + ("" if o.status.startswith("skipped") else f", {took}"))
    return 0 if all(o.ok or o.status.startswith("skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
