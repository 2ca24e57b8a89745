"""Reader leases: segments a playback or an export is reading are not unlinked (DESIGN I6).

A reader takes a lease on the segment ids it will read for as long as it reads them; whatever
deletes segments (retention, disk pressure) asks ``in_use`` and skips a leased one until the
lease is returned. In-process only: the readers and the deleter share one event loop.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator


class ReaderLeases:
    def __init__(self) -> None:
        self._held: Counter[int] = Counter()
        self._ranges: Counter[tuple[str, int, int]] = Counter()

    @contextlib.contextmanager
    def hold_range(self, camera_id: str, start_90k: int, end_90k: int) -> Iterator[None]:
        """Keep every segment of ``camera_id`` overlapping ``[start, end)`` from deletion.

        Taken before a reader looks the segments up, so there is no moment between finding
        a segment and leasing it."""
        key = (camera_id, start_90k, end_90k)
        self._ranges[key] += 1
        try:
            yield
        finally:
            self._ranges[key] -= 1
            if self._ranges[key] <= 0:
                del self._ranges[key]

    def range_in_use(self, camera_id: str, start_90k: int, end_90k: int) -> bool:
        return any(cam == camera_id and s < end_90k and e > start_90k
                   for cam, s, e in self._ranges)  # fmt: skip

    @contextlib.contextmanager
    def hold(self, segment_ids: Iterable[int]) -> Iterator[None]:
        """Keep ``segment_ids`` from deletion inside the ``with`` block."""
        ids = list(segment_ids)
        self._held.update(ids)
        try:
            yield
        finally:
            self._held.subtract(ids)
            for i in ids:
                if self._held[i] <= 0:
                    del self._held[i]

    def in_use(self, segment_id: int) -> bool:
        return self._held[segment_id] > 0

    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def held_ranges(self) -> list[tuple[str, int, int]]:
        return list(self._ranges)
