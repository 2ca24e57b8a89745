"""Upgrades of the index schema, one step per version.

``schema.sql`` is always the newest schema and makes a new index. An index made by an older
nvr is brought up to it here instead: ``STEPS[v]`` takes a version ``v`` index to ``v + 1``.
A released step never changes (later versions add steps), so its SQL is kept here as text
rather than read from ``schema.sql``, whose tables may change again. The columns are explained
in ``schema.sql``; a test checks that an upgraded index has the same tables as a new one.

``upgrade`` runs inside the transaction in which ``Index`` read the version, so a step that
fails leaves the index as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import aiosqlite

from nvr.errors import StorageError

log = logging.getLogger(__name__)

_V1_TO_V2 = (
    # API tokens: only a hash of each token is stored.
    """create table api_token (
  id integer primary key,
  name text not null unique check (name <> ''),
  role text not null check (role in ('viewer', 'operator', 'admin')),
  token_sha256 text not null unique check (
    length(token_sha256) = 64 and token_sha256 not glob '*[^0-9a-f]*'
  ),
  created_90k integer not null,
  last_used_90k integer,
  revoked_90k integer
) strict""",
    # Clip exports and their audit trail.
    """create table export_job (
  id text primary key check (length(id) = 16 and id not glob '*[^0-9a-f]*'),
  camera_id text not null references camera (id),
  start_90k integer not null,
  end_90k integer not null,
  reason text not null check (reason <> ''),
  requested_by text not null check (requested_by <> ''),
  token_name text,
  hold integer not null default 1 check (hold in (0, 1)),
  state text not null check (state in ('queued', 'running', 'done', 'failed')),
  error text,
  size_bytes integer check (size_bytes >= 0),
  sha256 text check (length(sha256) = 64 and sha256 not glob '*[^0-9a-f]*'),
  file_name text not null check (
    file_name <> '' and substr(file_name, 1, 1) <> '/' and file_name not glob '*\\*'
    and file_name not glob '*..*'
  ),
  created_90k integer not null,
  started_90k integer,
  finished_90k integer,
  check (end_90k > start_90k),
  check ((state = 'failed') = (error is not null)),
  check ((state = 'done') = (size_bytes is not null)),
  check ((state = 'done') = (sha256 is not null)),
  check ((state in ('done', 'failed')) = (finished_90k is not null)),
  check (state <> 'queued' or started_90k is null),
  check (state not in ('running', 'done') or started_90k is not null)
) strict""",
    "create index export_job_created on export_job (created_90k)",
    "create index export_job_unfinished on export_job (state) where state in ('queued', 'running')",
)

_V2_TO_V3 = (
    # Evidence holds and the cameras they cover.
    """create table hold (
  id text primary key check (length(id) = 16 and id not glob '*[^0-9a-f]*'),
  case_ref text not null check (case_ref <> ''),
  reason text not null check (reason <> ''),
  start_90k integer not null,
  end_90k integer not null,
  until_90k integer,
  created_90k integer not null,
  created_by text not null check (created_by <> ''),
  released_90k integer,
  released_by text,
  export_id text references export_job (id),
  check (end_90k > start_90k),
  check ((released_90k is null) = (released_by is null))
) strict""",
    """create table hold_camera (
  hold_id text not null references hold (id),
  camera_id text not null references camera (id),
  primary key (hold_id, camera_id)
) strict, without rowid""",
    "create index hold_active on hold (start_90k) where released_90k is null",
    # Retention walks closed segments oldest first.
    "create index segment_closed_by_start on segment (start_90k) where state = 'closed'",
)

_V3_TO_V4 = (
    # Per-camera totals of closed segments, kept by triggers (retain_bytes reads them).
    """create table camera_usage (
  camera_id text primary key references camera (id),
  closed_bytes integer not null check (closed_bytes >= 0),
  closed_segments integer not null check (closed_segments >= 0)
) strict, without rowid""",
    """create trigger segment_usage_insert after insert on segment when new.state = 'closed'
begin
  insert into camera_usage (camera_id, closed_bytes, closed_segments)
  values (new.camera_id, new.bytes, 1)
  on conflict (camera_id) do update set
    closed_bytes = closed_bytes + excluded.closed_bytes,
    closed_segments = closed_segments + 1;
end""",
    """create trigger segment_usage_update after update of state, bytes on segment
when old.state = 'closed' or new.state = 'closed'
begin
  update camera_usage
  set closed_bytes = closed_bytes - old.bytes, closed_segments = closed_segments - 1
  where old.state = 'closed' and camera_id = old.camera_id;
  insert into camera_usage (camera_id, closed_bytes, closed_segments)
  select new.camera_id, new.bytes, 1 where new.state = 'closed'
  on conflict (camera_id) do update set
    closed_bytes = closed_bytes + excluded.closed_bytes,
    closed_segments = closed_segments + 1;
end""",
    """create trigger segment_usage_delete after delete on segment when old.state = 'closed'
begin
  update camera_usage
  set closed_bytes = closed_bytes - old.bytes, closed_segments = closed_segments - 1
  where camera_id = old.camera_id;
end""",
    # The totals of the segments already there: one pass over the table, once.
    """insert into camera_usage (camera_id, closed_bytes, closed_segments)
select camera_id, sum(bytes), count(*) from segment where state = 'closed' group by camera_id""",
)

STEPS: Mapping[int, tuple[str, ...]] = MappingProxyType(
    {1: _V1_TO_V2, 2: _V2_TO_V3, 3: _V3_TO_V4}
)
"""From-version to the statements that take an index from it to the next version."""


def steps(from_version: int, to_version: int) -> list[str]:
    """Every statement taking a ``from_version`` index to ``to_version``, in order."""
    out: list[str] = []
    for version in range(from_version, to_version):
        step = STEPS.get(version)
        if step is None:
            raise StorageError(f"no upgrade from schema version {version} to {version + 1}")
        out.extend(step)
    return out


async def upgrade(
    db: aiosqlite.Connection, db_path: Path, from_version: int, to_version: int
) -> None:
    """Apply the steps and record the new version in user_version and meta together.

    The caller holds the write transaction (``BEGIN IMMEDIATE``) and commits or rolls back.
    """
    statements = steps(from_version, to_version)
    log.info("index %s: upgrading the schema from version %d to %d",
             db_path, from_version, to_version)  # fmt: skip
    for stmt in statements:
        await db.execute(stmt)
    await db.execute("UPDATE meta SET schema_version = ? WHERE id = 1", (to_version,))
    await db.execute(f"PRAGMA user_version = {int(to_version)}")
