"""The fragment map blob: round trips, the fixed layout, and what it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvr.errors import StorageError
from nvr.storage.fragment_map import decode_fragments, encode_fragments
from nvr.storage.model import Fragment

S = 90_000  # one second in 90 kHz units


@st.composite
def fragment_lists(draw: st.DrawFn) -> list[Fragment]:
    steps = draw(
        st.lists(
            st.tuples(
                st.integers(0, 2**20),
                st.integers(1, 2**32 - 1),
                st.integers(0, 10 * S),
                st.booleans(),
            ),
            max_size=40,
        )
    )
    frags, offset, media = [], draw(st.integers(0, 2**40)), 0
    for pad, size, advance, key in steps:
        media = min(media + advance, 2**32 - 1)
        offset += pad
        frags.append(Fragment(media, offset, size, key))
        offset += size
    return frags


@given(fragment_lists())
def test_fragment_map_round_trips(frags: list[Fragment]) -> None:
    blob = encode_fragments(frags)
    assert len(blob) == 1 + 17 * len(frags)
    assert decode_fragments(blob) == tuple(frags)


def test_fragment_map_layout_is_fixed() -> None:
    blob = encode_fragments([Fragment(3600, 0x1_0000_0000, 70_000, True)])
    assert blob == bytes.fromhex("01100e000000000000010000007011010001")


@pytest.mark.parametrize(
    ("frags", "message"),
    [
        ([Fragment(-1, 0, 1, True)], "out of range"),
        ([Fragment(0, 0, 0, True)], "out of range"),
        ([Fragment(2**32, 0, 1, True)], "out of range"),
        ([Fragment(0, 0, 10, True), Fragment(1, 5, 10, False)], "overlaps fragment 0"),
        ([Fragment(9, 0, 10, True), Fragment(1, 10, 10, False)], "out of order"),
    ],
)
def test_fragment_map_rejects_what_a_segmenter_should_never_send(
    frags: list[Fragment], message: str
) -> None:
    with pytest.raises(StorageError, match=message):
        encode_fragments(frags)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "unknown version"),
        (b"\x02", "unknown version"),
        (b"\x01" + bytes(16), "not a whole number"),
        (b"\x01" + bytes(16) + b"\x02", "unknown flags"),
    ],
)
def test_fragment_map_rejects_corrupt_blobs(blob: bytes, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        decode_fragments(blob)
