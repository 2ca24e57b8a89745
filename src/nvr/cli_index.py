"""What CLI commands that work on the index share (``nvr token``, ``nvr hold``).

The index named by the configuration is opened the way ``nvr run`` opens it (mount and
storage-identity checks included), so a command works beside a running recorder and may be the
first to create the index. A failure becomes ``Refused``: one line and an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from nvr.config import Config, load_config
from nvr.errors import ConfigError, NvrError
from nvr.storage.index import Index
from nvr.storage.recovery import open_checked_index

_T = TypeVar("_T")


class Refused(Exception):
    """A one-line reason the command did nothing, and the exit status to give."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


async def _with_index(cfg: Config, body: Callable[[Index], Awaitable[_T]]) -> _T:
    storage = cfg.storage
    index = await open_checked_index(storage.path, storage.index_path,
                                     require_mount=storage.require_mount)  # fmt: skip
    async with index:
        return await body(index)


def run_with_index(config_file: str, body: Callable[[Index], Awaitable[_T]]) -> _T:
    """Run ``body`` on the index of ``config_file``; Refused (status 2 for a configuration
    error, else 1) on any failure."""
    try:
        cfg = load_config(Path(config_file))
    except ConfigError as exc:
        raise Refused(" ".join(str(exc).split()), 2) from None
    try:
        return asyncio.run(_with_index(cfg, body))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise Refused(f"{where}{exc.strerror or exc}") from None
    except NvrError as exc:
        raise Refused(" ".join(str(exc).split())) from None


def run_refusable(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``command(args)``; a refusal is one line on stderr and its non-zero status."""
    try:
        return command(args)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
