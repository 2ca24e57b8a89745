"""Schema upgrades: a real version 1 index (from the released schema) opens as the current one."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from nvr.errors import StorageError
from nvr.storage import migrations
from nvr.storage.index import SCHEMA_VERSION, Index
from nvr.storage.model import SegmentState

SCHEMA_V1 = Path(__file__).parent / "data" / "schema_v1.sql"
UUID = "0d6f2a4e-8c1b-4f7a-9e3d-5b2c1a0f9e8d"
SHA = "0123456789abcdef" * 4
T0 = 1_790_000_000 * 90_000


def make_v1_index(path: Path) -> None:
    """An index as nvr with schema version 1 left it: one camera, an ended run, a segment."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        pending = ""
        for line in SCHEMA_V1.read_text(encoding="utf-8").splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                conn.execute(pending)
                pending = ""
        conn.execute("INSERT INTO meta VALUES (1, 1, ?, ?)", (UUID, T0))
        conn.execute("INSERT INTO camera (id, name, source) VALUES ('gate', 'Gate', 'rtsp://h/')")
        conn.execute(
            "INSERT INTO run (id, camera_id, start_90k, video_codec) VALUES (1, 'gate', ?, 'h264')",
            (T0,),
        )
        conn.execute(
            "INSERT INTO segment (run_id, camera_id, path, state, start_90k, end_90k, "
            "media_duration_90k, bytes, video_frames, sha256, fragments, created_90k, "
            "closed_90k) VALUES (1, 'gate', 'gate/a.mp4', 'closed', ?, ?, 90000, 10, 25, ?, "
            "x'01', ?, ?)",
            (T0, T0 + 90_000, SHA, T0, T0 + 90_000),
        )
        conn.execute(
            "UPDATE run SET end_90k = ?, end_reason = 'shutdown' WHERE id = 1", (T0 + 90_000,)
        )
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")


def definitions(path: Path) -> dict[str, str]:
    """Every table and index by name, its SQL without comments and with spaces collapsed."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return {name: " ".join(re.sub(r"--[^\n]*", "", sql).split()) for name, sql in rows}


def versions(path: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(path)) as conn:
        (user_version,) = conn.execute("PRAGMA user_version").fetchone()
        (meta,) = conn.execute("SELECT schema_version FROM meta").fetchone()
    return user_version, meta


def test_the_v1_copy_is_the_released_schema() -> None:
    text = SCHEMA_V1.read_text(encoding="utf-8")
    assert "create table segment" in text and "api_token" not in text


async def test_a_v1_index_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    old, fresh = tmp_path / "old.db", tmp_path / "fresh.db"
    make_v1_index(old)
    assert versions(old) == (1, 1)
    async with await Index.open(old) as index:
        assert await index.storage_identity() == UUID
        [run] = await index.runs("gate", 0, 2**62)
        [seg] = await index.segments("gate", 0, 2**62)
        assert seg.state is SegmentState.CLOSED and seg.sha256 == SHA and run.id == seg.run_id
        assert await index.tokens() == []
        await index.add_token("ops", "operator", SHA)  # the new tables work
        # Version 4's per-camera totals start from the rows already there.
        assert seg.size_bytes and await index.closed_bytes("gate") == seg.size_bytes
    assert versions(old) == (SCHEMA_VERSION, SCHEMA_VERSION) == (4, 4)
    await (await Index.open(fresh)).close()
    assert definitions(old) == definitions(fresh)
    async with await Index.open(old) as again:  # a second open finds nothing to do
        assert [t.name for t in await again.tokens()] == ["ops"]


async def test_a_failed_upgrade_leaves_the_v1_index_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old.db"
    make_v1_index(old)
    before = definitions(old)
    broken = (*migrations.STEPS[1], "create table api_token (id integer) strict")
    monkeypatch.setattr(migrations, "STEPS", {**migrations.STEPS, 1: broken})
    with pytest.raises(StorageError, match="already exists"):
        await Index.open(old)
    assert versions(old) == (1, 1)
    assert definitions(old) == before


def test_a_missing_step_is_refused() -> None:
    assert migrations.steps(1, 2) == list(migrations.STEPS[1])
    assert migrations.steps(2, 2) == []
    with pytest.raises(StorageError, match="no upgrade from schema version 0 to 1"):
        migrations.steps(0, 2)
