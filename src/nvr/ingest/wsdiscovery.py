"""WS-Discovery (2005/04, as ONVIF devices speak it) without I/O.

``build_probe`` makes the SOAP 1.2 ``Probe`` datagram; ``parse_probe_matches`` turns one
received datagram into ``ProbeMatch`` facts; ``DiscoveryResults`` folds the answers of
several probes (multicast and unicast, repeated sends) into one entry per device.

Hostile datagrams: the XML goes through expat directly (not ``ElementTree.fromstring``)
with handlers that refuse any DOCTYPE, entity declaration or external entity reference
before expat would expand anything, and with parameter-entity parsing off. ONVIF never
uses a DTD, so refusing them costs nothing and rules out billion-laughs and XXE. Inputs
over ``MAX_DATAGRAM_BYTES`` are refused unparsed. Every failure is a ``DiscoveryError``.

Tolerance of real devices: elements are matched by local name, so any prefix and either
SOAP envelope (1.2 or the 1.1 of old firmware) and either WS-Discovery namespace (2005/04
or 1.1) are accepted; ``Types`` are resolved to ``{namespace}local`` where the prefix is
declared and kept as written where it is not; a Hello/Bye/Probe on the same socket gives
no matches rather than an error.
"""

from __future__ import annotations

import re
import xml.parsers.expat
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import unquote, urlsplit
from xml.etree.ElementTree import Element, TreeBuilder
from xml.sax.saxutils import escape

from nvr.errors import DiscoveryError

MULTICAST_GROUP = "239.255.255.250"
WSD_PORT = 3702
# A UDP datagram cannot be larger; anything longer was not one datagram.
MAX_DATAGRAM_BYTES = 65_535

NS_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
NS_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
NS_WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
NS_TDS = "http://www.onvif.org/ver10/device/wsdl"
NS_DN = "http://www.onvif.org/ver10/network/wsdl"

DISCOVERY_TO = "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
ACTION_PROBE = f"{NS_WSD}/Probe"
ACTION_PROBE_MATCHES = f"{NS_WSD}/ProbeMatches"
ANONYMOUS = f"{NS_WSA}/role/anonymous"

#: Prefixes a caller may use in type names; anything else is written ``{namespace}local``.
KNOWN_PREFIXES: Mapping[str, str] = {"tds": NS_TDS, "dn": NS_DN}
DEFAULT_TYPES = ("tds:Device", "dn:NetworkVideoTransmitter")

_ONVIF_SCOPE = "onvif://www.onvif.org/"
_UINT32_MAX = 2**32 - 1
_HEX_LIMIT = 24


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


# ---------------------------------------------------------------- building


def build_probe(message_id: str, types: Sequence[str] = DEFAULT_TYPES) -> bytes:
    """A SOAP 1.2 WS-Discovery Probe for ``types`` (all of which a device must offer).

    ``types`` are ``tds:``/``dn:`` prefixed names or ``{namespace}local``.
    """
    decls, qnames = _declare_types(types)
    types_xml = f"<d:Types>{' '.join(qnames)}</d:Types>" if qnames else ""
    return _envelope(
        decls,
        header=(
            f'<a:Action s:mustUnderstand="1">{ACTION_PROBE}</a:Action>'
            f"<a:MessageID>{escape(message_id)}</a:MessageID>"
            f"<a:ReplyTo><a:Address>{ANONYMOUS}</a:Address></a:ReplyTo>"
            f'<a:To s:mustUnderstand="1">{DISCOVERY_TO}</a:To>'
        ),
        body=f"<d:Probe>{types_xml}</d:Probe>",
    )


def build_probe_match(
    *,
    message_id: str,
    relates_to: str | None,
    endpoint_ref: str,
    xaddrs: Sequence[str],
    types: Sequence[str] = DEFAULT_TYPES,
    scopes: Sequence[str] = (),
    metadata_version: int = 1,
) -> bytes:
    """A ProbeMatches answer with one ProbeMatch (what a device, or our test one, sends)."""
    decls, qnames = _declare_types(types)
    relates = f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>" if relates_to else ""
    return _envelope(
        decls,
        header=(
            f'<a:Action s:mustUnderstand="1">{ACTION_PROBE_MATCHES}</a:Action>'
            f"<a:MessageID>{escape(message_id)}</a:MessageID>{relates}"
            f'<a:To s:mustUnderstand="1">{ANONYMOUS}</a:To>'
        ),
        body=(
            "<d:ProbeMatches><d:ProbeMatch>"
            f"<a:EndpointReference><a:Address>{escape(endpoint_ref)}</a:Address>"
            "</a:EndpointReference>"
            f"<d:Types>{' '.join(qnames)}</d:Types>"
            f"<d:Scopes>{escape(' '.join(scopes))}</d:Scopes>"
            f"<d:XAddrs>{escape(' '.join(xaddrs))}</d:XAddrs>"
            f"<d:MetadataVersion>{int(metadata_version)}</d:MetadataVersion>"
            "</d:ProbeMatch></d:ProbeMatches>"
        ),
    )


def expand_type(name: str) -> str:
    """``tds:Device`` → ``{http://www.onvif.org/ver10/device/wsdl}Device``."""
    if name.startswith("{"):
        return name
    prefix, sep, local = name.partition(":")
    if sep and prefix in KNOWN_PREFIXES:
        return f"{{{KNOWN_PREFIXES[prefix]}}}{local}"
    raise ValueError(f"type {name!r}: use tds:/dn: or {{namespace}}local")


def _declare_types(types: Sequence[str]) -> tuple[str, list[str]]:
    namespaces: dict[str, str] = {}
    qnames: list[str] = []
    for name in types:
        ns, _, local = expand_type(name)[1:].partition("}")
        prefix = namespaces.setdefault(ns, _prefix_for(ns, len(namespaces)))
        qnames.append(f"{prefix}:{local}")
    decls = "".join(f' xmlns:{p}="{escape(ns)}"' for ns, p in namespaces.items())
    return decls, qnames


def _prefix_for(namespace: str, index: int) -> str:
    for prefix, ns in KNOWN_PREFIXES.items():
        if ns == namespace:
            return prefix
    return f"t{index}"


def _envelope(type_decls: str, *, header: str, body: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS_SOAP12}" xmlns:a="{NS_WSA}" xmlns:d="{NS_WSD}"{type_decls}>'
        f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


# ---------------------------------------------------------------- parsing


def parse_probe_matches(
    data: bytes, source: str, *, relates_to: Container[str] | None = None
) -> tuple[ProbeMatch, ...]:
    """The ProbeMatch entries of one datagram from ``source`` (an IP address).

    Other WS-Discovery messages (Hello, Bye, someone's Probe) give ``()``. With
    ``relates_to`` (our probes' MessageIDs, normalised by ``normalize_uuid_urn``), an
    answer whose RelatesTo names another probe is refused; one without RelatesTo passes.
    Raises ``DiscoveryError`` for anything that is not a usable answer.
    """
    parsed = _parse_xml(data, source)
    root = parsed.root
    if _local(root.tag) != "Envelope":
        _fail(source, data, f"root element is <{_local(root.tag)}>, not a SOAP Envelope")
    header = _child(root, "Header")
    body = _child(root, "Body")
    if body is None:
        _fail(source, data, "SOAP Envelope has no Body")
    fault = _child(body, "Fault")
    if fault is not None:
        reason = " ".join(t.strip() for t in fault.itertext() if t.strip())
        raise DiscoveryError(f"WS-Discovery answer from {source} is a SOAP fault: {reason[:200]}")
    container = _child(body, "ProbeMatches")
    if container is None:
        return ()  # Hello, Bye, Probe, Resolve...: not an answer to us
    related = _text(_child(header, "RelatesTo")) if header is not None else None
    if related and relates_to is not None and normalize_uuid_urn(related) not in relates_to:
        raise DiscoveryError(
            f"WS-Discovery answer from {source} relates to {related[:80]!r}, not a probe of ours"
        )
    matches: list[ProbeMatch] = []
    problems: list[str] = []
    for item in container:
        if _local(item.tag) != "ProbeMatch":
            continue
        epr = _child(item, "EndpointReference")
        address = _text(_child(epr, "Address")) if epr is not None else None
        if not address:
            problems.append("a ProbeMatch has no EndpointReference/Address")
            continue
        types_el = _child(item, "Types")
        matches.append(
            ProbeMatch(
                endpoint_ref=address,
                types=parsed.qnames(types_el) if types_el is not None else (),
                scopes=_split(_child(item, "Scopes")),
                xaddrs=_split(_child(item, "XAddrs")),
                metadata_version=_uint32(_text(_child(item, "MetadataVersion"))),
                sources=(source,),
                relates_to=related,
            )
        )
    if not matches:
        _fail(source, data, problems[0] if problems else "ProbeMatches holds no ProbeMatch")
    return tuple(matches)


def parse_probe(data: bytes, source: str) -> tuple[str, tuple[str, ...]] | None:
    """``(message_id, types)`` of a Probe datagram, ``None`` for other messages.

    For responders (our test device); types are resolved like ``ProbeMatch.types``.
    """
    parsed = _parse_xml(data, source)
    root = parsed.root
    header = _child(root, "Header")
    body = _child(root, "Body")
    probe = _child(body, "Probe") if body is not None else None
    if probe is None or _local(root.tag) != "Envelope":
        return None
    message_id = _text(_child(header, "MessageID")) if header is not None else None
    if not message_id:
        _fail(source, data, "Probe has no MessageID")
    types_el = _child(probe, "Types")
    return message_id, parsed.qnames(types_el) if types_el is not None else ()


class _Refused(Exception):
    """Raised inside expat handlers to stop at a DTD or entity."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    root: Element
    # Prefix → namespace in scope at each Types element (by id), to resolve its QNames.
    nsmaps: dict[int, dict[str, str]]

    def qnames(self, element: Element) -> tuple[str, ...]:
        nsmap = self.nsmaps.get(id(element), {})
        resolved: list[str] = []
        for qname in _split(element):
            prefix, sep, local = qname.rpartition(":")
            uri = nsmap.get(prefix if sep else "")
            resolved.append(f"{{{uri}}}{local}" if uri else qname)
        return tuple(dict.fromkeys(resolved))


def _parse_xml(data: bytes, source: str) -> _Parsed:
    if len(data) > MAX_DATAGRAM_BYTES:
        raise DiscoveryError(
            f"WS-Discovery datagram from {source} is {len(data)} bytes, over the "
            f"{MAX_DATAGRAM_BYTES}-byte limit of one UDP datagram"
        )
    if not data.strip():
        raise DiscoveryError(f"empty WS-Discovery datagram from {source}")
    try:
        return _expat_parse(data, namespaces=True)
    except xml.parsers.expat.ExpatError as exc:
        if exc.code != _UNBOUND_PREFIX:
            _fail(source, data, f"not XML ({exc})")
    except _Refused as exc:
        _fail(source, data, f"refused XML: {exc}")
    except (ValueError, LookupError, RecursionError) as exc:  # odd encodings, deep nesting
        _fail(source, data, f"not usable XML ({exc})")
    # Some firmware uses a prefix it never declared: read it again with prefixes as
    # part of the names (the local names are all we match on anyway).
    try:
        return _expat_parse(data, namespaces=False)
    except xml.parsers.expat.ExpatError as exc:
        _fail(source, data, f"not XML ({exc})")
    except _Refused as exc:
        _fail(source, data, f"refused XML: {exc}")
    except (ValueError, LookupError, RecursionError) as exc:
        _fail(source, data, f"not usable XML ({exc})")


_UNBOUND_PREFIX = xml.parsers.expat.errors.codes[xml.parsers.expat.errors.XML_ERROR_UNBOUND_PREFIX]


def _expat_parse(data: bytes, *, namespaces: bool) -> _Parsed:
    builder = _NsTreeBuilder()
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" " if namespaces else None)
    parser.buffer_text = True
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartNamespaceDeclHandler = builder.start_ns
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_entity
    parser.ExternalEntityRefHandler = _refuse_external
    parser.Parse(data, True)
    return _Parsed(builder.close(), builder.nsmaps)


def _refuse_doctype(*_args: object) -> NoReturn:
    raise _Refused("a DOCTYPE (WS-Discovery never uses one)")


def _refuse_entity(name: str, *_args: object) -> NoReturn:
    raise _Refused(f"an entity declaration ({name!r})")


def _refuse_external(*_args: object) -> NoReturn:
    raise _Refused("an external entity reference")


class _NsTreeBuilder:
    """An ElementTree builder fed by expat that remembers the prefixes in scope at each
    ``Types`` element, whose text is made of QNames."""

    def __init__(self) -> None:
        self._tree = TreeBuilder()
        self._pending: dict[str, str] = {}
        self._scopes: list[dict[str, str]] = [{}]
        self.nsmaps: dict[int, dict[str, str]] = {}

    def start_ns(self, prefix: str | None, uri: str | None) -> None:
        self._pending[prefix or ""] = uri or ""

    def start(self, name: str, attrs: dict[str, str]) -> None:
        scope = self._scopes[-1]
        if self._pending:
            scope = {**scope, **self._pending}
            self._pending = {}
        self._scopes.append(scope)
        element = self._tree.start(_clark(name), {_clark(k): v for k, v in attrs.items()})
        if _local(element.tag) == "Types":
            self.nsmaps[id(element)] = scope

    def end(self, name: str) -> None:
        self._scopes.pop()
        self._tree.end(_clark(name))

    def data(self, text: str) -> None:
        self._tree.data(text)

    def close(self) -> Element:
        return self._tree.close()


def _clark(expat_name: str) -> str:
    uri, sep, local = expat_name.rpartition(" ")
    return f"{{{uri}}}{local}" if sep else expat_name


def _local(tag: str) -> str:
    """The local name of a Clark ``{ns}local`` or an unresolved ``prefix:local`` tag."""
    return tag.rpartition("}")[2].rpartition(":")[2]


def _child(parent: Element | None, local: str) -> Element | None:
    if parent is None:
        return None
    for child in parent:
        if _local(child.tag) == local:
            return child
    return None


def _text(element: Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def _split(element: Element | None) -> tuple[str, ...]:
    text = _text(element)
    return tuple(dict.fromkeys(text.split())) if text else ()


def _uint32(text: str | None) -> int | None:
    if text is None or not re.fullmatch(r"\+?[0-9]{1,10}", text):
        return None
    value = int(text)
    return value if value <= _UINT32_MAX else None


def _url_host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(first + second))


def _first(values: tuple[str, ...]) -> str | None:
    return values[0] if values else None


def _fail(source: str, data: bytes, why: str) -> NoReturn:
    head = data[:_HEX_LIMIT].hex(" ")
    more = " ..." if len(data) > _HEX_LIMIT else ""
    raise DiscoveryError(
        f"unusable WS-Discovery datagram from {source}: {why} ({len(data)} bytes: {head}{more})"
    )
