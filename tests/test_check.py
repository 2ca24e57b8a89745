"""``nvr check`` on segment files made by the real recorder and a real SQLite index: each
kind of damage found, nothing changed without ``--repair``, and what ``--repair`` does."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from nvr.cli import main
from nvr.media import VideoCodec
from nvr.storage.check import QUARANTINE_DIR, CheckReport, ProblemKind, check_storage
from nvr.storage.index import Index
from nvr.storage.index_rows import SegmentRow
from nvr.storage.model import SegmentState
from nvr.storage.recovery import IDENTITY_FILE, check_storage_identity
from support.media import encode_clip
from support.recorded import record_clip
from support.recording import IndexReader, Segment

Outcome = tuple[int, dict[str, object]]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About four minutes of one camera (five segments), with its identity file."""
    root = tmp_path_factory.mktemp("recorded")
    clip = encode_clip(VideoCodec.H264, 125)

    async def go() -> None:
        index = await record_clip(root, clip, seconds=230)
        check_storage_identity(root, await index.storage_identity(), index_is_new=True)
        await index.close()

    asyncio.run(go())
    return root


@pytest.fixture
def store(recorded: Path, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(recorded, root)
    return root


def write_config(tmp_path: Path, storage: Path, extra: str = "") -> Path:
    config = tmp_path / "nvr.toml"
    config.write_text(
        f'[storage]\npath = "{storage}"\n{extra}\n[api]\nlisten = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    return config


def check(capsys: pytest.CaptureFixture[str], config: Path, *flags: str) -> Outcome:
    status = main(["check", "--config", str(config), "--json", *flags])
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object, no progress
    result = json.loads(out)
    assert isinstance(result, dict)
    return status, result


def found(result: dict[str, object]) -> dict[str, int]:
    counts = result["counts"]
    assert isinstance(counts, dict)
    return {kind: c["found"] for kind, c in counts.items() if c["found"]}


def problems(result: dict[str, object]) -> list[dict[str, object]]:
    listed = result["problems"]
    assert isinstance(listed, list)
    return listed


def closed(store: Path) -> list[Segment]:
    segs = IndexReader(store / "index.db").segments("gate", "closed")
    assert len(segs) >= 4
    return segs


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the root (the index included, SQLite's -wal and -shm not) with its
    SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def truncate(store: Path, seg: Segment) -> None:
    path = store / seg.path
    path.write_bytes(path.read_bytes()[:-100])


def flip_byte(store: Path, seg: Segment) -> None:
    path = store / seg.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def add_orphan(store: Path, seg: Segment) -> str:
    rel = str(Path(seg.path).with_name("20261128T999999.000Z.mp4"))
    shutil.copyfile(store / seg.path, store / rel)
    return rel


def begin_deleting(store: Path, seg: Segment) -> None:
    async def go() -> None:
        async with await Index.open(store / "index.db") as index:
            assert [s.id for s in await index.begin_deleting([seg.id])] == [seg.id]

    asyncio.run(go())


def test_a_clean_recording_checks_clean(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, store)
    segs = closed(store)
    status, result = check(capsys, config)
    assert (status, result["ok"], found(result)) == (0, True, {})
    assert result["rows_checked"] == len(segs) and result["files_seen"] == len(segs)
    assert result["files_hashed"] == 0
    status, result = check(capsys, config, "--hash")
    assert (status, found(result)) == (0, {})
    assert result["files_hashed"] == len(segs)
    assert result["bytes_hashed"] == sum(s.size_bytes or 0 for s in segs)
    # Export clips and the quarantine are not camera directories; the index is no segment.
    (store / "_exports").mkdir()
    (store / "_exports" / "abc.mp4").write_bytes(b"clip")
    (store / QUARANTINE_DIR / "20260101T000000Z" / "gate").mkdir(parents=True)
    (store / QUARANTINE_DIR / "20260101T000000Z" / "gate" / "x.mp4").write_bytes(b"old")
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems" in out and "hash differs:" in out and "not checked" in out


@pytest.mark.parametrize(
    ("damage", "flags", "kind"),
    [
        ("truncate", (), "size_differs"),
        ("truncate", ("--hash",), "size_differs"),
        ("flip", ("--hash",), "hash_differs"),
        ("orphan", (), "no_row"),
        ("part", (), "stray_file"),
        ("unlink", (), "no_file"),
        ("deleting", (), "stuck_deleting"),
    ],
)
def test_each_kind_of_damage_is_found_and_nothing_changes(
    store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    flags: tuple[str, ...],
    kind: str,
) -> None:
    seg = closed(store)[2]
    path = seg.path
    if damage == "truncate":
        truncate(store, seg)
    elif damage == "flip":
        flip_byte(store, seg)
    elif damage == "orphan":
        path = add_orphan(store, seg)
    elif damage == "part":
        path = seg.path + ".part"
        (store / path).write_bytes(b"partial")
    elif damage == "unlink":
        (store / seg.path).unlink()
    else:
        begin_deleting(store, seg)
    before = snapshot(store)
    status, result = check(capsys, write_config(tmp_path, store), *flags)
    assert (status, result["ok"], found(result)) == (1, False, {kind: 1})
    [problem] = problems(result)
    assert (problem["kind"], problem["path"], problem["repaired"]) == (kind, path, False)
    assert snapshot(store) == before  # without --repair nothing changes, the index included


def test_a_changed_byte_needs_hash(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flip_byte(store, closed(store)[1])
    config = write_config(tmp_path, store)
    assert check(capsys, config)[0] == 0  # the size is right: only the hash can tell
    status, result = check(capsys, config, "--hash")
    assert (status, found(result)) == (1, {"hash_differs": 1})
    assert "differs from what was recorded" in str(problems(result)[0]["detail"])


def test_repair_then_a_second_check_is_clean(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segs = closed(store)
    orphan = add_orphan(store, segs[0])
    orphan_bytes = (store / orphan).read_bytes()
    (store / "gate" / "leftover.part").write_bytes(b"torn")
    (store / segs[1].path).unlink()
    begin_deleting(store, segs[3])
    config = write_config(tmp_path, store)

    status, result = check(capsys, config, "--repair")
    assert (status, result["ok"]) == (0, True)
    assert found(result) == {"no_row": 1, "stray_file": 1, "no_file": 1, "stuck_deleting": 1}
    assert all(p["repaired"] for p in problems(result))
    # The orphan is moved, not deleted: byte for byte in the quarantine, under its own path.
    quarantine = result["quarantine"]
    assert isinstance(quarantine, str) and quarantine.startswith(f"{QUARANTINE_DIR}/")
    assert not (store / orphan).exists()
    assert (store / quarantine / orphan).read_bytes() == orphan_bytes
    assert (store / quarantine / "gate" / "leftover.part").read_bytes() == b"torn"
    reader = IndexReader(store / "index.db")
    assert [s.id for s in reader.segments("gate", "missing")] == [segs[1].id]
    assert segs[3].id not in {s.id for s in reader.segments("gate")}  # deletion finished
    assert not (store / segs[3].path).exists()

    status, result = check(capsys, config, "--hash")
    assert (status, found(result)) == (0, {})
    assert result["rows_by_state"] == {"closed": len(segs) - 2, "missing": 1}


def test_files_that_differ_are_reported_and_never_repaired(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segs = closed(store)
    truncate(store, segs[0])
    flip_byte(store, segs[1])
    (store / segs[2].path).unlink()
    config = write_config(tmp_path, store)
    damaged = {s.path: (store / s.path).read_bytes() for s in segs[:2]}

    status, result = check(capsys, config, "--repair", "--hash")
    assert (status, result["unrepaired"]) == (1, 2)
    assert found(result) == {"size_differs": 1, "hash_differs": 1, "no_file": 1}
    assert {p["kind"]: p["repaired"] for p in problems(result)} == {
        "size_differs": False, "hash_differs": False, "no_file": True}  # fmt: skip
    assert {s.path: (store / s.path).read_bytes() for s in segs[:2]} == damaged
    after = {s.id: s for s in IndexReader(store / "index.db").segments("gate")}
    assert [after[s.id] for s in segs[:2]] == segs[:2]  # rows untouched too

    # A file that differs stays a problem at every later check: it is evidence, not noise.
    assert main(["check", "--config", str(config), "--hash"]) == 1
    out = capsys.readouterr().out
    assert "size differs:" in out and "FAILED: 2 problems remain" in out
    assert "row with no file: 0" in out
    assert main(["check", "--config", str(config), "--repair"]) == 1
    assert "never repaired" in capsys.readouterr().out


def test_an_open_segment_is_noted_not_flagged(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a running recorder (or a crash) leaves: an open row whose file is still growing."""
    last = closed(store)[-1]
    rel = str(Path(last.path).with_name("20261128T240000.000Z.mp4"))

    async def go() -> None:
        async with await Index.open(store / "index.db") as index:
            start = (last.end_90k or 0) + 90_000
            run = await index.start_run("gate", start, video_codec="h264", width=None,
                                        height=None, audio_codec=None,
                                        clock_offset_ns=None)  # fmt: skip
            await index.open_segment(run, "gate", rel, start)

    asyncio.run(go())
    (store / rel).write_bytes((store / last.path).read_bytes()[:5000])
    status, result = check(capsys, write_config(tmp_path, store), "--hash")
    assert (status, result["ok"], found(result)) == (0, True, {"open": 1})
    assert problems(result)[0]["path"] == rel


# --- storage that is not this index's is refused (exit 2) ----------------------------------


def refused(capsys: pytest.CaptureFixture[str], config: Path) -> str:
    assert main(["check", "--config", str(config), "--repair"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: ")
    return line


def test_require_mount_refuses_a_plain_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "disk"
    storage.mkdir()
    line = refused(capsys, write_config(tmp_path, storage, "require_mount = true"))
    assert "is not a mounted filesystem" in line
    assert list(storage.iterdir()) == []


def test_an_empty_directory_where_the_storage_was_is_refused(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index lives elsewhere (storage.index); the disk did not mount."""
    index = tmp_path / "index.db"
    shutil.move(store / "index.db", index)
    empty = tmp_path / "mnt"
    empty.mkdir()
    line = refused(capsys, write_config(tmp_path, empty, f'index = "{index}"'))
    assert "is the storage volume mounted" in line and "Mount the recording disk" in line
    assert not (empty / IDENTITY_FILE).exists()


def test_the_storage_of_another_index_is_refused(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.db"

    async def make_other() -> None:
        await (await Index.open(other)).close()

    asyncio.run(make_other())
    before = snapshot(store)
    line = refused(capsys, write_config(tmp_path, store, f'index = "{other}"'))
    assert "does not match the index" in line and "another index's storage" in line
    assert snapshot(store) == before


def test_no_index_is_refused_and_none_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "new"
    storage.mkdir()
    assert "no index at" in refused(capsys, write_config(tmp_path, storage))
    assert list(storage.iterdir()) == []


async def test_beside_a_recorder_that_records_and_deletes(tmp_path: Path) -> None:
    """Checks run while segments are opened, written, closed and deleted (I4 order, from
    another connection, as retention does) find nothing wrong: only the open segment."""
    root = tmp_path / "live"
    root.mkdir()
    clip = encode_clip(VideoCodec.H264, 50)
    recording = asyncio.create_task(record_clip(root, clip, seconds=300, segment_seconds=4))
    while not (root / "index.db").exists():  # noqa: ASYNC110  (the recorder creates it first)
        await asyncio.sleep(0.01)
    deleted = 0

    async def delete_oldest(index: Index) -> None:
        nonlocal deleted
        while not recording.done():
            old = await index.oldest_segments(None, limit=2)
            for seg in await index.begin_deleting([s.id for s in old]):
                await asyncio.sleep(0.002)  # windows a check may fall into
                await asyncio.to_thread((root / seg.path).unlink, missing_ok=True)
                await asyncio.sleep(0.002)
                deleted += await index.finish_deleting([seg.id])

    reports: list[CheckReport] = []
    async with await Index.open(root / "index.db") as deleter, \
            await Index.open(root / "index.db") as checker:  # fmt: skip
        deleting = asyncio.create_task(delete_oldest(deleter))
        while not recording.done() or not reports:
            reports.append(await check_storage(checker, root, hash_files=True,
                                               deleting_grace_s=0.2))  # fmt: skip
        await deleting
        await (await recording).close()
        reports.append(await check_storage(checker, root, hash_files=True))
    assert deleted > 0 and len(reports) > 2
    assert all(set(r.found) <= {ProblemKind.OPEN} for r in reports), [
        r.problems for r in reports if not r.clean]  # fmt: skip
    assert reports[-1].found == {} and reports[-1].files_hashed == reports[-1].files_seen > 0


class _RetentionInTheGap(Index):
    """An index whose segment is deleted (I4 order) by "retention" at the worst moment for the
    check: right after the check read the rows, or right before it looks up the files it
    listed. ``finish``: remove the row too, or leave it in ``deleting``."""

    moment = "rows"
    finish = True
    done = False
    root = Path()

    async def _retention(self, seg_id: int) -> None:
        self.done = True
        [seg] = await self.begin_deleting([seg_id])
        (self.root / seg.path).unlink()
        if self.finish:
            await self.finish_deleting([seg.id])

    async def segments_after(self, after_id: int, limit: int) -> list[SegmentRow]:
        page = await super().segments_after(after_id, limit)
        if self.moment == "rows" and page and not self.done:
            await self._retention(page[1].id)
        return page

    async def segment_states(self, rel_paths: Sequence[str]) -> dict[str, SegmentState]:
        if self.moment == "tree" and not self.done:
            [seg] = [s for s in await self.segments_after(0, 10) if s.path == rel_paths[1]]
            await self._retention(seg.id)
        return await super().segment_states(rel_paths)


@pytest.mark.parametrize("repair", [False, True])
@pytest.mark.parametrize(("moment", "finish"), [("rows", True), ("rows", False), ("tree", True)])
async def test_a_deletion_in_the_gap_is_not_taken_for_damage(
    store: Path, moment: str, finish: bool, repair: bool
) -> None:
    index = await _RetentionInTheGap.open(store / "index.db")
    assert isinstance(index, _RetentionInTheGap)
    index.moment, index.finish, index.root = moment, finish, store
    async with index:
        report = await check_storage(index, store, repair=repair, deleting_grace_s=0)
        assert index.done
        assert (report.found, report.problems) == ({}, ())
        # The file was gone and its row closed when looked at: with no recheck the row would
        # have been marked missing (or the file taken for one with no row).
        states = {s.state for s in await index.segments_after(0, 100)}
    left = {SegmentState.CLOSED} | (set() if finish else {SegmentState.DELETING})
    assert states == left
