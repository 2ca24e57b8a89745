-- The recording index: cameras, runs and segments; API tokens and clip exports.
--
-- This file is the single source of truth for the schema; docs/storage.md explains the
-- lifecycle around it. It is executed statement by statement inside one transaction when a
-- new index is created (see index.py), so it holds only CREATE statements: no PRAGMAs, no
-- BEGIN/COMMIT. The connection pragmas (WAL, foreign_keys, synchronous) are set by index.py.
--
-- Units, everywhere below:
--   *_90k  wall times: 90 kHz units since 1970-01-01T00:00:00Z (the Unix epoch, UTC), as read
--          from the NVR's clock (CLOCK_REALTIME) and corrected per DESIGN §3;
--          durations: 90 kHz units (90000 = one second).
--   *_ns   nanoseconds.
--   bytes  byte counts.
-- No floats are stored anywhere.
--
-- Intervals are half-open: a run or segment covers [start_90k, end_90k). Two neighbours that
-- touch (one's end equals the other's start) do not overlap.
--
-- The schema version is PRAGMA user_version (read before any table is touched) and is copied
-- into meta.schema_version in the same transaction; the two must agree. This file is the
-- current version (4) for a new index; an older index is brought up to it by the steps in
-- migrations.py, in the same transaction that checks the version.

-- One row describing the index itself.
create table meta (
  -- Always 1: the table holds exactly one row.
  id integer primary key check (id = 1),

  -- Version of this schema, equal to PRAGMA user_version. An index with a newer version than
  -- the running code knows is refused.
  schema_version integer not null check (schema_version > 0),

  -- Identity of this storage: a random UUID (RFC 4122 text form, lower case) made when the
  -- index was created. The storage directory carries the same UUID in its identity file, so
  -- a swapped disk or a missing mount is noticed instead of recorded over.
  storage_uuid text not null check (
    length(storage_uuid) = 36 and storage_uuid not glob '*[^0-9a-f-]*'
  ),

  -- When the index was created, 90 kHz units since the epoch.
  created_90k integer not null
) strict;


-- A camera the recorder knows. Rows are never deleted while runs refer to them.
create table camera (
  -- Short stable name used in paths and URLs: lower-case letters, digits and '-'.
  id text primary key check (id <> '' and id not glob '*[^a-z0-9-]*'),

  -- Human-readable name for the UI.
  name text not null,

  -- Where the video comes from, with any password removed (an RTSP URL passed through
  -- redact_url, or a file path for a file source). Never holds a secret.
  source text not null,

  -- ONVIF identity, filled in once the device has been queried (GetDeviceInformation and the
  -- network interface); NULL until then. Kept so a replaced camera is noticed.
  onvif_serial text,        -- SerialNumber
  onvif_mac text,           -- MAC address of the camera's interface, lower-case hex with ':'
  onvif_manufacturer text,  -- Manufacturer
  onvif_model text          -- Model
) strict;


-- A run: one unbroken stretch of recording from one camera. Media time is continuous within
-- a run; the time between one run's end and the next run's start is a gap, and end_reason
-- says why it began.
create table run (
  -- Row id, assigned by SQLite; increases with each new run.
  id integer primary key,

  -- The camera recorded.
  camera_id text not null references camera (id),

  -- Wall time of the first frame of the run, 90 kHz units since the epoch.
  start_90k integer not null,

  -- Wall time just past the last frame of the run (its start plus its duration), 90 kHz units
  -- since the epoch. NULL while the run is still recording.
  end_90k integer check (end_90k >= start_90k),

  -- Why the run ended: a RunEndReason value (nvr/storage/model.py). NULL exactly while
  -- end_90k is NULL.
  end_reason text check (end_reason in (
    'camera_closed', 'timeout', 'error', 'shutdown', 'crash', 'clock_jump', 'disk_full',
    'writer_behind', 'parameters_changed', 'packet_loss'
  )),

  -- Free text on the end: the error message for 'error', the size of the jump for
  -- 'clock_jump', and so on. Never holds a secret. NULL when there is nothing to add.
  end_detail text,

  -- The camera's clock minus the NVR's clock, in nanoseconds, when known (ONVIF
  -- GetSystemDateAndTime or RTCP sender reports). NULL when unknown. Kept as evidence of how
  -- far the camera's own overlay time is from the recorded wall time.
  clock_offset_ns integer,

  -- Video codec of every segment in the run: 'h264' or 'h265'. A change ends the run.
  video_codec text not null check (video_codec in ('h264', 'h265')),

  -- Picture width in pixels, from the parameter sets; NULL when they could not be parsed.
  width integer check (width > 0),

  -- Picture height in pixels, from the parameter sets; NULL when they could not be parsed.
  height integer check (height > 0),

  -- Codec of the audio track in the segment files ('aac'); NULL when they have no audio.
  audio_codec text check (audio_codec <> ''),

  check ((end_90k is null) = (end_reason is null)),
  check (end_detail is null or end_reason is not null),

  -- Lets segment refer to (run id, camera id) so the two cannot disagree.
  unique (id, camera_id)
) strict;

-- Runs of a camera by start time, for time-range queries.
create index run_camera_start on run (camera_id, start_90k);

-- A camera records one run at a time: at most one open run per camera.
create unique index run_open_per_camera on run (camera_id) where end_90k is null;


-- A segment: one fragmented MP4 file holding a contiguous piece of a run. Within a run each
-- segment starts exactly where the previous one ended.
create table segment (
  -- Row id, assigned by SQLite.
  id integer primary key,

  -- The run this segment belongs to.
  run_id integer not null,

  -- The camera recorded; always the run's camera (the foreign key below checks the pair).
  -- Kept here so time-range queries per camera need no join.
  camera_id text not null,

  -- File path relative to the storage root, with '/' separators:
  -- '<camera_id>/<YYYY>/<MM>/<DD>/<HH>/<YYYYMMDDTHHMMSS.fffZ>.mp4' (UTC, from start_90k; see
  -- docs/storage.md). The row, not the name, is the truth about the file's times.
  path text not null unique check (
    path <> '' and substr(path, 1, 1) <> '/' and path not glob '*\*'
  ),

  -- Lifecycle state, a SegmentState value (nvr/storage/model.py):
  --   'open'     the file is being written (invariant I2); the facts below are NULL.
  --   'closed'   the file is complete; size and sha256 match it (invariant I1).
  --   'missing'  the file was found gone (invariant I3); the row is kept.
  --   'deleting' the file is being removed by retention (invariant I4).
  state text not null check (state in ('open', 'closed', 'missing', 'deleting')),

  -- Wall time of the segment's first frame, 90 kHz units since the epoch. Equal to the
  -- previous segment's end_90k within the same run.
  start_90k integer not null,

  -- Wall time just past the segment's last frame, 90 kHz units since the epoch. NULL while
  -- open. end_90k - start_90k is the wall duration; it is at most two hours (648000000): twice
  -- the longest segment_seconds the config allows, and time-range queries rely on the bound.
  end_90k integer check (end_90k >= start_90k and end_90k - start_90k <= 648000000),

  -- Sum of the durations of the file's video samples, 90 kHz units. May differ from the wall
  -- duration by at most 500 ppm (the wall clock is steered toward the NVR's clock). NULL while
  -- open.
  media_duration_90k integer check (media_duration_90k >= 0),

  -- Size of the file in bytes. NULL while open.
  bytes integer check (bytes >= 0),

  -- Number of video frames (samples) in the file. NULL while open.
  video_frames integer check (video_frames >= 0),

  -- SHA-256 of the whole file, 64 lower-case hex digits. NULL while open.
  sha256 text check (length(sha256) = 64 and sha256 not glob '*[^0-9a-f]*'),

  -- The fragment map: where each moof+mdat pair sits in the file and when it starts, so a time
  -- range maps to byte ranges without opening the file. A version byte, then one fixed-width
  -- little-endian record per fragment; the layout is in docs/storage.md and fragment_map.py
  -- (encode_fragments). NULL while open.
  fragments blob,

  -- When the row was inserted (the segment opened), NVR wall clock, 90 kHz units since epoch.
  created_90k integer not null,

  -- When the row was closed, NVR wall clock, 90 kHz units since the epoch. NULL while open.
  closed_90k integer,

  foreign key (run_id, camera_id) references run (id, camera_id),

  -- Facts about the file come all together, when the segment is closed (or recovered).
  check (
    (end_90k is null) = (bytes is null)
    and (end_90k is null) = (sha256 is null)
    and (end_90k is null) = (media_duration_90k is null)
    and (end_90k is null) = (video_frames is null)
    and (end_90k is null) = (fragments is null)
    and (end_90k is null) = (closed_90k is null)
  ),
  -- An open segment has no facts yet; a closed one has all of them. A missing or deleting
  -- row may have either (it may never have been closed).
  check (state <> 'open' or end_90k is null),
  check (state <> 'closed' or end_90k is not null),

  -- No two segments of a run start at the same time (see also the overlap triggers below).
  unique (run_id, start_90k)
) strict;

-- Segments of a camera by start time, for time-range queries.
create index segment_camera_start on segment (camera_id, start_90k);

-- A run writes one segment at a time: the previous one is closed before the next is opened.
create unique index segment_open_per_run on segment (run_id) where state = 'open';

-- Rows that start-up recovery and `nvr check` must look at.
create index segment_unsettled on segment (state) where state <> 'closed';

-- A segment is only added to a run that is still recording, at or after the run's start.
create trigger segment_insert_in_open_run before insert on segment
when (select r.end_90k is not null or new.start_90k < r.start_90k
      from run as r where r.id = new.run_id)
begin
  select raise(abort, 'segment must start inside a run that is still open');
end;

-- Segments of a run never overlap. An open segment counts as the single instant start_90k
-- (its end is not known yet), so the next segment may be opened only at or after the closed
-- one's end, and closing a segment past the start of a later one is refused. The start_90k
-- lower bound uses the two-hour cap on a segment's length to keep the search short.
create trigger segment_no_overlap_insert before insert on segment
when exists (
  select 1 from segment as s
  where s.run_id = new.run_id
    and s.start_90k > new.start_90k - 648000000
    and s.start_90k < coalesce(new.end_90k, new.start_90k)
    and new.start_90k < coalesce(s.end_90k, s.start_90k)
)
begin
  select raise(abort, 'segment overlaps another segment of its run');
end;

create trigger segment_no_overlap_update before update of start_90k, end_90k on segment
when exists (
  select 1 from segment as s
  where s.run_id = new.run_id
    and s.id <> new.id
    and s.start_90k > new.start_90k - 648000000
    and s.start_90k < coalesce(new.end_90k, new.start_90k)
    and new.start_90k < coalesce(s.end_90k, s.start_90k)
)
begin
  select raise(abort, 'segment overlaps another segment of its run');
end;


-- A bearer token for the HTTP API (schema version 2). Only the token's SHA-256 is kept: the
-- token itself is shown once, when it is made, and cannot be recovered from the index.
create table api_token (
  -- Row id, assigned by SQLite.
  id integer primary key,

  -- Who or what holds the token, e.g. 'ops-laptop'; names the token in the CLI, the API and
  -- the export audit trail. Kept after revocation, so a name is never reused.
  name text not null unique check (name <> ''),

  -- What the token may do: 'viewer' < 'operator' < 'admin' (nvr/api/auth.py has the routes
  -- each role reaches).
  role text not null check (role in ('viewer', 'operator', 'admin')),

  -- SHA-256 of the whole token string, 64 lower-case hex digits.
  token_sha256 text not null unique check (
    length(token_sha256) = 64 and token_sha256 not glob '*[^0-9a-f]*'
  ),

  -- When the token was made, NVR wall clock, 90 kHz units since the epoch.
  created_90k integer not null,

  -- When the token last opened a request, NVR wall clock, 90 kHz units since the epoch; NULL
  -- until first used. Refreshed at most once a minute, so requests are not writes.
  last_used_90k integer,

  -- When the token was revoked, NVR wall clock, 90 kHz units since the epoch; NULL while it is
  -- valid. A revoked row is kept as a record of who had access.
  revoked_90k integer
) strict;


-- A request to cut a time range of one camera into a single MP4 file (schema version 2).
-- Rows are kept after the job ends: they are the record of who exported what, and why.
create table export_job (
  -- Random id, 16 lower-case hex digits; also names the file.
  id text primary key check (length(id) = 16 and id not glob '*[^0-9a-f]*'),

  -- The camera whose recording is exported.
  camera_id text not null references camera (id),

  -- Start of the exported range, 90 kHz units since the epoch.
  start_90k integer not null,

  -- End of the exported range (exclusive), 90 kHz units since the epoch.
  end_90k integer not null,

  -- Why the clip was asked for (free text from the requester, e.g. an incident number).
  reason text not null check (reason <> ''),

  -- The person the export is for, as the requester gave it.
  requested_by text not null check (requested_by <> ''),

  -- Name of the API token that asked (api_token.name); NULL when made from the CLI.
  token_name text,

  -- 1 when the recording the export covers is to be kept from retention (a hold), else 0.
  hold integer not null default 1 check (hold in (0, 1)),

  -- Progress: 'queued' (waiting), 'running' (being written), 'done' (the file is complete;
  -- size_bytes and sha256 describe it), 'failed' (error says why).
  state text not null check (state in ('queued', 'running', 'done', 'failed')),

  -- Why the export failed; NULL unless state is 'failed'. Never holds a secret.
  error text,

  -- Size of the finished file in bytes; NULL unless state is 'done'.
  size_bytes integer check (size_bytes >= 0),

  -- SHA-256 of the finished file, 64 lower-case hex digits; NULL unless state is 'done'.
  sha256 text check (length(sha256) = 64 and sha256 not glob '*[^0-9a-f]*'),

  -- Path of the clip relative to the storage root, with '/' separators, e.g.
  -- 'exports/<id>.mp4'.
  file_name text not null check (
    file_name <> '' and substr(file_name, 1, 1) <> '/' and file_name not glob '*\*'
    and file_name not glob '*..*'
  ),

  -- When the export was asked for, NVR wall clock, 90 kHz units since the epoch.
  created_90k integer not null,

  -- When writing the file began, NVR wall clock, 90 kHz units since the epoch; NULL while
  -- queued (and for an export that failed before it started).
  started_90k integer,

  -- When the export ended (done or failed), NVR wall clock, 90 kHz units since the epoch;
  -- NULL until then.
  finished_90k integer,

  check (end_90k > start_90k),
  check ((state = 'failed') = (error is not null)),
  check ((state = 'done') = (size_bytes is not null)),
  check ((state = 'done') = (sha256 is not null)),
  check ((state in ('done', 'failed')) = (finished_90k is not null)),
  check (state <> 'queued' or started_90k is null),
  check (state not in ('running', 'done') or started_90k is not null)
) strict;

-- Exports newest first, for the list.
create index export_job_created on export_job (created_90k);

-- Exports still to run (after a restart: the ones to pick up again).
create index export_job_unfinished on export_job (state) where state in ('queued', 'running');


-- Evidence holds: recording an officer has put aside for a case. A segment that overlaps an
-- active hold on its camera is never deleted, by retention or by disk pressure (I5).
create table hold (
  -- 16 lower-case hex digits, random.
  id text primary key check (length(id) = 16 and id not glob '*[^0-9a-f]*'),

  -- The case the recording is kept for, as the police office names it (e.g. "2026/117").
  case_ref text not null check (case_ref <> ''),

  -- Why it is kept. Free text; never holds a secret.
  reason text not null check (reason <> ''),

  -- Start of the held range, 90 kHz units since the epoch.
  start_90k integer not null,

  -- End of the held range (exclusive), 90 kHz units since the epoch.
  end_90k integer not null,

  -- When the hold lapses by itself, 90 kHz units since the epoch; NULL: until released.
  until_90k integer,

  -- When the hold was placed, NVR wall clock, 90 kHz units since the epoch.
  created_90k integer not null,

  -- Who placed it: an API token's name, a login name from the CLI, or "export <id>".
  created_by text not null check (created_by <> ''),

  -- When it was released, NVR wall clock, 90 kHz units since the epoch; NULL while it holds.
  released_90k integer,

  -- Who released it (a token's name or a login name); NULL while it holds.
  released_by text,

  -- The export that placed this hold on its source range; NULL for a hold placed directly.
  export_id text references export_job (id),

  check (end_90k > start_90k),
  check ((released_90k is null) = (released_by is null))
) strict;

-- The cameras a hold covers (at least one).
create table hold_camera (
  -- The hold.
  hold_id text not null references hold (id),

  -- A camera whose recording in the hold's range is kept.
  camera_id text not null references camera (id),

  primary key (hold_id, camera_id)
) strict, without rowid;

-- Holds in force, for the retention pass.
create index hold_active on hold (start_90k) where released_90k is null;

-- Closed segments oldest first, per camera and across cameras, for retention.
create index segment_closed_by_start on segment (start_90k) where state = 'closed';

-- Each camera's closed segments in total (schema version 4): what a retain_bytes rule
-- measures, kept up to date by the triggers below so nobody sums millions of rows for it.
-- A camera with no closed segment may have no row (read it as zero). `nvr check` compares
-- these totals with the rows.
create table camera_usage (
  -- The camera.
  camera_id text primary key references camera (id),

  -- Sum of `bytes` over the camera's segments in state 'closed'.
  closed_bytes integer not null check (closed_bytes >= 0),

  -- Number of the camera's segments in state 'closed'.
  closed_segments integer not null check (closed_segments >= 0)
) strict, without rowid;

create trigger segment_usage_insert after insert on segment when new.state = 'closed'
begin
  insert into camera_usage (camera_id, closed_bytes, closed_segments)
  values (new.camera_id, new.bytes, 1)
  on conflict (camera_id) do update set
    closed_bytes = closed_bytes + excluded.closed_bytes,
    closed_segments = closed_segments + 1;
end;

create trigger segment_usage_update after update of state, bytes on segment
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
end;

create trigger segment_usage_delete after delete on segment when old.state = 'closed'
begin
  update camera_usage
  set closed_bytes = closed_bytes - old.bytes, closed_segments = closed_segments - 1
  where camera_id = old.camera_id;
end;
