"""XML from devices that may be hostile, read into ElementTree through expat directly.

Not ``ElementTree.fromstring``: the handlers here refuse any DOCTYPE, entity declaration or
external entity reference before expat would expand anything, and parameter-entity parsing
is off. Neither ONVIF SOAP nor WS-Discovery ever uses a DTD, so refusing them costs nothing
and rules out billion-laughs and XXE. Callers bound the input's size before parsing.

Every failure is an ``XmlError`` (``XmlRefused`` for a DTD or entity) whose text is ready to
go into the caller's own error: the caller translates it into ``DiscoveryError`` or
``CameraProtocolError`` with the peer's name.
"""

from __future__ import annotations

import xml.parsers.expat
from collections.abc import Collection
from dataclasses import dataclass
from typing import NoReturn
from xml.etree.ElementTree import Element, TreeBuilder

_UNBOUND_PREFIX = xml.parsers.expat.errors.codes[xml.parsers.expat.errors.XML_ERROR_UNBOUND_PREFIX]


class XmlError(Exception):
    """The bytes are not usable XML; the text says why (``not XML (mismatched tag: ...)``)."""

    def __init__(self, message: str, *, unbound_prefix: bool = False) -> None:
        super().__init__(message)
        self.unbound_prefix = unbound_prefix


class XmlRefused(XmlError):
    """A DOCTYPE or an entity: refused before expat expanded or fetched anything."""


@dataclass(frozen=True, slots=True)
class ParsedXml:
    root: Element
    # Prefix -> namespace in scope at each element whose local name was asked for (by id).
    nsmaps: dict[int, dict[str, str]]

    def resolve_qname(self, element: Element, qname: str) -> str:
        """A QName in ``element``'s text as ``{namespace}local``; as written when its prefix
        is not declared there (or ``element`` was not one whose prefixes were kept)."""
        prefix, sep, local = qname.rpartition(":")
        uri = self.nsmaps.get(id(element), {}).get(prefix if sep else "")
        return f"{{{uri}}}{local}" if uri else qname


def parse(
    data: bytes,
    *,
    dialect: str,
    keep_prefixes_of: Collection[str] = (),
    undeclared_prefixes: bool = False,
) -> ParsedXml:
    """Parse ``data`` with DTDs and entities refused; tags are ``{namespace}local``.

    ``dialect`` names what the XML should be, for the refusal's text. The prefixes in scope at
    elements whose local name is in ``keep_prefixes_of`` are kept, for ``resolve_qname``. With
    ``undeclared_prefixes``, XML using a prefix it never declared (some firmware does) is read
    again with prefixes as part of the names (``prefix:local``), rather than refused.
    """
    try:
        return _parse(data, dialect, keep_prefixes_of, namespaces=True)
    except XmlError as exc:
        if not (undeclared_prefixes and exc.unbound_prefix):
            raise
    return _parse(data, dialect, keep_prefixes_of, namespaces=False)


def local_name(tag: str) -> str:
    """The local name of a Clark ``{ns}local`` or an unresolved ``prefix:local`` tag."""
    return tag.rpartition("}")[2].rpartition(":")[2]


def _parse(data: bytes, dialect: str, keep: Collection[str], *, namespaces: bool) -> ParsedXml:
    def refuse_doctype(*_args: object) -> NoReturn:
        raise XmlRefused(f"refused XML: a DOCTYPE ({dialect} never uses one)")

    builder = _NsTreeBuilder(keep)
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" " if namespaces else None)
    parser.buffer_text = True
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartNamespaceDeclHandler = builder.start_ns
    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = _refuse_entity
    parser.ExternalEntityRefHandler = _refuse_external
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise XmlError(f"not XML ({exc})", unbound_prefix=exc.code == _UNBOUND_PREFIX) from exc
    except (ValueError, LookupError, RecursionError) as exc:  # odd encodings, deep nesting
        raise XmlError(f"not usable XML ({exc})") from exc
    return ParsedXml(builder.close(), builder.nsmaps)


def _refuse_entity(name: str, *_args: object) -> NoReturn:
    raise XmlRefused(f"refused XML: an entity declaration ({name!r})")


def _refuse_external(*_args: object) -> NoReturn:
    raise XmlRefused("refused XML: an external entity reference")


class _NsTreeBuilder:
    """An ElementTree builder fed by expat that remembers the prefixes in scope at the
    elements named in ``keep`` (``Types``, say, whose text is made of QNames)."""

    def __init__(self, keep: Collection[str]) -> None:
        self._keep = keep
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
        if local_name(element.tag) in self._keep:
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
