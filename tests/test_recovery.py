"""Start-up recovery (I2) on real SQLite and real segment files, and the storage identity file."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from nvr import cli
from nvr.errors import StorageError
from nvr.media import VideoCodec
from nvr.storage.index import Index
from nvr.storage.model import SegmentState
from nvr.storage.recovery import IDENTITY_FILE, check_mounted, check_storage_identity, recover
from nvr.storage.segmenter import SegmentMuxer
from support.media import encode_clip
from support.recording import ffprobe_errors

FRAME_90K = 3600


def write_partial_segment(path: Path, frames: int, cut_bytes: int) -> int:
    """A segment as a crash leaves it: whole fragments, then a torn one. Returns the kept size."""
    clip = encode_clip(VideoCodec.H264, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    whole = path.with_suffix(".whole")
    muxer = SegmentMuxer(whole, clip.params)
    for i in range(frames):
        muxer.write_video(clip.units[i][0], i * FRAME_90K, FRAME_90K, clip.units[i][1])
    facts = muxer.close()
    last = facts.fragments[-1]
    data = whole.read_bytes()
    path.write_bytes(data[: last.byte_offset + cut_bytes])
    whole.unlink()
    return last.byte_offset


async def test_recovery_closes_open_segments_and_ends_runs_as_crash(tmp_path: Path) -> None:
    index = await Index.open(tmp_path / "index.db")
    await index.upsert_camera("cam", "cam", "rtsp://h/x")
    await index.upsert_camera("other", "other", "rtsp://h/y")
    run = await index.start_run("cam", 90_000_000, video_codec="h264", width=128, height=72,
                                audio_codec=None, clock_offset_ns=None)  # fmt: skip
    seg = await index.open_segment(run, "cam", "cam/a.mp4", 90_000_000)
    kept = write_partial_segment(tmp_path / "cam/a.mp4", 60, cut_bytes=100)
    lost_run = await index.start_run("other", 90_000_000, video_codec="h264", width=None,
                                     height=None, audio_codec=None,
                                     clock_offset_ns=None)  # fmt: skip
    lost = await index.open_segment(lost_run, "other", "other/gone.mp4", 90_000_000)

    report = await recover(index, tmp_path)

    assert (report.segments_recovered, report.segments_missing, report.runs_ended) == (1, 1, 2)
    rows = {s.id: s for s in await index.open_segments()}
    assert rows == {}
    [row] = [s for s in await index.segments("cam", 0, 2**62) if s.id == seg]
    assert row.state == SegmentState.CLOSED
    assert row.size_bytes == kept == (tmp_path / "cam/a.mp4").stat().st_size
    assert row.video_frames is not None and 0 < row.video_frames < 60
    assert row.end_90k == 90_000_000 + row.video_frames * FRAME_90K
    assert ffprobe_errors(tmp_path / "cam/a.mp4") == ""
    [cam_run] = await index.runs("cam", 0, 2**62)
    assert cam_run.end_reason == "crash" and cam_run.end_90k == row.end_90k
    [gone] = [s for s in await index.segments("other", 0, 2**62) if s.id == lost]
    assert gone.state == SegmentState.MISSING
    [other_run] = await index.runs("other", 0, 2**62)
    assert other_run.end_reason == "crash" and other_run.end_90k == 90_000_000
    # A second start finds nothing left to do.
    again = await recover(index, tmp_path)
    assert (again.segments_recovered, again.segments_missing, again.runs_ended) == (0, 0, 0)
    await index.close()


def test_storage_identity_ties_the_directory_to_its_index(tmp_path: Path) -> None:
    root = tmp_path / "store"
    check_storage_identity(root, "id-1", index_is_new=True)
    assert (root / IDENTITY_FILE).read_text().strip() == "id-1"
    check_storage_identity(root, "id-1", index_is_new=False)
    with pytest.raises(StorageError, match="does not match the index"):
        check_storage_identity(root, "id-2", index_is_new=False)
    # A mount that did not come up: an empty directory where the storage should be.
    shutil.rmtree(root)
    root.mkdir()
    with pytest.raises(StorageError, match="is the storage volume mounted"):
        check_storage_identity(root, "id-1", index_is_new=False)


def test_require_mount_refuses_a_plain_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is not a mounted filesystem"):
        check_mounted(tmp_path)
    with pytest.raises(StorageError, match="is not a mounted filesystem"):
        check_mounted(tmp_path / "absent")
    check_mounted(Path("/"))  # the root is always a mount point


# --- `nvr run` refuses storage that is not its index's, at once, with the reason ------------


def _run_refused(
    tmp_path: Path, storage: Path, extra: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:  # fmt: skip
    """``nvr run`` on this storage: it must return (not record) with status 1 and one line."""
    monkeypatch.setattr(cli, "setup_logging", lambda *args: None)  # keep pytest's handlers
    config = tmp_path / "nvr.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n{extra}\n[api]\n'
                      'listen = "127.0.0.1:0"\n', encoding="utf-8")  # fmt: skip
    assert cli.main(["run", "--config", str(config)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ")
    return line


async def _new_index(path: Path, root: Path | None = None) -> str:
    """An index at ``path`` (with its identity file in ``root``); returns its identity."""
    path.parent.mkdir(parents=True, exist_ok=True)
    async with await Index.open(path) as index:
        identity = await index.storage_identity()
    if root is not None:
        check_storage_identity(root, identity, index_is_new=True)
    return identity


def test_run_refuses_an_empty_directory_that_is_not_a_mount_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for storage in (tmp_path / "mnt", tmp_path / "absent"):
        if storage.name == "mnt":
            storage.mkdir()
        line = _run_refused(tmp_path, storage, "require_mount = true", monkeypatch, capsys)
        assert f"{storage} is not a mounted filesystem" in line and "mounted?" in line
        assert not storage.exists() or list(storage.iterdir()) == []  # no index, no identity


def test_run_refuses_an_empty_directory_where_its_storage_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index lives elsewhere (``storage.index``) and the disk did not mount: the empty
    mount point must not become the storage (a later start would then accept it too)."""
    index = tmp_path / "index.db"
    storage = tmp_path / "mnt"
    storage.mkdir()
    asyncio.run(_new_index(index, tmp_path / "disk"))
    for _ in range(2):
        line = _run_refused(tmp_path, storage, f'index = "{index}"', monkeypatch, capsys)
        assert f"{storage}: storage identity file {IDENTITY_FILE} is missing" in line
        assert "is the storage volume mounted?" in line and "Mount the recording disk" in line
        assert list(storage.iterdir()) == []


def test_run_refuses_the_storage_of_another_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "disk"
    theirs = asyncio.run(_new_index(storage / "index.db", storage))
    ours = asyncio.run(_new_index(tmp_path / "ours.db"))
    line = _run_refused(tmp_path, storage, f'index = "{tmp_path / "ours.db"}"', monkeypatch,
                        capsys)  # fmt: skip
    assert f"storage identity {theirs} does not match the index ({ours})" in line
    assert "another index's storage" in line and "Refusing to start" in line
    assert (storage / IDENTITY_FILE).read_text().strip() == theirs  # left as it was


def test_run_makes_no_index_on_the_storage_of_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The configured index does not exist yet, but the root is another installation's disk:
    refused before any index file is made there."""
    storage = tmp_path / "disk"
    asyncio.run(_new_index(tmp_path / "theirs.db", storage))
    fresh = storage / "index.db"
    line = _run_refused(tmp_path, storage, "", monkeypatch, capsys)
    assert "this storage belongs to an index that is not at" in line and str(fresh) in line
    assert not fresh.exists()
