"""Segment facts from file bytes, and crash recovery of hand-built files.

Recovery of files written by the real muxer, cut at many points and after SIGKILL, is in
``test_segmenter.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nvr.errors import StorageError
from nvr.storage.model import Fragment
from nvr.storage.mp4box import scan
from nvr.storage.recovery_file import fragment_facts, recover_segment_file, sha256_file
from test_mp4box import FTYP, NON_SYNC, fragment, moov, small_file


def test_facts_of_a_whole_file() -> None:
    data, ends = small_file()
    scanner = scan(data)
    assert scanner.init is not None
    index, frames, duration_90k = fragment_facts(scanner.init, scanner.fragments)
    assert index == (
        Fragment(0, ends[0], ends[1] - ends[0], True),
        Fragment(10200, ends[1], ends[2] - ends[1], False),
        Fragment(17400, ends[2], ends[3] - ends[2], True),
    )
    assert (frames, duration_90k) == (7, 10200 + 7200 + 7200)


def test_a_fragment_without_video_joins_the_one_before() -> None:
    data, ends = small_file()
    tail = fragment(len(data), 4, 0, [], first_flags=None, audio=True)
    scanner = scan(data + tail)
    assert scanner.init is not None and scanner.error is None
    index, frames, _ = fragment_facts(scanner.init, scanner.fragments)
    assert len(index) == 3 and frames == 7
    assert index[-1] == Fragment(17400, ends[2], len(data) + len(tail) - ends[2], True)


def test_first_fragment_without_video_is_refused() -> None:
    base = FTYP + moov()
    scanner = scan(base + fragment(len(base), 1, 0, [], first_flags=None))
    assert scanner.init is not None
    with pytest.raises(StorageError, match="has no video"):
        fragment_facts(scanner.init, scanner.fragments)


def test_recover_cuts_a_torn_fragment(tmp_path: Path) -> None:
    data, ends = small_file()
    path = tmp_path / "seg.mp4"
    path.write_bytes(data[: ends[3] - 3])
    facts = recover_segment_file(path)
    assert facts is not None
    assert facts.size_bytes == ends[2] == path.stat().st_size
    assert facts.sha256 == sha256_file(path)
    assert (facts.video_frames, facts.media_duration_90k) == (5, 17400)
    assert [f.byte_offset for f in facts.fragments] == ends[:2]


def test_recover_keeps_a_file_with_only_its_header(tmp_path: Path) -> None:
    base = FTYP + moov(trex_flags=NON_SYNC)
    path = tmp_path / "seg.mp4"
    path.write_bytes(base + b"\0\0\0")
    facts = recover_segment_file(path)
    assert facts is not None
    assert (facts.size_bytes, facts.video_frames, facts.fragments) == (len(base), 0, ())


def test_recover_gives_up_without_a_whole_moov(tmp_path: Path) -> None:
    path = tmp_path / "seg.mp4"
    data = FTYP + moov()
    path.write_bytes(data[:-1])
    assert recover_segment_file(path) is None
    assert path.read_bytes() == data[:-1]
    path.write_bytes(b"")
    assert recover_segment_file(path) is None


def test_recover_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot recover"):
        recover_segment_file(tmp_path / "nope.mp4")
