"""``video.mp4`` over real loopback HTTP: whole clips, byte ranges, seeking in ffmpeg, leases."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvr.api.server import make_app
from nvr.api.times import format_rfc3339
from nvr.api.times import parse_rfc3339 as _parse
from nvr.ingest.camera import CameraState, CameraStatus
from nvr.storage.index import Index
from nvr.storage.leases import ReaderLeases
from nvr.storage.model import RunEndReason
from support.api import auth_headers
from support.recorded import Recorded, make_recording
from support.recording import poll

SECOND = 90_000
FRAME = SECOND // 25
STATUS = CameraStatus(id="gate", state=CameraState.STREAMING, failures=0, last_error=None,
                      last_error_kind=None, last_frame_wall_ns=None, runs=1, frames=0,
                      segments_closed=0)  # fmt: skip
PLUS7 = _parse("2026-01-01T00:00:00+07:00", "t")[1]


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return make_recording(
        tmp_path_factory.mktemp("rec"), 330, {200.0: (20.0, RunEndReason.TIMEOUT)}
    )


@dataclass
class Api:
    client: TestClient  # type: ignore[type-arg]
    rec: Recorded
    leases: ReaderLeases
    headers: dict[str, str]

    def params(self, start_s: float, end_s: float) -> dict[str, str]:
        t0 = self.rec.frames[0][0]
        return {"start": format_rfc3339(t0 + int(start_s * SECOND), PLUS7),
                "end": format_rfc3339(t0 + int(end_s * SECOND), PLUS7)}  # fmt: skip

    async def get(
        self, start_s: float, end_s: float, **headers: str
    ) -> tuple[int, Mapping[str, str], bytes]:
        resp = await self.client.get("/api/v1/cameras/gate/video.mp4",
                                     params=self.params(start_s, end_s),
                                     headers={**self.headers, **headers})  # fmt: skip
        return resp.status, resp.headers, await resp.read()


@pytest.fixture
async def api(rec: Recorded) -> AsyncIterator[Api]:
    async with await Index.open(rec.index_path) as index:
        leases = ReaderLeases()
        app = make_app(lambda: [STATUS], index, rec.root, leases=leases,
                       max_clip_90k=3600 * SECOND)  # fmt: skip
        headers = await auth_headers(index, "viewer")
        async with TestClient(TestServer(app)) as client:
            yield Api(client, rec, leases, headers)


async def test_byte_ranges_are_the_same_bytes_as_the_whole(api: Api) -> None:
    status, headers, whole = await api.get(10, 130)
    assert status == 200 and int(headers["Content-Length"]) == len(whole)
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Type"] == "video/mp4"
    t0 = api.rec.frames[0][0]
    assert headers["Content-Disposition"] == (
        f'inline; filename="gate_{format_rfc3339(t0 + 10 * SECOND, PLUS7)[:19]}+0700.mp4"'
        .replace("T", "_").replace(":", "-")
    )  # fmt: skip
    mid = len(whole) // 3
    status, got, part = await api.get(10, 130, Range=f"bytes={mid}-{mid + 999_999}")
    assert status == 206 and part == whole[mid : mid + 1_000_000]
    assert got["Content-Range"] == f"bytes {mid}-{mid + 999_999}/{len(whole)}"
    status, _, tail = await api.get(10, 130, Range="bytes=-5000")
    assert status == 206 and tail == whole[-5000:]
    status, _, rest = await api.get(10, 130, Range=f"bytes={len(whole) - 10}-")
    assert status == 206 and rest == whole[-10:]
    status, got, _ = await api.get(10, 130, Range=f"bytes={len(whole)}-")
    assert status == 416 and got["Content-Range"] == f"bytes */{len(whole)}"
    # If-Range with the current ETag honours the range; with another it sends everything.
    status, _, _ = await api.get(10, 130, Range="bytes=0-99", **{"If-Range": headers["ETag"]})
    assert status == 206
    status, _, again = await api.get(10, 130, Range="bytes=0-99", **{"If-Range": '"other"'})
    assert status == 200 and again == whole


async def test_ffmpeg_seeks_inside_the_clip_over_http(api: Api, tmp_path: Path) -> None:
    params = api.params(30, 150)
    url = api.client.make_url("/api/v1/cameras/gate/video.mp4").with_query(params)
    auth = "".join(f"{k}: {v}\r\n" for k, v in api.headers.items())

    async def first_frame(*args: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-v", "error", "-headers", auth, *args, "-i", str(url), "-frames:v", "1",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0 and out, err.decode()
        return out

    seeked = await first_frame("-ss", "61.2")
    # The same picture decoded from the segment file it was recorded in.
    t0 = api.rec.frames[0][0]
    want = t0 + 30 * SECOND + 61 * SECOND + 5 * FRAME
    seg_path, index_in_seg = _segment_frame(api.rec, want)
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-i", str(seg_path), "-vf", f"select=eq(n\\,{index_in_seg})",
        "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    expected, _ = await proc.communicate()
    assert seeked == expected


def _segment_frame(rec: Recorded, wall_90k: int) -> tuple[Path, int]:
    from support.recording import IndexReader  # noqa: PLC0415

    for s in IndexReader(rec.index_path).segments(rec.camera_id, "closed"):
        if s.start_90k <= wall_90k < (s.end_90k or 0):
            return rec.root / s.path, (wall_90k - s.start_90k) // FRAME
    raise AssertionError("no segment holds that time")


async def test_a_gap_is_named_in_the_headers(api: Api) -> None:
    status, headers, _ = await api.get(150, 290, Range="bytes=0-0")
    assert status == 206
    gaps = headers["X-Nvr-Gaps"]
    assert gaps.count("reason=") == 1 and gaps.endswith(";reason=timeout")
    start, end = gaps.split(";")[0].split("/")
    assert _parse(end, "end")[0] - _parse(start, "start")[0] == 20 * SECOND
    assert start.endswith("+07:00")


async def test_segments_are_leased_while_a_response_is_read(api: Api) -> None:
    resp = await api.client.get("/api/v1/cameras/gate/video.mp4", params=api.params(10, 320),
                                headers=api.headers)  # fmt: skip
    assert resp.status == 200
    await resp.content.readexactly(64 * 1024)
    held = api.leases.held()
    assert len(held) >= 3  # the segments of [10 s, 200 s)
    await resp.read()
    await poll("the leases to be returned", lambda: not api.leases.held(), timeout_s=10)


@pytest.mark.parametrize(
    ("start_s", "end_s", "status", "code"),
    [
        (-600, -300, 404, "no_recording"),
        (0, 2 * 3600, 400, "range_too_long"),
        (100, 50, 400, "bad_range"),
    ],
)
async def test_bad_ranges_are_named(api: Api, start_s: float, end_s: float, status: int,
                                    code: str) -> None:  # fmt: skip
    resp = await api.client.get("/api/v1/cameras/gate/video.mp4",
                                params=api.params(start_s, end_s), headers=api.headers)  # fmt: skip
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
