"""The fragment map: a segment's moof+mdat pairs packed into one blob for its index row.

Pure functions; ``index.Index`` stores the blob in ``segment.fragments`` on close and decodes
it for ``segment_fragments``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from nvr.errors import StorageError
from nvr.storage.model import Fragment

FRAGMENT_MAP_VERSION = 1
_FRAGMENT_RECORD = struct.Struct("<IQIB")  # media_start_90k, byte_offset, size_bytes, flags
_FLAG_KEYFRAME = 0x01


def encode_fragments(frags: Sequence[Fragment]) -> bytes:
    """The fragment map blob: a version byte (1), then 17 bytes per fragment, little-endian:

    ====== ===== ==================================================================
    offset width field
    ====== ===== ==================================================================
    0      u32   media_start_90k, relative to the segment start (at most ~13 h)
    4      u64   byte_offset of the fragment's moof box in the file
    12     u32   size_bytes of moof + mdat
    16     u8    flags: bit 0 = the first video sample is a keyframe; others zero
    ====== ===== ==================================================================

    Fragments must be in file order, must not overlap, and their media starts must not
    decrease; anything else is a segmenter bug and raises ``StorageError``.
    """
    out = bytearray([FRAGMENT_MAP_VERSION])
    prev: Fragment | None = None
    for i, f in enumerate(frags):
        if not (
            0 <= f.media_start_90k < 2**32
            and 0 <= f.byte_offset < 2**64
            and 0 < f.size_bytes < 2**32
        ):
            raise StorageError(f"fragment {i} out of range for the fragment map: {f}")
        if prev is not None and (
            f.byte_offset < prev.byte_offset + prev.size_bytes
            or f.media_start_90k < prev.media_start_90k
        ):
            raise StorageError(f"fragment {i} is out of order or overlaps fragment {i - 1}: {f}")
        flags = _FLAG_KEYFRAME if f.keyframe else 0
        out += _FRAGMENT_RECORD.pack(f.media_start_90k, f.byte_offset, f.size_bytes, flags)
        prev = f
    return bytes(out)


def decode_fragments(blob: bytes) -> tuple[Fragment, ...]:
    """Inverse of ``encode_fragments``; a malformed blob raises ``StorageError``."""
    if not blob or blob[0] != FRAGMENT_MAP_VERSION:
        head = blob[:1].hex() or "empty"
        raise StorageError(f"fragment map: unknown version byte ({head})")
    body = memoryview(blob)[1:]
    if len(body) % _FRAGMENT_RECORD.size:
        raise StorageError(
            f"fragment map: {len(body)} bytes after the version byte is not a whole number "
            f"of {_FRAGMENT_RECORD.size}-byte records"
        )
    frags = []
    for media_start_90k, byte_offset, size_bytes, flags in _FRAGMENT_RECORD.iter_unpack(body):
        if flags & ~_FLAG_KEYFRAME:
            raise StorageError(f"fragment map: unknown flags {flags:#04x}")
        frags.append(Fragment(media_start_90k, byte_offset, size_bytes, bool(flags)))
    return tuple(frags)
