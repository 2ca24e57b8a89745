"""Summarise a py-spy collapsed-stack profile ("raw" format) by file and by function.

    .venv/bin/python bench/profile_summary.py docs/benchmarks-record.py-spy-ours-16.txt

Each input line is `frame;frame;...;frame COUNT`, outermost frame first, a frame being
`function (path:line)`. Prints the share of samples spent in each file and each function
itself (self time: the innermost frame) and, for functions, with their callees (inclusive).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    """A path from site-packages or src/ on, so the table stays readable."""
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _parts(frame: str) -> tuple[str, str]:
    """(function, file) of one frame, without the line number."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip(), "?"
    return m["func"], _short(m["path"])


def summarise(lines: Sequence[str], top: int) -> str:
    self_file: Counter[str] = Counter()
    self_func: Counter[str] = Counter()
    incl_func: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_parts(f) for f in stack.split(";") if f]
        if not frames:
            continue
        func, path = frames[-1]
        self_file[path] += count
        self_func[f"{func} ({path})"] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            incl_func[name] += count
    if total == 0:
        return "no samples"
    out = [f"{total} samples"]
    for title, counter in (
        ("self, by file", self_file),
        ("self, by function", self_func),
        ("inclusive, by function", incl_func),
    ):
        out += ["", f"| {title} | % of samples |", "|---|---|"]
        out += [f"| `{name}` | {n / total * 100:.1f} |" for name, n in counter.most_common(top)]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("profile", type=Path, help="py-spy record --format raw output")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    print(summarise(args.profile.read_text().splitlines(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
