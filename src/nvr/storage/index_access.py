"""The index's API side: bearer tokens (only their hashes) and export jobs.

A mixin of ``Index`` (it uses the index's connections and transaction helper), kept apart so
``index.py`` stays about recording.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

from nvr.errors import StorageError
from nvr.storage.dbutil import check_rel_path as _check_rel_path
from nvr.storage.dbutil import scalar as _scalar
from nvr.storage.dbutil import scrub as _scrub
from nvr.storage.index_rows import (
    EXPORT_COLUMNS,
    TOKEN_COLUMNS,
    ExportRow,
    TokenRow,
    export_row,
    token_row,
)

_T = TypeVar("_T")
_Db = aiosqlite.Connection
_TOUCH_EVERY_90K = 60 * 90_000  # a token's last use is written at most this often


class AccessQueries:
    if TYPE_CHECKING:

        async def _write(self, what: str, body: Callable[[_Db], Awaitable[_T]]) -> _T: ...

        async def _fetchall(self, what: str, sql: str, params: Sequence[object]) -> list[Any]: ...

        def _now_90k(self) -> int: ...

    # --- API tokens ---

    async def add_token(self, name: str, role: str, token_sha256: str) -> TokenRow:
        """Store a new token's hash under ``name``; a name already used (even by a revoked
        token) is refused."""
        created_90k = self._now_90k()

        async def body(db: _Db) -> TokenRow:
            if await _scalar(db, "SELECT 1 FROM api_token WHERE name = ?", (name,)):
                raise StorageError(f"a token named {name!r} already exists")
            cur = await db.execute(
                "INSERT INTO api_token (name, role, token_sha256, created_90k) VALUES (?, ?, ?, ?)",
                (name, role, token_sha256, created_90k),
            )
            assert cur.lastrowid is not None
            return TokenRow(cur.lastrowid, name, role, created_90k, None, None)

        return await self._write(f"add_token({name!r})", body)

    async def token_by_hash(self, token_sha256: str) -> TokenRow | None:
        """The valid (unrevoked) token with this hash, if any."""
        sql = (
            f"SELECT {TOKEN_COLUMNS} FROM api_token WHERE token_sha256 = ? AND revoked_90k IS NULL"
        )
        rows = await self._fetchall("token_by_hash", sql, (token_sha256,))
        return token_row(rows[0]) if rows else None

    async def tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, by id."""
        sql = f"SELECT {TOKEN_COLUMNS} FROM api_token ORDER BY id"
        return [token_row(r) for r in await self._fetchall("tokens", sql, ())]

    async def revoke_token(self, name: str) -> bool:
        """Revoke the valid token named ``name``; False when there is none."""
        now_90k = self._now_90k()

        async def body(db: _Db) -> bool:
            cur = await db.execute(
                "UPDATE api_token SET revoked_90k = ? WHERE name = ? AND revoked_90k IS NULL",
                (now_90k, name),
            )
            return cur.rowcount == 1

        return await self._write(f"revoke_token({name!r})", body)

    async def touch_token(self, token_id: int, now_90k: int) -> None:
        """Record a use of the token, unless one was recorded less than a minute before."""

        async def body(db: _Db) -> None:
            await db.execute(
                "UPDATE api_token SET last_used_90k = ? WHERE id = ? AND "
                "(last_used_90k IS NULL OR last_used_90k <= ?)",
                (now_90k, token_id, now_90k - _TOUCH_EVERY_90K),
            )

        await self._write(f"touch_token({token_id})", body)

    # --- exports ---

    async def create_export(
        self,
        export_id: str,
        camera_id: str,
        start_90k: int,
        end_90k: int,
        *,
        reason: str,
        requested_by: str,
        token_name: str | None,
        hold: bool,
        file_name: str,
    ) -> ExportRow:
        """Record a new export in state ``queued``."""
        _check_rel_path(file_name)
        created_90k = self._now_90k()

        async def body(db: _Db) -> ExportRow:
            await db.execute(
                "INSERT INTO export_job (id, camera_id, start_90k, end_90k, reason, "
                "requested_by, token_name, hold, state, file_name, created_90k) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (export_id, camera_id, start_90k, end_90k, reason, requested_by, token_name,
                 int(hold), file_name, created_90k),
            )  # fmt: skip
            row = await _fetch_export(db, export_id)
            assert row is not None
            return row

        return await self._write(f"create_export({export_id}, camera {camera_id})", body)

    async def export(self, export_id: str) -> ExportRow | None:
        sql = f"SELECT {EXPORT_COLUMNS} FROM export_job WHERE id = ?"
        rows = await self._fetchall(f"export({export_id})", sql, (export_id,))
        return export_row(rows[0]) if rows else None

    async def exports(self, limit: int = 100) -> list[ExportRow]:
        """The ``limit`` most recent exports, newest first."""
        sql = (
            f"SELECT {EXPORT_COLUMNS} FROM export_job ORDER BY created_90k DESC, rowid DESC LIMIT ?"
        )
        return [export_row(r) for r in await self._fetchall("exports", sql, (limit,))]

    async def unfinished_exports(self) -> list[ExportRow]:
        """Exports queued or running (after a restart: the ones to run again), oldest first."""
        sql = (
            f"SELECT {EXPORT_COLUMNS} FROM export_job WHERE state IN ('queued', 'running') "
            "ORDER BY created_90k, rowid"
        )
        return [export_row(r) for r in await self._fetchall("unfinished_exports", sql, ())]

    async def export_started(self, export_id: str) -> None:
        """Queued (or running again after a restart) to running, from now."""
        await self._advance_export(
            export_id, "export_started", "state = 'running', started_90k = :now", {}
        )

    async def export_done(self, export_id: str, size_bytes: int, sha256: str) -> None:
        """The file is complete: record its size and hash."""
        await self._advance_export(
            export_id, "export_done",
            "state = 'done', size_bytes = :size, sha256 = :sha, "
            "started_90k = coalesce(started_90k, :now), finished_90k = :now",
            {"size": size_bytes, "sha": sha256},
        )  # fmt: skip

    async def export_failed(self, export_id: str, error: str) -> None:
        """The export failed; ``error`` is scrubbed of URL passwords."""
        await self._advance_export(
            export_id, "export_failed",
            "state = 'failed', error = :error, finished_90k = :now",
            {"error": _scrub(error)},
        )  # fmt: skip

    async def _advance_export(
        self, export_id: str, what: str, assignments: str, params: dict[str, object]
    ) -> None:
        """Move an unfinished export on; one that is done or failed stays as it is."""
        values = {**params, "now": self._now_90k(), "id": export_id}

        async def body(db: _Db) -> None:
            cur = await db.execute(
                f"UPDATE export_job SET {assignments} "
                "WHERE id = :id AND state IN ('queued', 'running')",
                values,
            )
            if cur.rowcount != 1:
                state = await _scalar(db, "SELECT state FROM export_job WHERE id = ?", (export_id,))
                raise StorageError("no such export" if state is None else f"state is {state}")

        await self._write(f"{what}({export_id})", body)


async def _fetch_export(db: _Db, export_id: str) -> ExportRow | None:
    async with db.execute(
        f"SELECT {EXPORT_COLUMNS} FROM export_job WHERE id = ?", (export_id,)
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else export_row(row)
