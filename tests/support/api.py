"""API test helpers: tokens for the bearer-token checks."""

from __future__ import annotations

import secrets

from nvr.api.auth import new_token, token_sha256
from nvr.storage.index import Index

ISSUED_TOKENS: set[str] = set()  # every token the tests made: conftest checks no log line holds one


async def add_token(index: Index, role: str = "admin", name: str | None = None) -> str:
    """Store a new token of ``role`` in ``index``; returns the token itself."""
    token = new_token()
    ISSUED_TOKENS.add(token)
    await index.add_token(name or f"test-{role}-{secrets.token_hex(4)}", role, token_sha256(token))
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def auth_headers(index: Index, role: str = "admin") -> dict[str, str]:
    """Headers carrying a new token of ``role``."""
    return bearer(await add_token(index, role))
