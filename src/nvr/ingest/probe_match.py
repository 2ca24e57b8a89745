"""What WS-Discovery answers say about devices, and the answers folded into one entry per device.

``ProbeMatch`` is one device as one or more ProbeMatch answers describe it (``wsdiscovery``
parses them); ``DiscoveryResults`` folds the answers of several probes (multicast and
unicast, repeated sends) by the device's endpoint reference, whichever way it is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

_ONVIF_SCOPE = "onvif://www.onvif.org/"


@dataclass(frozen=True, slots=True)
class ProbeMatch:
    """One device as one or more ProbeMatch answers describe it.

    ``types`` are ``{namespace}local`` (or ``prefix:local`` when the device never declared
    the prefix); ``sources`` are the IP addresses the answers came from; ``relates_to`` is
    the MessageID of the probe answered, when the device said.
    """

    endpoint_ref: str
    types: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    xaddrs: tuple[str, ...] = ()
    metadata_version: int | None = None
    sources: tuple[str, ...] = ()
    relates_to: str | None = field(default=None, compare=False)

    @property
    def identity(self) -> str:
        """The endpoint reference normalised for comparison (``urn:uuid:``/``uuid:``, case)."""
        return normalize_uuid_urn(self.endpoint_ref)

    @property
    def source(self) -> str | None:
        return self.sources[0] if self.sources else None

    def scope_values(self, category: str) -> tuple[str, ...]:
        """Percent-decoded values of ``onvif://www.onvif.org/<category>/...`` scopes."""
        prefix = _ONVIF_SCOPE + category.lower() + "/"
        return tuple(
            unquote(s[len(prefix) :]).strip()
            for s in self.scopes
            if s.lower().startswith(prefix) and len(s) > len(prefix)
        )

    @property
    def name(self) -> str | None:
        return _first(self.scope_values("name"))

    @property
    def hardware(self) -> str | None:
        return _first(self.scope_values("hardware"))

    @property
    def location(self) -> str | None:
        """The first location scope's path, e.g. ``country/china`` or ``Gate 3``."""
        return _first(self.scope_values("location"))

    @property
    def mac(self) -> str | None:
        """The MAC some devices (Hikvision, Dahua) publish as a scope, lower case."""
        value = _first(self.scope_values("mac"))
        return value.lower() if value else None

    @property
    def preferred_xaddr(self) -> str | None:
        """An XAddr to talk to: one on an address the device answered from, else the first
        whose host is not IPv6 link-local (those need a zone we do not know)."""
        for url in self.xaddrs:
            if _url_host(url) in self.sources:
                return url
        for url in self.xaddrs:
            if not _url_host(url).lower().startswith("fe80:"):
                return url
        return _first(self.xaddrs)

    def merged(self, other: ProbeMatch) -> ProbeMatch:
        """This device's facts joined with another answer from the same device."""
        newer = other if (other.metadata_version or 0) > (self.metadata_version or 0) else self
        versions = [v for v in (self.metadata_version, other.metadata_version) if v is not None]
        return ProbeMatch(
            endpoint_ref=self.endpoint_ref,
            types=_union(self.types, other.types),
            scopes=_union(newer.scopes, self.scopes if newer is other else other.scopes),
            xaddrs=_union(self.xaddrs, other.xaddrs),
            metadata_version=max(versions) if versions else None,
            sources=_union(self.sources, other.sources),
            relates_to=self.relates_to,
        )


class DiscoveryResults:
    """Answers folded by device identity, in the order devices were first heard."""

    def __init__(self) -> None:
        self._by_identity: dict[str, ProbeMatch] = {}

    def add(self, matches: Iterable[ProbeMatch]) -> None:
        for match in matches:
            key = match.identity
            known = self._by_identity.get(key)
            self._by_identity[key] = match if known is None else known.merged(match)

    def __len__(self) -> int:
        return len(self._by_identity)

    def matches(self) -> tuple[ProbeMatch, ...]:
        return tuple(self._by_identity.values())


def dedupe(matches: Iterable[ProbeMatch]) -> tuple[ProbeMatch, ...]:
    results = DiscoveryResults()
    results.add(matches)
    return results.matches()


def normalize_uuid_urn(value: str) -> str:
    """``urn:uuid:ABC`` and ``uuid:abc`` compare equal (devices write either)."""
    text = value.strip()
    lowered = text.lower()
    if lowered.startswith("urn:uuid:"):
        return lowered[4:]
    if lowered.startswith("uuid:"):
        return lowered
    return text


def _url_host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(first + second))


def _first(values: tuple[str, ...]) -> str | None:
    return values[0] if values else None
