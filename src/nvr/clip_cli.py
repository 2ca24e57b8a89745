"""``nvr clip``: write any recorded range to an MP4 and its manifest, from the command line.

The same clip and manifest as an API export (``nvr.exports.write_export``), written where the
officer asks. It reads the index and the segments directly, so it works with or without a
running recorder; the manifest goes beside the clip as ``<name>.json``. Progress goes to
stderr; the result to stdout, as text or, with ``--json``, as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from pathlib import Path

from nvr.api.times import TimeFormatError, parse_rfc3339
from nvr.config import Config, load_config
from nvr.errors import ConfigError, NvrError, StorageError
from nvr.exports import manifest_name, write_export
from nvr.ingest.timeline import ns_to_90k
from nvr.storage.clip import plan_clip
from nvr.storage.export_file import utc_text
from nvr.storage.index import Index
from nvr.storage.recovery import check_mounted


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("clip", help="write a recorded range to an MP4 with a JSON manifest")
    p.add_argument("--config", "-c", required=True, help="TOML configuration file")
    p.add_argument("--camera", required=True, help="camera id")
    p.add_argument("--start", required=True,
                   help="RFC 3339 with an offset, e.g. 2026-11-29T03:00:00+07:00")  # fmt: skip
    p.add_argument("--end", required=True, help="RFC 3339 with offset")
    p.add_argument("-o", "--output", required=True, help="the MP4 to write (must not exist)")
    p.add_argument("--reason", default="", help="why the clip is made (kept in the manifest)")
    p.add_argument("--requested-by", default=None, help="who asked (default: the login name)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_clip)


class _Progress:
    """A line on stderr, rewritten at most a few times a second (only on a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.shown_at = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.tty and (now - self.shown_at > 0.2 or done == self.total):
            self.shown_at = now
            pct = 100 * done // max(1, self.total)
            print(f"\rwriting {done / 1e6:.1f} of {self.total / 1e6:.1f} MB ({pct}%)",
                  end="\n" if done == self.total else "", file=sys.stderr, flush=True)  # fmt: skip


def _checked(args: argparse.Namespace) -> tuple[Config, Path]:
    cfg = load_config(Path(args.config))
    if cfg.storage.require_mount:
        check_mounted(cfg.storage.path)
    if not cfg.storage.index_path.exists():
        raise StorageError(f"no index at {cfg.storage.index_path}: nothing was recorded there")
    out = Path(args.output)
    if out.exists():
        raise StorageError(f"{out} exists; choose another name (an export never overwrites)")
    return cfg, out


async def _clip(
    args: argparse.Namespace, cfg: Config, out: Path, start_90k: int, end_90k: int
) -> dict[str, object]:
    async with await Index.open(cfg.storage.index_path) as index:
        clip = await plan_clip(index, cfg.storage.path, args.camera, start_90k, end_90k)
        request = {"reason": args.reason, "requested_by": args.requested_by or getpass.getuser(),
                   "token_name": None, "hold": False, "via": "nvr clip"}  # fmt: skip
        size, sha = await write_export(
            index, cfg.storage.path, clip, out, export_id="cli", request=request,
            created_90k=ns_to_90k(time.time_ns()), on_progress=_Progress(clip.size_bytes),
        )  # fmt: skip
    return {
        "file": str(out), "manifest": str(out.with_name(manifest_name(out.name))), "bytes": size,
        "sha256": sha, "delivered_start": utc_text(clip.delivered_start_90k),
        "delivered_end": utc_text(clip.delivered_end_90k),
        "gaps": [{"start": utc_text(g.start_90k), "end": utc_text(g.end_90k),
                  "reason": g.reason} for g in clip.gaps],
    }  # fmt: skip


def run_clip(args: argparse.Namespace) -> int:
    def fail(message: str, status: int = 1) -> int:
        if args.json:
            print(json.dumps({"ok": False, "error": message}))
        else:
            print(f"error: {message}", file=sys.stderr)
        return status

    try:
        start_90k, _ = parse_rfc3339(args.start, "--start")
        end_90k, _ = parse_rfc3339(args.end, "--end")
    except TimeFormatError as exc:
        return fail(str(exc), 2)
    if end_90k <= start_90k:
        return fail("--end must be after --start", 2)
    try:
        cfg, out = _checked(args)
        result = asyncio.run(_clip(args, cfg, out, start_90k, end_90k))
    except ConfigError as exc:
        return fail(" ".join(str(exc).split()), 2)
    except NvrError as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps({"ok": True, **result}))
        return 0
    print(f"wrote {result['file']} ({result['bytes']} bytes)")
    print(f"sha256 {result['sha256']}")
    print(f"manifest {result['manifest']}")
    print(f"shows {result['delivered_start']} to {result['delivered_end']}")
    gaps = result["gaps"]
    assert isinstance(gaps, list)
    for g in gaps:
        print(f"gap {g['start']} to {g['end']} ({g['reason']})")
    return 0
