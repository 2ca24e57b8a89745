"""Making a directory entry durable: the fsync the storage invariants rely on.

A new file (a segment, the index database) survives a crash only once its directory is
fsynced too; see the lifecycle steps in ``docs/storage.md``.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """fsync ``directory`` itself, so the entries created in it are on disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
