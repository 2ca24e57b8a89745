"""Small helpers shared by the index modules."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import aiosqlite

from nvr.errors import StorageError

_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")


def scrub(text: str) -> str:
    """Blank out URL passwords that slipped into free text."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


async def scalar(db: aiosqlite.Connection, sql: str, params: Sequence[object] = ()) -> Any:
    """The first column of the first row, or None."""
    async with db.execute(sql, params) as cur:
        row = await cur.fetchone()
    return None if row is None else row[0]


def check_rel_path(rel_path: str) -> None:
    """A stored path must be a plain relative path under the storage root."""
    p = PurePosixPath(rel_path)
    if not rel_path or p.is_absolute() or "\\" in rel_path or ".." in p.parts:
        raise StorageError(f"segment path {rel_path!r} is not a plain path under the root")
