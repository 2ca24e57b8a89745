"""The ``nvr`` command: ``run``, ``discover``, ``token``, ``check-config``. Human output by
default, JSON with --json."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from nvr import __version__
from nvr.check_cli import add_parser as add_check_parser
from nvr.clip_cli import add_parser as add_clip_parser
from nvr.config import Config, load_config
from nvr.discover_cli import add_parser as add_discover_parser
from nvr.errors import ConfigError, NvrError
from nvr.hold_cli import add_parser as add_hold_parser
from nvr.logs import setup_logging
from nvr.token_cli import add_parser as add_token_parser


def _check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(Path(args.file))
        for cam in cfg.cameras:
            cam.credentials()  # a password_file that cannot be read is a config error
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"ok": True, **_summary(cfg)}))
    else:
        print(f"{args.file}: OK")
        print(f"  storage: {cfg.storage.path} (segments of {cfg.storage.segment_seconds} s)")
        print(f"  api:     {cfg.api.listen}")
        for cam in cfg.cameras:
            state = "" if cam.enabled else " (disabled)"
            print(f"  camera {cam.id}: {cam.safe_url} via {cam.transport}, "
                  f"audio {cam.audio}{state}")
    return 0


def _summary(cfg: Config) -> dict[str, object]:
    return {
        "storage": str(cfg.storage.path),
        "segment_seconds": cfg.storage.segment_seconds,
        "api": cfg.api.listen,
        "cameras": [
            {"id": c.id, "name": c.name, "url": c.safe_url, "transport": c.transport,
             "audio": c.audio, "enabled": c.enabled}
            for c in cfg.cameras
        ],
    }


def _run(args: argparse.Namespace) -> int:
    from nvr.app import serve  # noqa: PLC0415  # keeps PyAV out of check-config's start-up

    setup_logging(args.log_level, args.log_format)
    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return uvloop.run(serve(cfg, Path(args.config)))
    except NvrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvr", description="Network video recorder")
    parser.add_argument("--version", action="version", version=f"nvr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="record every configured camera and serve the API")
    p.add_argument("--config", "-c", required=True, help="TOML configuration file")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text (journald priorities under systemd) or one JSON object a line")
    p.set_defaults(func=_run)

    add_discover_parser(sub)
    add_token_parser(sub)
    add_hold_parser(sub)
    add_clip_parser(sub)
    add_check_parser(sub)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
