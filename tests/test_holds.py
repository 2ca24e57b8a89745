"""Evidence holds over real loopback HTTP on a real index, and ``nvr hold`` from the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nvr.api.auth import Role
from nvr.api.server import make_app
from nvr.api.times import format_rfc3339
from nvr.cli import main
from nvr.clock import SimulatedClock
from nvr.ingest.camera import CameraState, CameraStatus
from nvr.ingest.timeline import ns_to_90k
from nvr.storage.index import Index
from support.api import add_token, bearer

S_NS = 10**9
SECOND = 90_000
DAY = 86_400 * SECOND
STATUS = CameraStatus(id="gate", state=CameraState.STREAMING, failures=0, last_error=None,
                      last_error_kind=None, last_frame_wall_ns=None, runs=0, frames=0,
                      segments_closed=0)  # fmt: skip


def _iso(t_90k: int) -> str:
    return format_rfc3339(t_90k, UTC)


@dataclass(frozen=True, slots=True)
class Api:
    client: TestClient[web.Request, web.Application]
    index: Index
    clock: SimulatedClock
    headers: dict[Role, dict[str, str]]  # a valid token per role, as headers

    def now_90k(self) -> int:
        return ns_to_90k(self.clock.wall_ns())

    def body(self, **changes: Any) -> dict[str, Any]:
        """A good hold request over the last hour, with ``changes``."""
        now = self.now_90k()
        good = {"cameras": ["gate"], "start": _iso(now - 3600 * SECOND), "end": _iso(now),
                "case": "2026/117", "reason": "theft at the market gate"}  # fmt: skip
        return {**good, **changes}

    async def place(self, **changes: Any) -> dict[str, Any]:
        resp = await self.client.post("/api/v1/holds", json=self.body(**changes),
                                      headers=self.headers[Role.OPERATOR])  # fmt: skip
        assert resp.status == 201, await resp.text()
        placed: dict[str, Any] = await resp.json()
        return placed

    async def ids(self, query: str = "") -> list[str]:
        resp = await self.client.get(f"/api/v1/holds{query}", headers=self.headers[Role.OPERATOR])
        assert resp.status == 200
        return [h["id"] for h in (await resp.json())["holds"]]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    clock = SimulatedClock()
    async with await Index.open(tmp_path / "index.db", clock=clock) as index:
        for cam in ("gate", "yard"):  # "yard" is in the index but no longer configured
            await index.upsert_camera(cam, cam.title(), "rtsp://h/")
        headers = {role: bearer(await add_token(index, role, f"{role}-token")) for role in Role}
        app = make_app(lambda: [STATUS], index, clock=clock)
        async with TestClient(TestServer(app)) as client:
            yield Api(client, index, clock, headers)


# --- the API ---------------------------------------------------------------------------------


async def test_a_hold_is_placed_read_and_released_with_the_right_roles(api: Api) -> None:
    now = api.now_90k()
    hold = await api.place(cameras=["yard", "gate", "gate"])
    assert hold == {
        "id": hold["id"], "cameras": ["gate", "yard"], "start": _iso(now - 3600 * SECOND),
        "end": _iso(now), "until": None, "case": "2026/117",
        "reason": "theft at the market gate", "created": _iso(now),
        "created_by": "operator-token", "released": None, "released_by": None,
        "export_id": None, "active": True,
    }  # fmt: skip
    assert len(hold["id"]) == 16
    url = f"/api/v1/holds/{hold['id']}"
    resp = await api.client.get(url, headers=api.headers[Role.OPERATOR])
    assert resp.status == 200 and await resp.json() == hold
    assert await api.ids() == [hold["id"]]
    for role in (Role.VIEWER, Role.OPERATOR):
        resp = await api.client.delete(url, headers=api.headers[role])
        assert resp.status == 403, role
    assert (await api.client.get(url, headers=api.headers[Role.VIEWER])).status == 403
    assert (await api.client.post("/api/v1/holds", json=api.body(),
                                  headers=api.headers[Role.VIEWER])).status == 403  # fmt: skip

    api.clock.advance(5 * S_NS)
    resp = await api.client.delete(url, headers=api.headers[Role.ADMIN])
    assert resp.status == 200
    released = await resp.json()
    assert released == {**hold, "released": _iso(api.now_90k()), "released_by": "admin-token",
                        "active": False}  # fmt: skip
    resp = await api.client.delete(url, headers=api.headers[Role.ADMIN])
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "already_released"
    for method in ("GET", "DELETE"):
        resp = await api.client.request(method, "/api/v1/holds/0123456789abcdef",
                                         headers=api.headers[Role.ADMIN])  # fmt: skip
        assert resp.status == 404 and "0123456789abcdef" in (await resp.json())["error"]["message"]


async def test_a_placed_hold_has_a_location(api: Api) -> None:
    resp = await api.client.post("/api/v1/holds", json=api.body(),
                                 headers=api.headers[Role.OPERATOR])  # fmt: skip
    assert resp.status == 201
    assert resp.headers["Location"] == f"/api/v1/holds/{(await resp.json())['id']}"


@pytest.mark.parametrize(
    ("changes", "status", "code", "names"),
    [
        ({"cameras": ["gate", "nope"]}, 404, "not_found", "'nope'"),
        ({"cameras": []}, 400, "bad_request", "cameras"),
        ({"cameras": ["Gate!"]}, 400, "bad_request", "cameras.0"),
        ({"cameras": "gate"}, 400, "bad_request", "cameras"),
        ({"start": "2026-01-01 00:00"}, 400, "bad_time", "start"),
        ({"end": "yesterday"}, 400, "bad_time", "end"),
        ({"until": "2030-01-01T00:00:00"}, 400, "bad_time", "until"),
        ({"end": _iso(0)}, 400, "bad_range", "after"),
        ({"start": _iso(0), "end": _iso(367 * DAY)}, 400, "range_too_long", "366 days"),
        ({"until": "2025-12-31T00:00:00Z"}, 400, "bad_request", "until"),
        ({"case": "  "}, 400, "bad_request", "case"),
        ({"reason": "x" * 501}, 400, "bad_request", "reason"),
        ({"created_by": "me"}, 400, "bad_request", "created_by"),
        ({"case": None}, 400, "bad_request", "case"),
    ],
)
async def test_a_bad_hold_request_is_4xx_naming_the_field(
    api: Api, changes: dict[str, Any], status: int, code: str, names: str
) -> None:
    resp = await api.client.post("/api/v1/holds", json=api.body(**changes),
                                 headers=api.headers[Role.OPERATOR])  # fmt: skip
    err = (await resp.json())["error"]
    assert (resp.status, err["code"]) == (status, code), err
    assert names in err["message"]
    assert await api.index.holds() == []


async def test_a_body_that_is_not_json_or_misses_a_field_is_400(api: Api) -> None:
    headers = {**api.headers[Role.OPERATOR], "Content-Type": "application/json"}
    resp = await api.client.post("/api/v1/holds", data=b"{not json", headers=headers)
    assert resp.status == 400
    missing = {k: v for k, v in api.body().items() if k != "reason"}
    resp = await api.client.post("/api/v1/holds", json=missing, headers=headers)
    assert resp.status == 400 and "reason" in (await resp.json())["error"]["message"]
    resp = await api.client.get("/api/v1/holds?active=maybe", headers=headers)
    assert resp.status == 400 and "active" in (await resp.json())["error"]["message"]


async def test_active_holds_exclude_released_and_lapsed_ones(api: Api) -> None:
    now = api.now_90k()
    forever = await api.place(case="A")
    lapsing = await api.place(case="B", cameras=["yard"], until=_iso(now + 60 * SECOND))
    released = await api.place(case="C")
    resp = await api.client.delete(f"/api/v1/holds/{released['id']}",
                                   headers=api.headers[Role.ADMIN])  # fmt: skip
    assert resp.status == 200
    assert sorted(await api.ids("?active=true")) == sorted([forever["id"], lapsing["id"]])
    assert sorted(await api.ids("?active=false")) == sorted(
        [forever["id"], lapsing["id"], released["id"]])  # fmt: skip
    held = sorted(await api.index.held_ranges())
    assert held == [("gate", now - 3600 * SECOND, now), ("yard", now - 3600 * SECOND, now)]

    api.clock.advance(61 * S_NS)
    assert await api.ids("?active=true") == [forever["id"]]
    assert await api.index.held_ranges() == [("gate", now - 3600 * SECOND, now)]
    resp = await api.client.get(f"/api/v1/holds/{lapsing['id']}",
                                headers=api.headers[Role.OPERATOR])  # fmt: skip
    assert (await resp.json())["active"] is False
    assert len(await api.ids()) == 3


# --- the CLI ---------------------------------------------------------------------------------


def _config(tmp_path: Path) -> str:
    path = tmp_path / "nvr.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "store"}"\n[[cameras]]\nid = "gate"\n'
                    'url = "rtsp://127.0.0.1:1/x"\n', encoding="utf-8")  # fmt: skip
    return str(path)


def _nvr_hold(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["hold", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_holds_are_placed_listed_and_released_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGNAME", "sgt-lan")
    cfg = _config(tmp_path)
    assert _nvr_hold(capsys, "list", "--config", cfg) == (0, "no holds\n", "")  # makes the index

    async def add_camera() -> None:  # what `nvr run` does for each configured camera
        async with await Index.open(tmp_path / "store" / "index.db") as index:
            await index.upsert_camera("gate", "Gate", "rtsp://127.0.0.1:1/x")

    asyncio.run(add_camera())
    start = "2026-11-29T03:00:00+07:00"
    end = "2026-11-29T04:00:00+07:00"
    add = ["add", "--config", cfg, "--camera", "gate", "--start", start, "--end", end,
           "--case", "2026/117", "--reason", "theft"]  # fmt: skip
    status, out, err = _nvr_hold(capsys, *add, "--json")
    assert (status, err) == (0, "")
    hold = json.loads(out)
    assert (hold["cameras"], hold["start"], hold["end"]) == (
        ["gate"], "2026-11-28T20:00:00.000Z", "2026-11-28T21:00:00.000Z")  # fmt: skip
    assert (hold["created_by"], hold["case"], hold["active"]) == ("sgt-lan", "2026/117", True)

    status, out, _ = _nvr_hold(capsys, *add, "--until", "2099-01-01T00:00:00Z")
    assert status == 0 and "2026/117" in out and "active until 2099" in out
    other = out.split()[0]

    status, out, _ = _nvr_hold(capsys, "list", "--config", cfg, "--active", "--json")
    assert status == 0 and sorted(h["id"] for h in json.loads(out)) == sorted([hold["id"], other])

    status, out, _ = _nvr_hold(capsys, "release", "--config", cfg, "--id", hold["id"], "--json")
    assert status == 0
    assert (json.loads(out)["released_by"], json.loads(out)["active"]) == ("sgt-lan", False)
    status, out, _ = _nvr_hold(capsys, "list", "--config", cfg, "--active", "--json")
    assert [h["id"] for h in json.loads(out)] == [other]
    status, out, _ = _nvr_hold(capsys, "list", "--config", cfg)
    lines = out.splitlines()
    assert status == 0 and len(lines) == 4 and "released" in out and "reason: theft" in out

    async def in_force() -> list[tuple[str, int, int]]:
        async with await Index.open(tmp_path / "store" / "index.db") as index:
            return await index.held_ranges()

    assert [cam for cam, _, _ in asyncio.run(in_force())] == ["gate"]


def test_cli_refusals_are_one_line_with_a_non_zero_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    assert _nvr_hold(capsys, "list", "--config", cfg)[0] == 0
    span = ["--start", "2026-11-29T03:00:00Z", "--end", "2026-11-29T04:00:00Z"]
    add = ["add", "--config", cfg, "--case", "c", "--reason", "r"]
    cases = [
        ([*add, "--camera", "nope", *span], 1, "no camera with id 'nope'"),
        ([*add, "--camera", "gate", "--start", "03:00", "--end", "04:00"], 2, "--start="),
        ([*add, "--camera", "gate", "--start", span[3], "--end", span[1]], 2, "--end must be"),
        ([*add, "--camera", "gate", *span, "--until", "2000-01-01T00:00:00Z"], 2, "--until"),
        (["add", "--config", cfg, "--case", " ", "--reason", "r", "--camera", "gate", *span], 2,
         "--case"),
        (["release", "--config", cfg, "--id", "0123456789abcdef"], 1, "no hold with id"),
        (["list", "--config", str(tmp_path / "none.toml")], 2, "cannot read"),
    ]  # fmt: skip
    for argv, status, message in cases:
        code, out, err = _nvr_hold(capsys, *argv)
        assert code == status, (argv, err)
        assert out == "" and err.startswith("error: ") and message in err, (argv, err)
        assert err.count("\n") == 1
