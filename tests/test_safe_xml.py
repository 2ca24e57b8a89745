"""The hostile-XML-refusing parser, on bytes alone (its callers' tests cover the messages)."""

from __future__ import annotations

import pytest

from nvr.ingest.safe_xml import XmlError, XmlRefused, local_name, parse

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<a>&lol2;</a>"""


def test_doctype_is_refused_naming_the_dialect() -> None:
    with pytest.raises(XmlRefused, match=r"^refused XML: a DOCTYPE \(Test never uses one\)$"):
        parse(BILLION_LAUGHS, dialect="Test")


def test_tags_are_clark_names_and_qnames_resolve_where_kept() -> None:
    data = b'<e:Env xmlns:e="urn:e" xmlns:t="urn:t"><e:Types>t:A u:B C</e:Types><e:X/></e:Env>'
    parsed = parse(data, dialect="Test", keep_prefixes_of={"Types"})
    types_el, other = list(parsed.root)
    assert parsed.root.tag == "{urn:e}Env"
    assert [parsed.resolve_qname(types_el, q) for q in ("t:A", "u:B", "C")] == [
        "{urn:t}A",
        "u:B",
        "C",
    ]
    assert parsed.resolve_qname(other, "t:A") == "t:A"  # not kept: as written


def test_undeclared_prefix_is_an_error_unless_asked_for() -> None:
    data = b"<s:Envelope><s:Body/></s:Envelope>"
    with pytest.raises(XmlError, match="unbound prefix") as info:
        parse(data, dialect="Test")
    assert info.value.unbound_prefix
    root = parse(data, dialect="Test", undeclared_prefixes=True).root
    assert root.tag == "s:Envelope"
    assert [local_name(root.tag), local_name(root[0].tag)] == ["Envelope", "Body"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<a><b></a>", "not XML (mismatched tag: line 1, column 8)"),
        (
            b'<?xml version="1.0" encoding="x-nope"?><a/>',
            "not usable XML (unknown encoding: x-nope)",
        ),
    ],
)
def test_other_failures_are_xml_errors(data: bytes, message: str) -> None:
    with pytest.raises(XmlError) as info:
        parse(data, dialect="Test")
    assert str(info.value) == message
    assert not isinstance(info.value, XmlRefused)
