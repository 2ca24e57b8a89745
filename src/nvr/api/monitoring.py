"""``/healthz`` for supervisors and load balancers, ``/metrics`` for Prometheus.

``/healthz`` (open, no token) answers 200 while the process can record: the event loop runs
(it answers at all), the index commits a write, and the storage directory still carries the
index's identity (the disk is mounted, and it is the right disk). Otherwise 503, naming each
problem. Either way the body lists the cameras that are enabled but not streaming, the free
space and whether recording is allowed. Each probe waits at most ``timeout_s``; a probe that
hangs is waited on again, never started again beside itself (``SingleFlight``).

``/metrics`` (viewer) is the Prometheus text format; Prometheus sends the token with its
``authorization`` (or ``bearer_token_file``) scrape setting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from nvr.api.common import STATUS_KEY
from nvr.bounded import SingleFlight
from nvr.errors import StorageError
from nvr.ingest.camera import CameraState
from nvr.metrics import Metrics
from nvr.storage.index import Index
from nvr.storage.recovery import IDENTITY_FILE, read_storage_identity
from nvr.storage.retention import DiskSpace, disk_space

HEALTH_TIMEOUT_S = 2.0

METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics")


class HealthChecks:
    """The probes behind /healthz, over the index and the storage root when there are any."""

    def __init__(
        self, index: Index | None, root: Path | None, *, timeout_s: float = HEALTH_TIMEOUT_S
    ) -> None:
        self._index = index
        self._root = root
        self.timeout_s = timeout_s
        self._write = SingleFlight(index.probe_writable) if index is not None else None
        self._identity: SingleFlight[str | None] | None = None
        self._space: SingleFlight[DiskSpace] | None = None
        if root is not None:
            self._space = SingleFlight(lambda: asyncio.to_thread(disk_space, root))
        if root is not None and index is not None:
            self._identity = SingleFlight(lambda: asyncio.to_thread(read_storage_identity, root))

    async def run(self) -> tuple[list[str], int | None]:
        """The problems found (none: healthy) and the storage's free bytes (None: unknown)."""
        written, identity, (free_bytes, space) = await asyncio.gather(
            self._index_problem(), self._identity_problem(), self._free_bytes()
        )
        return [p for p in (written, identity, space) if p is not None], free_bytes

    async def _index_problem(self) -> str | None:
        if self._write is None:
            return None
        try:
            await self._write(self.timeout_s)
        except TimeoutError:
            return f"the index took no write in {self.timeout_s:g} s (locked, or its disk hangs)"
        except StorageError as exc:
            return f"the index takes no writes: {exc}"
        return None

    async def _identity_problem(self) -> str | None:
        if self._identity is None or self._index is None:
            return None
        expected = await self._index.storage_identity()
        try:
            found = await self._identity(self.timeout_s)
        except TimeoutError:
            return (f"reading the storage identity took over {self.timeout_s:g} s: is the "
                    "storage disk hanging?")  # fmt: skip
        except StorageError as exc:
            return str(exc)
        if found is None:
            return (f"the storage identity file {IDENTITY_FILE} is missing from {self._root}: "
                    "is the storage volume mounted?")  # fmt: skip
        if found != expected:
            return (f"the storage at {self._root} has identity {found}, not the index's "
                    f"{expected}: another disk is mounted there")  # fmt: skip
        return None

    async def _free_bytes(self) -> tuple[int | None, str | None]:
        if self._space is None:
            return None, None
        try:
            return (await self._space(self.timeout_s)).free_bytes, None
        except TimeoutError:
            return None, f"statvfs of the storage took over {self.timeout_s:g} s"
        except OSError as exc:
            return None, f"statvfs of the storage failed: {exc.strerror or exc}"


HEALTH_KEY: web.AppKey[HealthChecks] = web.AppKey("health")


async def healthz(request: web.Request) -> web.Response:
    problems, free_bytes = await request.app[HEALTH_KEY].run()
    metrics = request.app.get(METRICS_KEY)
    degraded = [
        {"id": s.id, "state": s.state.value, "last_error_kind": s.last_error_kind}
        for s in request.app[STATUS_KEY]()
        if s.state not in (CameraState.STREAMING, CameraState.DISABLED)
    ]
    body = {
        "status": "failing" if problems else "ok",
        "problems": problems,
        "degraded_cameras": degraded,
        "storage": {
            "free_bytes": free_bytes,
            "recording_allowed": metrics.recording_allowed if metrics is not None else None,
        },
    }
    return web.json_response(body, status=503 if problems else 200)


async def metrics_text(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    await metrics.refresh()
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_monitoring_routes(
    app: web.Application, index: Index | None, root: Path | None, metrics: Metrics | None
) -> None:
    """``/healthz`` always; ``/metrics`` with a ``metrics`` object."""
    app[HEALTH_KEY] = HealthChecks(index, root)
    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app[METRICS_KEY] = metrics
        app.router.add_get("/metrics", metrics_text)
