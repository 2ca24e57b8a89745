"""Bearer tokens for the HTTP API: roles, the route policy, the middleware and the token routes.

Each request but ``/healthz`` carries ``Authorization: Bearer nvr_...``. The index keeps only
the token's SHA-256, so a copy of the index grants nothing. A plain, unsalted hash is right
here: a token is 256 random bits, so there is nothing to guess and no reason for a slow hash.

Roles are ordered ``viewer < operator < admin``; a role reaches every route of the roles below
it. ``ROUTE_ROLES`` names the role each route needs; a route it does not list needs ``admin``,
so a route added without a policy is closed rather than open.

A token never appears in a log line or an error message: only its name does.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from enum import StrEnum

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from nvr.api.times import format_rfc3339
from nvr.clock import Clock, SystemClock
from nvr.errors import StorageError
from nvr.ingest.timeline import ns_to_90k
from nvr.storage.index import Index
from nvr.storage.index_rows import TokenRow

log = logging.getLogger(__name__)

TOKEN_PREFIX = "nvr_"
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
TOUCH_EVERY_90K = 60 * 90_000  # a token's last use is recorded at most once a minute

# RFC 6750 b64token, after the scheme and one or more spaces.
_BEARER = re.compile(r"(?i)bearer +([A-Za-z0-9._~+/-]+=*) *")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="nvr"'}


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

ROUTE_ROLES: dict[tuple[str, str], Role | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/api/v1/openapi.json"): Role.VIEWER,
    ("GET", "/api/v1/cameras"): Role.VIEWER,
    ("GET", "/api/v1/cameras/{id}"): Role.VIEWER,
    ("GET", "/api/v1/cameras/{id}/recordings"): Role.VIEWER,
    ("GET", "/api/v1/cameras/{id}/snapshot.jpg"): Role.VIEWER,
    ("GET", "/api/v1/cameras/{id}/video.mp4"): Role.VIEWER,
    ("GET", "/metrics"): Role.VIEWER,
    ("POST", "/api/v1/exports"): Role.OPERATOR,
    ("GET", "/api/v1/exports"): Role.OPERATOR,
    ("GET", "/api/v1/exports/{id}"): Role.OPERATOR,
    ("GET", "/api/v1/exports/{id}/file"): Role.OPERATOR,
    ("GET", "/api/v1/exports/{id}/manifest"): Role.OPERATOR,
    ("POST", "/api/v1/holds"): Role.OPERATOR,
    ("GET", "/api/v1/holds"): Role.OPERATOR,
    ("GET", "/api/v1/holds/{id}"): Role.OPERATOR,
    ("DELETE", "/api/v1/holds/{id}"): Role.ADMIN,
    ("GET", "/api/v1/config"): Role.ADMIN,
    ("GET", "/api/v1/tokens"): Role.ADMIN,
    ("POST", "/api/v1/tokens"): Role.ADMIN,
    ("DELETE", "/api/v1/tokens/{id}"): Role.ADMIN,
}
"""(method, route template as registered in aiohttp) -> the least role it needs; None: open."""

TOKEN_KEY: web.RequestKey[TokenRow] = web.RequestKey("token")
"""The token that authorized the request (absent on open routes)."""

_STORE_KEY: web.AppKey[Index] = web.AppKey("token_store")


# --- tokens and roles -----------------------------------------------------------------------


def new_token() -> str:
    """A fresh token: the prefix (so a leaked one is recognizable) and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    """What the index stores for a token: its SHA-256 in lower-case hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def role_allows(have: Role, need: Role) -> bool:
    return _RANK[have] >= _RANK[need]


def required_role(method: str, template: str) -> Role | None:
    """The least role a route needs (None: open). HEAD follows GET; unlisted routes: admin."""
    key = ("GET" if method == "HEAD" else method, template)
    return ROUTE_ROLES.get(key, Role.ADMIN)  # a listed None stays None: open


def check_token_name(name: object) -> str | None:
    """Why ``name`` cannot name a token, or None when it can."""
    if not isinstance(name, str) or not TOKEN_NAME.fullmatch(name):
        return ("'name' must be 1 to 64 letters, digits, '.', '_', '@' or '-', starting with "
                "a letter or digit")  # fmt: skip
    return None


def token_json(t: TokenRow) -> dict[str, object]:
    """A token as the API and the CLI show it: never its hash."""
    return {
        "name": t.name,
        "role": t.role,
        "created": format_rfc3339(t.created_90k),
        "last_used": format_rfc3339(t.last_used_90k) if t.last_used_90k is not None else None,
        "revoked": format_rfc3339(t.revoked_90k) if t.revoked_90k is not None else None,
    }


# --- the middleware -------------------------------------------------------------------------


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _unauthorized(message: str) -> web.Response:
    return _error(401, "unauthorized", message, _CHALLENGE)


def auth_middleware(index: Index | None, *, clock: Clock | None = None) -> Middleware:
    """Check the bearer token of every request to a route that is not open.

    ``index`` holds the tokens; with None there are none, so only open routes answer. A path
    no route matches is a JSON 404 (405 for a wrong method), with or without a token.
    """
    clock = clock or SystemClock()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = request.match_info
        if match.http_exception is not None:
            exc = match.http_exception
            if exc.status == 405:
                allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
                return _error(405, "method_not_allowed",
                              f"{request.method} is not allowed here", allow)  # fmt: skip
            return _error(exc.status, "not_found", "nothing here")
        resource = match.route.resource
        need = required_role(request.method, resource.canonical if resource else "")
        if need is None:
            return await handler(request)
        headers = request.headers.getall("Authorization", [])
        if not headers:
            return _unauthorized("this needs a bearer token: Authorization: Bearer <token>")
        found = _BEARER.fullmatch(headers[0]) if len(headers) == 1 else None
        if found is None:
            return _unauthorized("the Authorization header is not 'Bearer <token>'")
        if index is None:  # no token store: no token is valid
            return _unauthorized("the token is unknown or revoked")
        row = await index.token_by_hash(token_sha256(found[1]))
        if row is None:
            return _unauthorized("the token is unknown or revoked")
        have = Role(row.role)
        if not role_allows(have, need):
            message = f"this needs the {need} role; the token {row.name!r} has {have}"
            return _error(403, "forbidden", message)
        now_90k = ns_to_90k(clock.wall_ns())
        if row.last_used_90k is None or now_90k - row.last_used_90k >= TOUCH_EVERY_90K:
            try:
                await index.touch_token(row.id, now_90k)
            except StorageError as exc:
                log.warning("token %r: could not record its use: %s", row.name, exc)
        request[TOKEN_KEY] = row
        return await handler(request)

    return middleware


# --- token routes (admin) -------------------------------------------------------------------


async def list_tokens(request: web.Request) -> web.Response:
    tokens = await request.app[_STORE_KEY].tokens()
    return web.json_response({"tokens": [token_json(t) for t in tokens]})


async def create_token(request: web.Request) -> web.Response:
    """Make a token; the response is the only place the token itself is ever shown."""
    index = request.app[_STORE_KEY]
    try:
        body = await request.json()
    except ValueError:  # not JSON, or not UTF-8
        return _error(400, "bad_request", "the body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "bad_request", "the body must be a JSON object with 'name' and 'role'")
    unknown = sorted(set(body) - {"name", "role"})
    if unknown:
        return _error(400, "bad_request", f"unknown field {unknown[0]!r}")
    name, role = body.get("name"), body.get("role")
    problem = check_token_name(name)
    if problem is not None:
        return _error(400, "bad_request", problem)
    if not isinstance(role, str) or role not in {r.value for r in Role}:
        return _error(400, "bad_request", "'role' must be 'viewer', 'operator' or 'admin'")
    assert isinstance(name, str)
    if any(t.name == name for t in await index.tokens()):
        return _error(409, "conflict", f"a token named {name!r} already exists")
    token = new_token()
    row = await index.add_token(name, Role(role), token_sha256(token))
    log.info("API token %r (%s) created by %r", row.name, row.role, request[TOKEN_KEY].name)
    return web.json_response({"token": token, **token_json(row)}, status=201,
                             headers={"Cache-Control": "no-store"})  # fmt: skip


async def revoke_token(request: web.Request) -> web.Response:
    name = request.match_info["id"]
    if not await request.app[_STORE_KEY].revoke_token(name):
        return _error(404, "not_found", f"no valid token named {name!r}")
    log.info("API token %r revoked by %r", name, request[TOKEN_KEY].name)
    return web.Response(status=204)


def add_token_routes(app: web.Application, index: Index) -> None:
    """Serve ``/api/v1/tokens`` (admin only, by ``ROUTE_ROLES``) from ``index``."""
    app[_STORE_KEY] = index
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_delete("/api/v1/tokens/{id}", revoke_token)
