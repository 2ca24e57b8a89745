"""Export jobs over real HTTP, their manifests, restarts, the concurrency limit and ``nvr clip``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvr import __version__, exports
from nvr.api.server import make_app
from nvr.api.times import format_rfc3339
from nvr.cli import main
from nvr.exports import ExportManager, ExportRequest
from nvr.ingest.camera import CameraState, CameraStatus
from nvr.media import VideoCodec
from nvr.storage.index import Index
from nvr.storage.index_rows import ExportState
from nvr.storage.leases import ReaderLeases
from nvr.storage.model import RunEndReason
from support.api import auth_headers
from support.recorded import Recorded, make_recording
from support.recording import IndexReader, ffprobe_errors, mp4_video_units

SECOND = 90_000
STATUS = CameraStatus(id="gate", state=CameraState.STREAMING, failures=0, last_error=None,
                      last_error_kind=None, last_frame_wall_ns=None, runs=1, frames=0,
                      segments_closed=0)  # fmt: skip


@pytest.fixture(scope="module")
def hour(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A bit over an hour, with a 20-s gap (a stall) 40 minutes in."""
    return make_recording(
        tmp_path_factory.mktemp("hour"), 3720, {2400.0: (20.0, RunEndReason.TIMEOUT)}
    )


def _iso(t_90k: int) -> str:
    from datetime import UTC  # noqa: PLC0415

    return format_rfc3339(t_90k, UTC)


async def _poll(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    async def loop() -> None:
        while not await check():  # noqa: ASYNC110  (polls the HTTP API: nothing to wait on)
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(loop(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@dataclass
class Api:
    client: TestClient  # type: ignore[type-arg]
    index: Index
    manager: ExportManager
    operator: dict[str, str]

    async def job(self, export_id: str) -> dict[str, Any]:
        resp = await self.client.get(f"/api/v1/exports/{export_id}", headers=self.operator)
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body

    async def until_done(self, export_id: str) -> dict[str, Any]:
        async def done() -> bool:
            return (await self.job(export_id))["state"] in ("done", "failed")

        await _poll(f"export {export_id}", done, 120)
        return await self.job(export_id)


@pytest.fixture
async def api(hour: Recorded) -> AsyncIterator[Api]:
    async with await Index.open(hour.index_path) as index:
        leases = ReaderLeases()
        manager = ExportManager(index, hour.root, leases, concurrency=2)
        app = make_app(lambda: [STATUS], index, hour.root, leases=leases, exports=manager)
        operator = await auth_headers(index, "operator")
        async with TestClient(TestServer(app)) as client:
            yield Api(client, index, manager, operator)
        await manager.stop()


async def test_one_hour_export_hashes_agree_in_api_manifest_and_file(
    api: Api, hour: Recorded, tmp_path: Path
) -> None:
    t0 = hour.frames[0][0]
    start, end = t0 + 30 * SECOND, t0 + 3630 * SECOND  # one hour, across the gap
    body = {"camera": "gate", "start": _iso(start), "end": _iso(end),
            "reason": "case 2026/117: theft at the market gate",
            "requested_by": "Sgt. Lan"}  # fmt: skip
    resp = await api.client.post("/api/v1/exports", json=body, headers=api.operator)
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert resp.headers["Location"] == f"/api/v1/exports/{job['id']}"
    assert job["token_name"] is not None and job["state"] in ("queued", "running")
    job = await api.until_done(job["id"])
    assert job["state"] == "done" and job["progress"] == 1.0, job
    resp = await api.client.get(job["file"], headers=api.operator)
    assert resp.status == 200
    data = await resp.read()
    file_sha = hashlib.sha256(data).hexdigest()
    assert (
        resp.headers["Repr-Digest"]
        == f"sha-256=:{base64.b64encode(bytes.fromhex(file_sha)).decode()}:"
    )
    manifest = await (await api.client.get(job["manifest"], headers=api.operator)).json()
    assert job["sha256"] == manifest["file"]["sha256"] == file_sha
    assert job["size_bytes"] == manifest["file"]["bytes"] == len(data)
    # The manifest: identity, ranges, the gap with its reason, every source with its hash.
    assert manifest["software"] == {"name": "nvr", "version": __version__}
    assert manifest["camera"]["id"] == "gate" and "password" not in json.dumps(manifest)
    assert manifest["asked"]["start"]["t_90k"] == start
    assert manifest["asked"]["end"]["t_90k"] == end
    [gap] = manifest["gaps"]
    assert gap["reason"] == "timeout"
    assert gap["end"]["t_90k"] - gap["start"]["t_90k"] == 20 * SECOND
    rows = {s.id: s for s in IndexReader(hour.index_path).segments("gate", "closed")}
    assert len(manifest["sources"]) == 62  # 60-s segments over an hour, the gap cutting one
    for src in manifest["sources"]:
        assert src["sha256"] == rows[src["segment_id"]].sha256
        assert hashlib.sha256((hour.root / src["path"]).read_bytes()).hexdigest() == src["sha256"]
    assert "synchronized" in manifest["clocks"]["nvr"] or "error" in manifest["clocks"]["nvr"]
    assert manifest["request"]["requested_by"] == "Sgt. Lan"
    # The file plays and holds the recorded frames, byte for byte.
    out = tmp_path / "export.mp4"
    out.write_bytes(data)
    assert ffprobe_errors(out) == ""
    assert mp4_video_units(out, VideoCodec.H264) == hour.frames_between(start, end)


async def test_at_most_n_jobs_write_at_once(
    api: Api, hour: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = exports.write_export
    inside = 0
    most = 0
    release = asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> tuple[int, str]:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await release.wait()
        try:
            return await real(*args, **kwargs)
        finally:
            inside -= 1

    monkeypatch.setattr(exports, "write_export", held)
    t0 = hour.frames[0][0]
    ids = []
    for k in range(3):
        row = await api.manager.submit(ExportRequest(
            "gate", t0 + k * 60 * SECOND, t0 + (k + 1) * 60 * SECOND, "test", "test"))  # fmt: skip
        ids.append(row.id)

    async def two_inside() -> bool:
        return inside == 2

    await _poll("two jobs writing", two_inside)
    states = [(await api.index.export(i)) for i in ids]
    assert [s.state if s else None for s in states].count(ExportState.QUEUED) == 1
    release.set()
    for i in ids:
        assert (await api.until_done(i))["state"] == "done"
    assert most == 2


async def test_unfinished_jobs_run_again_after_a_restart(api: Api, hour: Recorded) -> None:
    t0 = hour.frames[0][0]
    index = api.index
    # What a process killed mid-export leaves: one job queued, one running with a partial file.
    queued = await index.create_export("a" * 16, "gate", t0, t0 + 60 * SECOND, reason="r",
                                       requested_by="x", token_name=None, hold=True,
                                       file_name="_exports/aaaaaaaaaaaaaaaa.mp4")  # fmt: skip
    running = await index.create_export("b" * 16, "gate", t0, t0 + 90 * SECOND, reason="r",
                                        requested_by="x", token_name=None, hold=True,
                                        file_name="_exports/bbbbbbbbbbbbbbbb.mp4")  # fmt: skip
    await index.export_started(running.id)
    part = hour.root / "_exports" / "bbbbbbbbbbbbbbbb.mp4.part"
    part.parent.mkdir(exist_ok=True)
    part.write_bytes(b"half a file")
    # And one whose recording is gone (a range with nothing in it): failed, with the reason.
    gone = await index.create_export("c" * 16, "gate", t0 - 900 * SECOND, t0 - 600 * SECOND,
                                     reason="r", requested_by="x", token_name=None, hold=True,
                                     file_name="_exports/cccccccccccccccc.mp4")  # fmt: skip
    restarted = ExportManager(index, hour.root, ReaderLeases())
    await restarted.start()
    for job in (queued, running, gone):
        await restarted.wait(job.id)
    done = [await index.export(j.id) for j in (queued, running, gone)]
    assert [d.state if d else None for d in done] == [ExportState.DONE, ExportState.DONE,
                                                      ExportState.FAILED]  # fmt: skip
    assert done[2] is not None and done[2].error == "nothing was recorded in the asked range"
    assert not part.exists()
    assert done[1] is not None
    assert (hour.root / "_exports" / "bbbbbbbbbbbbbbbb.mp4").stat().st_size == done[1].size_bytes


async def test_bad_export_requests_are_named(api: Api, hour: Recorded) -> None:
    t0 = hour.frames[0][0]
    good = {"camera": "gate", "start": _iso(t0), "end": _iso(t0 + 60 * SECOND),
            "reason": "r", "requested_by": "x"}  # fmt: skip
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({**good, "camera": "nope"}, 404, "not_found", "nope"),
        ({**good, "end": good["start"]}, 400, "bad_range", "after"),
        ({**good, "start": "2026-11-29 03:00"}, 400, "bad_time", "start"),
        ({**good, "reason": ""}, 400, "bad_request", "reason"),
        ({k: v for k, v in good.items() if k != "requested_by"}, 400, "bad_request",
         "requested_by"),
        ({**good, "start": _iso(t0 - 900 * SECOND), "end": _iso(t0 - 600 * SECOND)}, 404,
         "no_recording", "nothing"),
    ]  # fmt: skip
    for body, status, code, word in cases:
        resp = await api.client.post("/api/v1/exports", json=body, headers=api.operator)
        err = (await resp.json())["error"]
        assert (resp.status, err["code"]) == (status, code), (body, err)
        assert word in err["message"]
    resp = await api.client.get("/api/v1/exports/0123456789abcdef", headers=api.operator)
    assert resp.status == 404


async def test_an_export_holds_its_source_range_unless_told_not_to(
    api: Api, hour: Recorded
) -> None:
    t0 = hour.frames[0][0]
    body = {"camera": "gate", "start": _iso(t0 + 60 * SECOND), "end": _iso(t0 + 90 * SECOND),
            "reason": "case 2026/118", "requested_by": "Sgt. Lan"}  # fmt: skip
    placed = []
    for hold in (None, False):
        sent = body if hold is None else {**body, "hold": hold}
        resp = await api.client.post("/api/v1/exports", json=sent, headers=api.operator)
        assert resp.status == 202, await resp.text()
        job = await resp.json()
        placed.append([h for h in await api.index.holds() if h.export_id == job["id"]])
        await api.manager.wait(job["id"])  # looked up before: placed on submission
    [[held], unheld] = placed
    assert unheld == []
    assert (held.case_ref, held.reason, held.cameras) == (
        f"export {held.export_id}", "case 2026/118", ("gate",))  # fmt: skip
    assert (held.start_90k, held.end_90k) == (t0 + 60 * SECOND, t0 + 90 * SECOND)
    assert held.created_by == job["token_name"] and held.active(held.created_90k)
    assert ("gate", t0 + 60 * SECOND, t0 + 90 * SECOND) in await api.index.held_ranges()
    # From the CLI side of the manager, with no token: the requester places it.
    row = await api.manager.submit(ExportRequest("gate", t0, t0 + 10 * SECOND, "r", "Cpl. Minh"))
    await api.manager.wait(row.id)
    [by_cli] = [h for h in await api.index.holds() if h.export_id == row.id]
    assert by_cli.created_by == "Cpl. Minh"


def test_nvr_clip_writes_the_same_clip_and_a_manifest(
    hour: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "nvr.toml"
    config.write_text(f'[storage]\npath = "{hour.root}"\n[[cameras]]\nid = "gate"\n'
                      'url = "rtsp://127.0.0.1:1/x"\n')  # fmt: skip
    t0 = hour.frames[0][0]
    out = tmp_path / "case-117.mp4"
    start, end = t0 + 100 * SECOND, t0 + 400 * SECOND
    args = ["clip", "--config", str(config), "--camera", "gate", "--start", _iso(start),
            "--end", _iso(end), "-o", str(out), "--reason", "case 117", "--json"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    manifest = json.loads((tmp_path / "case-117.json").read_text())
    assert manifest["file"]["sha256"] == result["sha256"]
    assert manifest["request"]["reason"] == "case 117"
    assert mp4_video_units(out, VideoCodec.H264) == hour.frames_between(start, end)
    # A second run never overwrites; a human error names the file.
    assert main(args[:-1]) == 1
    assert "exists" in capsys.readouterr().err
