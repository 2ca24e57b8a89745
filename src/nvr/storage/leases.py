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
