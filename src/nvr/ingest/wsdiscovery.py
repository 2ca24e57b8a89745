"""WS-Discovery (2005/04, as ONVIF devices speak it) without I/O.

``build_probe`` makes the SOAP 1.2 ``Probe`` datagram; ``parse_probe_matches`` turns one
received datagram into ``ProbeMatch`` facts (``probe_match``, re-exported here, with
``DiscoveryResults`` which folds the answers of several probes into one entry per device).

Hostile datagrams: the XML goes through ``safe_xml``, which refuses any DOCTYPE or entity
before expat would expand anything (no billion-laughs, no XXE). Inputs over
``MAX_DATAGRAM_BYTES`` are refused unparsed. Every failure is a ``DiscoveryError``.

Tolerance of real devices: elements are matched by local name, so any prefix and either
SOAP envelope (1.2 or the 1.1 of old firmware) and either WS-Discovery namespace (2005/04
or 1.1) are accepted; ``Types`` are resolved to ``{namespace}local`` where the prefix is
declared and kept as written where it is not; a Hello/Bye/Probe on the same socket gives
no matches rather than an error.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping, Sequence
from typing import NoReturn
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

from nvr.errors import DiscoveryError
from nvr.ingest.probe_match import DiscoveryResults, ProbeMatch, dedupe, normalize_uuid_urn
from nvr.ingest.safe_xml import ParsedXml, XmlError, local_name, parse

__all__ = [
    "ACTION_PROBE",
    "ACTION_PROBE_MATCHES",
    "ANONYMOUS",
    "DEFAULT_TYPES",
    "DISCOVERY_TO",
    "KNOWN_PREFIXES",
    "MAX_DATAGRAM_BYTES",
    "MULTICAST_GROUP",
    "NS_DN",
    "NS_SOAP11",
    "NS_SOAP12",
    "NS_TDS",
    "NS_WSA",
    "NS_WSD",
    "WSD_PORT",
    "DiscoveryResults",
    "ProbeMatch",
    "build_probe",
    "build_probe_match",
    "dedupe",
    "expand_type",
    "normalize_uuid_urn",
    "parse_probe",
    "parse_probe_matches",
]

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

_UINT32_MAX = 2**32 - 1
_HEX_LIMIT = 24


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
    if local_name(root.tag) != "Envelope":
        _fail(source, data, f"root element is <{local_name(root.tag)}>, not a SOAP Envelope")
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
        if local_name(item.tag) != "ProbeMatch":
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
                types=_qnames(parsed, types_el) if types_el is not None else (),
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
    if probe is None or local_name(root.tag) != "Envelope":
        return None
    message_id = _text(_child(header, "MessageID")) if header is not None else None
    if not message_id:
        _fail(source, data, "Probe has no MessageID")
    types_el = _child(probe, "Types")
    return message_id, _qnames(parsed, types_el) if types_el is not None else ()


def _parse_xml(data: bytes, source: str) -> ParsedXml:
    if len(data) > MAX_DATAGRAM_BYTES:
        raise DiscoveryError(
            f"WS-Discovery datagram from {source} is {len(data)} bytes, over the "
            f"{MAX_DATAGRAM_BYTES}-byte limit of one UDP datagram"
        )
    if not data.strip():
        raise DiscoveryError(f"empty WS-Discovery datagram from {source}")
    try:
        return parse(
            data, dialect="WS-Discovery", keep_prefixes_of={"Types"}, undeclared_prefixes=True
        )
    except XmlError as exc:
        _fail(source, data, str(exc))


def _qnames(parsed: ParsedXml, types_el: Element) -> tuple[str, ...]:
    return tuple(dict.fromkeys(parsed.resolve_qname(types_el, q) for q in _split(types_el)))


def _child(parent: Element | None, local: str) -> Element | None:
    if parent is None:
        return None
    for child in parent:
        if local_name(child.tag) == local:
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


def _fail(source: str, data: bytes, why: str) -> NoReturn:
    head = data[:_HEX_LIMIT].hex(" ")
    more = " ..." if len(data) > _HEX_LIMIT else ""
    raise DiscoveryError(
        f"unusable WS-Discovery datagram from {source}: {why} ({len(data)} bytes: {head}{more})"
    )
