"""The HTTP API fuzzed against its own OpenAPI document (Schemathesis, property-based).

A real app over real loopback HTTP, on a real index and real segment files (a 3-minute
recording). Every operation of the document is fuzzed (Schemathesis' examples, coverage and
random phases; valid and invalid inputs) with an admin token and without one: no answer may be
a 5xx, and every answer must match the document (status, content type, body schema, headers;
405 with Allow for a method the document does not list). The camera routes are fuzzed again on
the recorded camera, so their query handling is reached past the camera lookup, and hand-made
requests reach the 2xx answers random inputs cannot (a clip, an export, a token), under the
same checks.

The schemas are built from ``openapi.document()`` at import, since Schemathesis makes one test
per operation at collection time (its fixture-based loader fails on pytest 9.2); a test checks
that the server serves exactly that document. Schemathesis calls block, so the server runs on
its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis import Case, Response
from schemathesis.checks import (
    CheckFunction,
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.schemas import BaseSchema

from nvr.api import openapi
from nvr.api.auth import new_token, token_sha256
from nvr.api.server import make_app
from nvr.api.times import format_rfc3339
from nvr.config import parse_config
from nvr.exports import ExportManager
from nvr.ingest.camera import CameraState, CameraStatus
from nvr.media import VideoCodec
from nvr.metrics import Metrics
from nvr.storage.index import Index
from nvr.storage.leases import ReaderLeases
from nvr.storage.recovery import check_storage_identity
from support.api import ISSUED_TOKENS, bearer
from support.media import encode_clip
from support.recorded import record_clip

T = TypeVar("T")

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,
]
SECOND = 90_000
WALL_START_NS = 1_795_897_600 * 10**9  # 2026-11-28T20:26:40Z, when the recording starts
RECORDED_S = 180
# Made at import, so the schemas below can carry it before the server exists.
ADMIN = "fuzz-admin-7f3a9c"  # a name no generated DELETE /tokens/{id} will hit
ADMIN_TOKEN = new_token()
ISSUED_TOKENS.add(ADMIN_TOKEN)  # the session's log watch looks for it too
STATUS = CameraStatus(id="gate", state=CameraState.STREAMING, failures=0, last_error=None,
                      last_error_kind=None, last_frame_wall_ns=None, runs=1, frames=4500,
                      segments_closed=3, codec="h264", width=128, height=72, fps=25.0,
                      bitrate_kbps=90)  # fmt: skip
# Fixed budget, no randomness across runs: the same requests every time.
FUZZ = settings(max_examples=50, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Served:
    base_url: str
    loop: asyncio.AbstractEventLoop
    exports: ExportManager

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)


async def _serve(root: Path, ready: concurrent.futures.Future[Served], stop: asyncio.Event) -> None:
    index = await Index.open(root / "index.db")
    check_storage_identity(root, await index.storage_identity(), index_is_new=True)
    try:
        await index.add_token(ADMIN, "admin", token_sha256(ADMIN_TOKEN))
        leases = ReaderLeases()
        exports = ExportManager(index, root, leases)
        cfg = parse_config(f'[storage]\npath = "{root}"\n[[cameras]]\nid = "gate"\n'
                           'url = "rtsp://127.0.0.1:554/live"\n')  # fmt: skip
        app = make_app(lambda: [STATUS], index, root, leases=leases, exports=exports,
                       config=cfg.public, metrics=Metrics(lambda: [], index=index))  # fmt: skip
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            ready.set_result(Served(f"http://{host}:{port}", asyncio.get_running_loop(), exports))
            await stop.wait()
        finally:
            await runner.cleanup()
            await exports.stop()
    finally:
        await index.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fuzz")

    async def record() -> None:
        clip = encode_clip(VideoCodec.H264, 100)
        index = await record_clip(root, clip, seconds=RECORDED_S, wall_start_ns=WALL_START_NS)
        await index.close()

    asyncio.run(record())
    ready: concurrent.futures.Future[Served] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def main() -> None:
        try:
            loop.run_until_complete(_serve(root, ready, stop))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="fuzz-server", daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=60)
    finally:
        with contextlib.suppress(RuntimeError):  # closed already if the server never started
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        assert not thread.is_alive(), "the server did not shut down"


def _schema(*, token: bool) -> BaseSchema:
    schema = schemathesis.openapi.from_dict(openapi.document(), config=schemathesis.Config())
    if token:
        schema.config.update(headers=bearer(ADMIN_TOKEN))
    return schema


admin = _schema(token=True)
anonymous = _schema(token=False)
gate = _schema(token=True)
gate.config.update(parameters={"path.id": "gate"})
gate = gate.include(path_regex=r"^/api/v1/cameras/\{id\}")


@admin.parametrize()
@FUZZ
def test_every_answer_to_an_admin_matches_the_document(case: Case[Any], served: Served) -> None:
    case.call_and_validate(base_url=served.base_url, checks=CHECKS)


@gate.parametrize()
@FUZZ
def test_camera_routes_on_the_recorded_camera_match_the_document(
    case: Case[Any], served: Served
) -> None:
    case.call_and_validate(base_url=served.base_url, checks=CHECKS)


@anonymous.parametrize()
@settings(FUZZ, max_examples=15)
def test_every_answer_without_a_token_matches_the_document(case: Case[Any], served: Served) -> None:
    response = case.call_and_validate(base_url=served.base_url, checks=CHECKS)
    if case.path != "/healthz" and case.method == case.operation.method.upper():
        assert response.status_code == 401


# --- hand-made requests: the 2xx answers and edge cases random inputs do not reach --------


def _call(served: Served, method: str, path: str, status: int, *, token: str | None = ADMIN_TOKEN,
          headers: dict[str, str] | None = None, **parts: Any) -> Response:  # fmt: skip
    """One request, held to the same checks as the fuzzed ones, answered with ``status``."""
    sent = {**(bearer(token) if token is not None else {}), **(headers or {})}
    case = anonymous[path][method].Case(headers=sent, **parts)
    response = case.call_and_validate(base_url=served.base_url, checks=CHECKS)
    assert response.status_code == status, response.text
    return response


def _camera(served: Served, route: str, status: int, query: dict[str, str] | None = None, *,
            headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    """``GET /api/v1/cameras/gate/<route>?<query>``."""
    return _call(served, "GET", f"/api/v1/cameras/{{id}}/{route}", status, headers=headers,
                 path_parameters={"id": "gate"}, query=query)  # fmt: skip


def _at(seconds: float, tz: timezone = UTC) -> str:
    """``seconds`` into the recording, in RFC 3339 at ``tz``."""
    return format_rfc3339(WALL_START_NS * 9 // 100_000 + int(seconds * SECOND), tz)


def test_the_served_document_is_the_one_fuzzed(served: Served) -> None:
    doc = _call(served, "GET", "/api/v1/openapi.json", 200).json()
    assert doc == json.loads(json.dumps(openapi.document()))


def test_recorded_answers_match_the_document(served: Served) -> None:
    ict = timezone(timedelta(hours=7))
    _call(served, "GET", "/healthz", 200)
    _call(served, "GET", "/metrics", 200)
    _call(served, "GET", "/api/v1/cameras", 200)
    _call(served, "GET", "/api/v1/cameras/{id}", 200, path_parameters={"id": "gate"})
    found = _camera(
        served, "recordings", 200, {"start": _at(-60, ict), "end": _at(RECORDED_S + 60, ict)}
    )
    assert len(found.json()["runs"]) == 1 and len(found.json()["segments"]) >= 3

    _camera(served, "snapshot.jpg", 200)
    _camera(served, "snapshot.jpg", 200, {"at": _at(90)})
    _camera(served, "snapshot.jpg", 404, {"at": _at(-60)})

    span = {"start": _at(30, ict), "end": _at(150, ict)}
    whole = _camera(served, "video.mp4", 200, span)
    assert whole.content[4:8] == b"ftyp"
    part = _camera(served, "video.mp4", 206, span, headers={"Range": "bytes=0-99"})
    assert part.content == whole.content[:100]
    past_the_end = {"Range": f"bytes={len(whole.content)}-"}
    _camera(served, "video.mp4", 416, span, headers=past_the_end)
    _camera(served, "video.mp4", 404, {"start": _at(-120), "end": _at(-60)})


def test_an_export_from_request_to_download_matches_the_document(served: Served) -> None:
    body = {"camera": "gate", "start": _at(10), "end": _at(70), "reason": "fuzz",
            "requested_by": "test"}  # fmt: skip
    export = _call(served, "POST", "/api/v1/exports", 202, body=body).json()
    served.run(served.exports.wait(export["id"]))  # no polling: wait on the server's loop
    ids = {"id": export["id"]}
    done = _call(served, "GET", "/api/v1/exports/{id}", 200, path_parameters=ids).json()
    assert done["state"] == "done", done
    _call(served, "GET", "/api/v1/exports", 200)
    clip = _call(served, "GET", "/api/v1/exports/{id}/file", 200, path_parameters=ids)
    assert len(clip.content) == done["size_bytes"]
    tail = {"Range": "bytes=-10"}
    _call(served, "GET", "/api/v1/exports/{id}/file", 206, path_parameters=ids, headers=tail)
    _call(served, "GET", "/api/v1/exports/{id}/manifest", 200, path_parameters=ids)


def test_hold_answers_match_the_document(served: Served) -> None:
    body = {"cameras": ["gate"], "start": _at(0), "end": _at(60), "case": "fuzz",
            "reason": "fuzz", "until": "2099-01-01T00:00:00Z"}  # fmt: skip
    hold = _call(served, "POST", "/api/v1/holds", 201, body=body).json()
    _call(served, "POST", "/api/v1/holds", 404, body={**body, "cameras": ["nope"]})
    _call(served, "POST", "/api/v1/holds", 400, body={**body, "until": _at(-60)})
    ids = {"id": hold["id"]}
    _call(served, "GET", "/api/v1/holds/{id}", 200, path_parameters=ids)
    _call(served, "GET", "/api/v1/holds", 200, query={"active": "true"})
    _call(served, "DELETE", "/api/v1/holds/{id}", 200, path_parameters=ids)
    _call(served, "DELETE", "/api/v1/holds/{id}", 409, path_parameters=ids)
    _call(served, "GET", "/api/v1/holds/{id}", 404, path_parameters={"id": "0" * 16})


def test_token_answers_match_the_document(served: Served) -> None:
    new = {"name": "fuzz-viewer", "role": "viewer"}
    viewer = _call(served, "POST", "/api/v1/tokens", 201, body=new).json()["token"]
    _call(served, "POST", "/api/v1/tokens", 409, body=new)
    _call(served, "GET", "/api/v1/tokens", 200)
    # A viewer is refused the operator's and the admin's operations with a documented 403.
    _call(served, "GET", "/api/v1/exports", 403, token=viewer)
    _call(served, "GET", "/api/v1/tokens", 403, token=viewer)
    _call(served, "DELETE", "/api/v1/tokens/{id}", 204, path_parameters={"id": "fuzz-viewer"})
    _call(served, "DELETE", "/api/v1/tokens/{id}", 404, path_parameters={"id": "fuzz-viewer"})
    _call(served, "GET", "/api/v1/cameras", 401, token=viewer)
    _call(served, "GET", "/api/v1/cameras", 401, token=None)


@pytest.mark.parametrize(
    ("start", "end", "bad"),
    [
        ("0001-01-01T00:00:00+05:00", "0001-01-02T00:00:00+05:00", "start"),  # UTC year 0
        ("9999-12-30T23:59:59-05:00", "9999-12-31T23:59:59-05:00", "end"),  # UTC year 10000
        ("2026-11-28T21:00:00+24:00", "2026-11-28T22:00:00+24:00", "start"),  # no such offset
        ("2026-11-28T21:00:00+07:60", "2026-11-28T22:00:00+07:60", "end"),
    ],
)
def test_times_out_of_range_are_a_documented_400(
    served: Served, start: str, end: str, bad: str
) -> None:
    span = {"start": start, "end": end}
    _camera(served, "recordings", 400, span)
    _camera(served, "video.mp4", 400, span)
    _camera(served, "snapshot.jpg", 400, {"at": span[bad]})
    body = {"camera": "gate", **span, "reason": "r", "requested_by": "t"}
    _call(served, "POST", "/api/v1/exports", 400, body=body)
