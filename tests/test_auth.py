"""Bearer-token auth over real loopback HTTP, on a real index file: every route, every role."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nvr.api.auth import ROUTE_ROLES, TOKEN_PREFIX, Role, required_role, token_sha256
from nvr.api.server import make_app
from nvr.cli import main
from nvr.clock import SimulatedClock
from nvr.exports import ExportManager
from nvr.ingest.camera import CameraState, CameraStatus
from nvr.metrics import Metrics
from nvr.storage.index import Index
from nvr.storage.leases import ReaderLeases
from nvr.storage.recovery import check_storage_identity
from support.api import add_token, bearer

S_NS = 10**9
STATUS = CameraStatus(id="gate", state=CameraState.STREAMING, failures=0, last_error=None,
                      last_error_kind=None, last_frame_wall_ns=None, runs=0, frames=0,
                      segments_closed=0)  # fmt: skip
BELOW = {Role.OPERATOR: Role.VIEWER, Role.ADMIN: Role.OPERATOR}


@dataclass(frozen=True, slots=True)
class Api:
    client: TestClient[web.Request, web.Application]
    index: Index
    clock: SimulatedClock
    tokens: dict[Role, str]  # one valid token per role


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    clock = SimulatedClock()
    async with await Index.open(tmp_path / "index.db", clock=clock) as index:
        await index.upsert_camera("gate", "Gate", "rtsp://h/")
        check_storage_identity(tmp_path, await index.storage_identity(), index_is_new=True)
        tokens = {role: await add_token(index, role, f"{role}-token") for role in Role}
        leases = ReaderLeases()
        exports = ExportManager(index, tmp_path, leases)
        app = make_app(lambda: [STATUS], index, tmp_path, clock=clock, leases=leases,
                       exports=exports, config=lambda: {},
                       metrics=Metrics(lambda: [], index=index))  # fmt: skip
        async with TestClient(TestServer(app)) as client:
            yield Api(client, index, clock, tokens)


def routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, template) of every route the app serves."""
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                   if r.resource is not None})  # fmt: skip


def concrete(template: str) -> str:
    return template.replace("{id}", "gate")


async def _status(api: Api, method: str, template: str, headers: dict[str, str]) -> int:
    async with api.client.request(method, concrete(template), headers=headers) as resp:
        return resp.status


# --- the policy on every route -------------------------------------------------------------


async def test_every_route_has_a_policy_entry(api: Api) -> None:
    served = routes(api.client.app)
    assert ("GET", "/api/v1/tokens") in served
    missing = [(m, t) for m, t in served if m != "HEAD" and (m, t) not in ROUTE_ROLES]
    assert missing == []


async def test_every_route_refuses_a_missing_wrong_or_revoked_token(api: Api) -> None:
    revoked = await add_token(api.index, "admin", "gone")
    assert await api.index.revoke_token("gone")
    for method, template in routes(api.client.app):
        if required_role(method, template) is None:
            continue
        for headers in ({}, bearer("nvr_not-a-token"), bearer(revoked)):
            async with api.client.request(method, concrete(template), headers=headers) as resp:
                assert resp.status == 401, (method, template, headers)
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="nvr"'
                if method != "HEAD":
                    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_every_route_needs_its_role_and_no_more(api: Api) -> None:
    checked = 0
    for method, template in routes(api.client.app):
        need = required_role(method, template)
        if need is None:
            continue
        ok = await _status(api, method, template, bearer(api.tokens[need]))
        assert ok not in (401, 403), (method, template, need)
        if need in BELOW:
            low = await _status(api, method, template, bearer(api.tokens[BELOW[need]]))
            assert low == 403, (method, template, need)
        if need is Role.ADMIN:
            assert await _status(api, method, template, bearer(api.tokens[Role.VIEWER])) == 403
        checked += 1
    assert checked >= 9


async def test_forbidden_names_the_role_needed_and_the_tokens_role(api: Api) -> None:
    resp = await api.client.get("/api/v1/tokens", headers=bearer(api.tokens[Role.VIEWER]))
    assert resp.status == 403
    assert await resp.json() == {"error": {"code": "forbidden", "message": (
        "this needs the admin role; the token 'viewer-token' has viewer")}}  # fmt: skip


async def test_healthz_is_open(api: Api) -> None:
    resp = await api.client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwdw==", "Bearer", "Bearer a b", "nvr_x"])
async def test_a_malformed_header_is_401(api: Api, header: str) -> None:
    resp = await api.client.get("/api/v1/cameras", headers={"Authorization": header})
    assert resp.status == 401
    assert "not 'Bearer <token>'" in (await resp.json())["error"]["message"]


async def test_unknown_paths_are_a_json_404_with_or_without_a_token(api: Api) -> None:
    for headers in ({}, bearer(api.tokens[Role.ADMIN])):
        resp = await api.client.get("/api/v1/nope", headers=headers)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    resp = await api.client.post("/healthz")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_without_an_index_only_healthz_answers(tmp_path: Path) -> None:
    async with TestClient(TestServer(make_app(lambda: [STATUS]))) as client:
        assert (await client.get("/healthz")).status == 200
        for path in ("/api/v1/cameras", "/api/v1/cameras/gate", "/api/v1/openapi.json"):
            resp = await client.get(path, headers=bearer("nvr_anything"))
            assert resp.status == 401, path


async def test_last_use_is_written_at_most_once_a_minute(api: Api) -> None:
    async def last_used() -> int | None:
        row = await api.index.token_by_hash(token_sha256(api.tokens[Role.VIEWER]))
        assert row is not None
        return row.last_used_90k

    headers = bearer(api.tokens[Role.VIEWER])
    assert await last_used() is None
    assert (await api.client.get("/api/v1/cameras", headers=headers)).status == 200
    first = await last_used()
    assert first is not None
    api.clock.advance(30 * S_NS)
    assert (await api.client.get("/api/v1/cameras", headers=headers)).status == 200
    assert await last_used() == first
    api.clock.advance(31 * S_NS)
    assert (await api.client.get("/api/v1/cameras", headers=headers)).status == 200
    assert await last_used() == first + 61 * 90_000


# --- the token routes ----------------------------------------------------------------------


async def test_tokens_are_made_listed_and_revoked_over_http(api: Api) -> None:
    admin = bearer(api.tokens[Role.ADMIN])
    resp = await api.client.post("/api/v1/tokens", json={"name": "desk", "role": "operator"},
                                 headers=admin)  # fmt: skip
    assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
    made = await resp.json()
    token = made.pop("token")
    assert token.startswith(TOKEN_PREFIX)
    assert made == {"name": "desk", "role": "operator", "created": made["created"],
                    "last_used": None, "revoked": None}  # fmt: skip
    desk = bearer(token)
    assert (await api.client.get("/api/v1/cameras", headers=desk)).status == 200
    assert (await api.client.get("/api/v1/tokens", headers=desk)).status == 403

    listing = await api.client.get("/api/v1/tokens", headers=admin)
    text = await listing.text()
    assert token not in text and token_sha256(token) not in text
    names = [t["name"] for t in json.loads(text)["tokens"]]
    assert names == ["viewer-token", "operator-token", "admin-token", "desk"]

    assert (await api.client.delete("/api/v1/tokens/desk", headers=admin)).status == 204
    assert (await api.client.get("/api/v1/cameras", headers=desk)).status == 401
    resp = await api.client.delete("/api/v1/tokens/desk", headers=admin)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (b"{not json", 400, "JSON"),
        (b"[]", 400, "'name'"),
        (json.dumps({"role": "viewer"}).encode(), 400, "'name'"),
        (json.dumps({"name": "", "role": "viewer"}).encode(), 400, "'name'"),
        (json.dumps({"name": "a b", "role": "viewer"}).encode(), 400, "'name'"),
        (json.dumps({"name": "ok"}).encode(), 400, "'role'"),
        (json.dumps({"name": "ok", "role": ["admin"]}).encode(), 400, "'role'"),
        (json.dumps({"name": "ok", "role": "root"}).encode(), 400, "'role'"),
        (json.dumps({"name": "ok", "role": "viewer", "x": 1}).encode(), 400, "'x'"),
        (json.dumps({"name": "viewer-token", "role": "viewer"}).encode(), 409, "viewer-token"),
    ],
)
async def test_a_bad_token_request_is_4xx_naming_the_field(
    api: Api, body: bytes, status: int, names: str
) -> None:
    headers = {**bearer(api.tokens[Role.ADMIN]), "Content-Type": "application/json"}
    resp = await api.client.post("/api/v1/tokens", data=body, headers=headers)
    assert resp.status == status
    assert names in (await resp.json())["error"]["message"]


# --- the CLI -------------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "nvr.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "store"}"\n', encoding="utf-8")
    return path


async def nvr_token(*argv: str) -> int:
    """``nvr token ...`` as the console script runs it (its own event loop, in a thread)."""
    return await asyncio.to_thread(main, ["token", *argv])


async def test_a_token_from_the_cli_works_over_http_and_only_its_hash_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_config(tmp_path))
    assert await nvr_token("add", "--config", cfg, "--role", "operator", "--name", "cli",
                           "--json") == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    token = printed["token"]
    assert printed == {"name": "cli", "role": "operator", "token": token}
    assert await nvr_token("add", "--config", cfg, "--role", "viewer", "--name", "human") == 0
    out, err = capsys.readouterr()
    assert out.strip().startswith(TOKEN_PREFIX) and "shown only this once" in err

    db = tmp_path / "store" / "index.db"
    stored = b"".join(p.read_bytes() for p in db.parent.glob("index.db*"))
    assert token.encode() not in stored and token_sha256(token).encode() in stored
    assert (tmp_path / "store" / ".nvr-storage").exists()  # `nvr run` will accept this index

    async with await Index.open(db) as index:
        app = make_app(lambda: [STATUS], index, tmp_path / "store")
        async with TestClient(TestServer(app)) as client:
            assert (await client.get("/api/v1/cameras", headers=bearer(token))).status == 200
            assert (await client.get("/api/v1/tokens", headers=bearer(token))).status == 403

    assert await nvr_token("list", "--config", cfg, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["name"], t["role"], t["revoked"]) for t in listed] == [
        ("cli", "operator", None), ("human", "viewer", None)]  # fmt: skip
    assert await nvr_token("revoke", "--config", cfg, "--name", "cli") == 0
    assert "revoked" in capsys.readouterr().out
    async with await Index.open(db) as index:
        assert await index.token_by_hash(token_sha256(token)) is None


def test_cli_errors_are_one_line_with_a_non_zero_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_config(tmp_path))
    assert main(["token", "add", "--config", cfg, "--role", "admin", "--name", "a"]) == 0
    capsys.readouterr()
    cases = [
        (["add", "--config", cfg, "--role", "admin", "--name", "a"], 1, "'a' already exists"),
        (["add", "--config", cfg, "--role", "admin", "--name", "a b"], 1, "--name must be"),
        (["revoke", "--config", cfg, "--name", "nobody"], 1, "no valid token named 'nobody'"),
        (["list", "--config", str(tmp_path / "none.toml")], 2, "cannot read"),
    ]
    for argv, status, message in cases:
        assert main(["token", *argv]) == status, argv
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and message in err
        assert err.count("\n") == 1


# --- logs ----------------------------------------------------------------------------------


async def test_no_token_ever_reaches_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    revoked = await add_token(api.index, "viewer", "old")
    await api.index.revoke_token("old")
    wrong = "nvr_this-one-was-never-issued"
    admin = bearer(api.tokens[Role.ADMIN])
    seen = [*api.tokens.values(), revoked, wrong]
    for token in seen:
        for path in ("/api/v1/cameras", "/api/v1/tokens", "/api/v1/nope", "/healthz"):
            async with api.client.get(path, headers=bearer(token)) as resp:
                assert token not in await resp.text()
    resp = await api.client.post("/api/v1/tokens", json={"name": "new", "role": "viewer"},
                                 headers=admin)  # fmt: skip
    seen.append((await resp.json())["token"])
    await api.client.delete("/api/v1/tokens/new", headers=admin)
    assert "GET /api/v1/cameras" in caplog.text  # the access log was captured
    assert "'new'" in caplog.text  # and the token routes' own lines
    for token in seen:
        assert token not in caplog.text
        assert token[len(TOKEN_PREFIX) :] not in caplog.text
