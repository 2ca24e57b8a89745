"""RTSP authentication: ``WWW-Authenticate`` parsing, Basic, RFC 7616 Digest, the choice.

aiortsp's Digest ignores ``qop``, knows no ``-sess`` algorithms and never counts ``nc``, and it
picks Basic when a camera offers both. ``DigestAuth`` implements RFC 7616 (MD5 and SHA-256,
``qop=auth``, stale nonce) and ``choose_auth`` prefers Digest. Sans-IO: strings in, header
values out; ``RtspConnection.request`` drives it, and so does ONVIF's HTTP
(``onvif_soap.HttpAuth``): ``method`` and ``uri`` are whatever the request line has.
"""

from __future__ import annotations

import hashlib
import os
import re
from base64 import b64encode
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower-case: "basic", "digest", ...
    params: Mapping[str, str]  # lower-case names, unquoted values


_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values; one value may hold several challenges."""
    out: list[Challenge] = []
    for value in values:
        scheme: str | None = None
        params: dict[str, str] = {}
        i, n = 0, len(value)
        while i < n:
            if value[i] in " \t,":
                i += 1
                continue
            m = _TOKEN_RE.match(value, i)
            if m is None:
                i += 1
                continue
            name, j = m.group(0), m.end()
            k = j
            while k < n and value[k] in " \t":
                k += 1
            if k < n and value[k] == "=" and scheme is not None:
                k += 1
                while k < n and value[k] in " \t":
                    k += 1
                text, i = _param_value(value, k)
                params[name.lower()] = text
                continue
            if scheme is not None:
                out.append(Challenge(scheme, params))
            scheme, params, i = name.lower(), {}, j
        if scheme is not None:
            out.append(Challenge(scheme, params))
    return out


def _param_value(value: str, i: int) -> tuple[str, int]:
    if i < len(value) and value[i] == '"':
        chars: list[str] = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            chars.append(value[i])
            i += 1
        return "".join(chars), i + 1
    end = value.find(",", i)
    end = len(value) if end < 0 else end
    return value[i:end].strip(), end


class Authenticator(Protocol):
    scheme: str

    def authorization(self, method: str, uri: str) -> str: ...

    def on_success(self, authentication_info: str | None) -> None: ...


class BasicAuth:
    scheme = "Basic"

    def __init__(self, username: str, password: str) -> None:
        token = b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._header = f"Basic {token}"

    def authorization(self, method: str, uri: str) -> str:
        return self._header

    def on_success(self, authentication_info: str | None) -> None:
        return None


_DIGEST_HASHES: dict[str, Callable[[bytes], Any]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestAuth:
    """RFC 7616 Digest: MD5/SHA-256 (and ``-sess``), ``qop=auth`` with cnonce and ``nc``."""

    scheme = "Digest"

    def __init__(
        self, username: str, password: str, challenge: Challenge, *, cnonce: str | None = None
    ) -> None:
        self._username = username
        self._password = password
        self._fixed_cnonce = cnonce
        self._params: Mapping[str, str] = {}
        self._nc = 0
        self._cnonce = ""
        self.refresh(challenge)

    @staticmethod
    def supports(challenge: Challenge) -> bool:
        algorithm = challenge.params.get("algorithm", "MD5").upper().removesuffix("-SESS")
        return (
            challenge.scheme == "digest"
            and algorithm in _DIGEST_HASHES
            and "nonce" in challenge.params
        )

    def refresh(self, challenge: Challenge) -> None:
        """Take a new challenge (a new or stale nonce): ``nc`` starts over."""
        self._params = dict(challenge.params)
        self._nc = 0
        self._cnonce = self._fixed_cnonce or os.urandom(16).hex()

    @property
    def algorithm(self) -> str:
        return self._params.get("algorithm", "MD5").upper()

    def _qop(self) -> str | None:
        offered = {q.strip().lower() for q in self._params.get("qop", "").split(",")}
        if "auth" in offered:
            return "auth"
        if "auth-int" in offered:
            return "auth-int"
        return None

    def authorization(self, method: str, uri: str) -> str:
        algorithm = self.algorithm
        hash_fn = _DIGEST_HASHES[algorithm.removesuffix("-SESS")]

        def h(text: str) -> str:
            return str(hash_fn(text.encode("utf-8")).hexdigest())

        realm = self._params.get("realm", "")
        nonce = self._params.get("nonce", "")
        qop = self._qop()
        ha1 = h(f"{self._username}:{realm}:{self._password}")
        if algorithm.endswith("-SESS"):
            ha1 = h(f"{ha1}:{nonce}:{self._cnonce}")
        # Our requests have no body, so auth-int hashes the empty entity.
        ha2 = h(f"{method}:{uri}:{h('')}") if qop == "auth-int" else h(f"{method}:{uri}")
        fields = [
            f"username={_quote(self._username)}",
            f"realm={_quote(realm)}",
            f"nonce={_quote(nonce)}",
            f"uri={_quote(uri)}",
        ]
        if qop is None:
            response = h(f"{ha1}:{nonce}:{ha2}")
        else:
            self._nc += 1
            nc = f"{self._nc:08x}"
            response = h(f"{ha1}:{nonce}:{nc}:{self._cnonce}:{qop}:{ha2}")
            fields += [f"qop={qop}", f"nc={nc}", f"cnonce={_quote(self._cnonce)}"]
        fields.append(f"response={_quote(response)}")
        if "algorithm" in self._params:
            fields.append(f"algorithm={self._params['algorithm']}")
        if "opaque" in self._params:
            fields.append(f"opaque={_quote(self._params['opaque'])}")
        return "Digest " + ", ".join(fields)

    def on_success(self, authentication_info: str | None) -> None:
        if not authentication_info:
            return
        info = parse_challenges([f"Digest {authentication_info}"])
        nextnonce = info[0].params.get("nextnonce") if info else None
        if nextnonce:
            self._params = {**self._params, "nonce": nextnonce}
            self._nc = 0


def choose_auth(challenges: list[Challenge], username: str, password: str) -> Authenticator | None:
    """Digest over Basic, SHA-256 over MD5; None when nothing offered is supported."""
    digests = [c for c in challenges if DigestAuth.supports(c)]
    digests.sort(key=lambda c: 0 if c.params.get("algorithm", "").upper().startswith("SHA") else 1)
    if digests:
        return DigestAuth(username, password, digests[0])
    if any(c.scheme == "basic" for c in challenges):
        return BasicAuth(username, password)
    return None


def stale_digest(challenges: list[Challenge]) -> Challenge | None:
    for c in challenges:
        if c.scheme == "digest" and c.params.get("stale", "").lower() == "true":
            return c
    return None
