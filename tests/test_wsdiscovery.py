"""WS-Discovery messages: bytes in, facts out.

The device samples are written for these tests in the shapes ONVIF cameras are publicly
documented to send (SOAP-ENV/env/soap prefixes, SOAP 1.1 from old firmware, several
XAddrs with IPv6 link-local ones, scopes of name/hardware/location/MAC); the addresses
and identifiers in them are made up.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvr.errors import DiscoveryError
from nvr.ingest.wsdiscovery import (
    MAX_DATAGRAM_BYTES,
    NS_DN,
    NS_TDS,
    DiscoveryResults,
    ProbeMatch,
    build_probe,
    build_probe_match,
    dedupe,
    normalize_uuid_urn,
    parse_probe,
    parse_probe_matches,
)

TDS_DEVICE = f"{{{NS_TDS}}}Device"
DN_NVT = f"{{{NS_DN}}}NetworkVideoTransmitter"
OUR_ID = "urn:uuid:6e0b8f1a-3c57-4d0e-9a55-1f2f7c0e4b11"

HIKVISION = b"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope"
  xmlns:SOAP-ENC="http://www.w3.org/2003/05/soap-encoding"
  xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing"
  xmlns:wsdd="http://schemas.xmlsoap.org/ws/2005/04/discovery"
  xmlns:dn="http://www.onvif.org/ver10/network/wsdl"
  xmlns:tds="http://www.onvif.org/ver10/device/wsdl">
 <SOAP-ENV:Header>
  <wsa:MessageID>uuid:1419d68a-1dd2-11b2-a105-A1B2C3D4E5F6</wsa:MessageID>
  <wsa:RelatesTo>urn:uuid:6E0B8F1A-3C57-4D0E-9A55-1F2F7C0E4B11</wsa:RelatesTo>
  <wsa:To SOAP-ENV:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To>
  <wsa:Action SOAP-ENV:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsa:Action>
  <wsdd:AppSequence InstanceId="1700000000" MessageNumber="7"/>
 </SOAP-ENV:Header>
 <SOAP-ENV:Body>
  <wsdd:ProbeMatches>
   <wsdd:ProbeMatch>
    <wsa:EndpointReference>
     <wsa:Address>urn:uuid:3f4e5a6b-1dd2-11b2-a105-A1B2C3D4E5F6</wsa:Address>
    </wsa:EndpointReference>
    <wsdd:Types>dn:NetworkVideoTransmitter tds:Device</wsdd:Types>
    <wsdd:Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/Profile/Streaming
     onvif://www.onvif.org/MAC/A1:B2:C3:D4:E5:F6 onvif://www.onvif.org/hardware/DS-2CD2143G2-I
     onvif://www.onvif.org/name/HIKVISION%20DS-2CD2143G2-I onvif://www.onvif.org/location/city/hangzhou</wsdd:Scopes>
    <wsdd:XAddrs>http://192.168.1.64/onvif/device_service http://[fe80::a3b2:c3ff:fed4:e5f6]/onvif/device_service</wsdd:XAddrs>
    <wsdd:MetadataVersion>10</wsdd:MetadataVersion>
   </wsdd:ProbeMatch>
  </wsdd:ProbeMatches>
 </SOAP-ENV:Body>
</SOAP-ENV:Envelope>"""

DAHUA = b"""<?xml version="1.0" encoding="UTF-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"
 xmlns:soapenc="http://www.w3.org/2003/05/soap-encoding"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema"
 xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing"
 xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl"
 xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><env:Header>
<wsa:MessageID>urn:uuid:9d3c7e2a-0000-4000-8000-2c3ae8001122</wsa:MessageID>
<wsa:RelatesTo>uuid:6e0b8f1a-3c57-4d0e-9a55-1f2f7c0e4b11</wsa:RelatesTo>
<wsa:To env:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To>
<wsa:Action env:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsa:Action>
</env:Header><env:Body><d:ProbeMatches><d:ProbeMatch><wsa:EndpointReference>
<wsa:Address>uuid:4b7f3a10-2c3a-e800-1122-2c3ae8001122</wsa:Address></wsa:EndpointReference>
<d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types>
<d:Scopes>onvif://www.onvif.org/location/country/china onvif://www.onvif.org/name/Dahua
onvif://www.onvif.org/hardware/IPC-HDW2431T-AS onvif://www.onvif.org/Profile/Streaming
onvif://www.onvif.org/type/Network_Video_Transmitter
onvif://www.onvif.org/extension/unique_identifier/1 onvif://www.onvif.org/Profile/T</d:Scopes>
<d:XAddrs>http://192.168.1.108/onvif/device_service</d:XAddrs>
<d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches></env:Body></env:Envelope>"""

# Default namespaces instead of prefixes, an unprefixed type resolved by the default
# namespace in scope, a global and a link-local IPv6 XAddr.
AXIS = b"""<?xml version="1.0" encoding="utf-8"?>
<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope">
 <Header>
  <Action xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing">http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</Action>
  <MessageID xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing">urn:uuid:0b5c3e0e-7777-4c4c-8d8d-00408c123456</MessageID>
 </Header>
 <Body>
  <ProbeMatches xmlns="http://schemas.xmlsoap.org/ws/2005/04/discovery">
   <ProbeMatch>
    <EndpointReference xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing">
     <Address>urn:uuid:5a2e8f00-1111-4c4c-8d8d-00408c123456</Address>
    </EndpointReference>
    <Types xmlns:tds="http://www.onvif.org/ver10/device/wsdl"
      xmlns="http://www.onvif.org/ver10/network/wsdl">NetworkVideoTransmitter tds:Device</Types>
    <Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/Profile/Streaming
      onvif://www.onvif.org/hardware/M3106-LVE%20Mk%20II onvif://www.onvif.org/name/AXIS%20M3106-LVE%20Mk%20II
      onvif://www.onvif.org/location/Gate%203</Scopes>
    <XAddrs>http://192.168.0.90:80/onvif/device_service
      http://[2001:db8::40:8cff:fe12:3456]/onvif/device_service
      http://[fe80::240:8cff:fe12:3456]/onvif/device_service</XAddrs>
    <MetadataVersion>3</MetadataVersion>
   </ProbeMatch>
  </ProbeMatches>
 </Body>
</Envelope>"""

# Old firmware: SOAP 1.1, no RelatesTo, no Types, two endpoints in one answer.
SOAP11_NVR = b"""<?xml version="1.0"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
 xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery">
<soap:Header><a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</a:Action>
<a:MessageID>uuid:11111111-2222-3333-4444-555555555555</a:MessageID></soap:Header>
<soap:Body><d:ProbeMatches>
<d:ProbeMatch><a:EndpointReference><a:Address>urn:uuid:aaaaaaaa-0000-0000-0000-000000000001</a:Address></a:EndpointReference>
<d:Scopes>onvif://www.onvif.org/Name/Channel_1</d:Scopes><d:XAddrs>http://10.1.2.3:8899/onvif/device_service</d:XAddrs>
<d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch>
<d:ProbeMatch><a:EndpointReference><a:Address>urn:uuid:aaaaaaaa-0000-0000-0000-000000000002</a:Address></a:EndpointReference>
<d:XAddrs>http://10.1.2.3:8900/onvif/device_service</d:XAddrs></d:ProbeMatch>
</d:ProbeMatches></soap:Body></soap:Envelope>"""

HELLO = b"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"
 xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing"
 xmlns:wsd="http://schemas.xmlsoap.org/ws/2005/04/discovery">
<soap:Header>
<wsa:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</wsa:To>
<wsa:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/Hello</wsa:Action>
<wsa:MessageID>urn:uuid:d7244000-cdc1-48e7-925b-25a744e6c6ae</wsa:MessageID>
</soap:Header>
<soap:Body>
<wsd:Hello>
<wsa:EndpointReference>
<wsa:Address>urn:uuid:c69f7c8c-cfe5-44ce-8c9c-47a55d291d90</wsa:Address>
</wsa:EndpointReference>
<wsd:Types>wsdp:Device</wsd:Types>
<wsd:MetadataVersion>35</wsd:MetadataVersion>
</wsd:Hello>
</soap:Body>
</soap:Envelope>"""

FAULT = b"""<?xml version="1.0" encoding="UTF-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>
<env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>d:MatchingRuleNotSupported</env:Value></env:Subcode></env:Code>
<env:Reason><env:Text xml:lang="en">the xml format error</env:Text></env:Reason>
</env:Fault></env:Body></env:Envelope>"""


def _one(data: bytes, source: str = "192.168.1.64") -> ProbeMatch:
    (match,) = parse_probe_matches(data, source)
    return match


# ---------------------------------------------------------------- building


def test_probe_has_onvif_types_and_ws_addressing_headers() -> None:
    data = build_probe(OUR_ID)
    root = ET.fromstring(data)
    soap = "{http://www.w3.org/2003/05/soap-envelope}"
    wsa = "{http://schemas.xmlsoap.org/ws/2004/08/addressing}"
    wsd = "{http://schemas.xmlsoap.org/ws/2005/04/discovery}"
    assert root.tag == f"{soap}Envelope"
    header = root.find(f"{soap}Header")
    assert header is not None
    assert header.findtext(f"{wsa}To") == "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
    assert header.findtext(f"{wsa}Action") == f"{wsd[1:-1]}/Probe"
    assert header.findtext(f"{wsa}MessageID") == OUR_ID
    assert b'xmlns:tds="http://www.onvif.org/ver10/device/wsdl"' in data
    assert b'xmlns:dn="http://www.onvif.org/ver10/network/wsdl"' in data
    assert b"<d:Types>tds:Device dn:NetworkVideoTransmitter</d:Types>" in data
    assert parse_probe(data, "127.0.0.1") == (OUR_ID, (TDS_DEVICE, DN_NVT))


def test_probe_types_may_be_given_in_clark_notation() -> None:
    data = build_probe(OUR_ID, ("{urn:example:cams}Thermal", "dn:NetworkVideoTransmitter"))
    assert parse_probe(data, "127.0.0.1") == (OUR_ID, ("{urn:example:cams}Thermal", DN_NVT))
    assert parse_probe(build_probe(OUR_ID, ()), "127.0.0.1") == (OUR_ID, ())


def test_probe_refuses_a_prefix_it_cannot_declare() -> None:
    with pytest.raises(ValueError, match="'xyz:Device'"):
        build_probe(OUR_ID, ("xyz:Device",))


def test_probe_match_builder_round_trips() -> None:
    data = build_probe_match(
        message_id="urn:uuid:1",
        relates_to=OUR_ID,
        endpoint_ref="urn:uuid:dev<&>",
        xaddrs=["http://127.0.0.2/onvif/device_service"],
        scopes=["onvif://www.onvif.org/name/Yard%20Cam"],
        metadata_version=4,
    )
    match = _one(data, "127.0.0.2")
    assert match == ProbeMatch(
        endpoint_ref="urn:uuid:dev<&>",
        types=(TDS_DEVICE, DN_NVT),
        scopes=("onvif://www.onvif.org/name/Yard%20Cam",),
        xaddrs=("http://127.0.0.2/onvif/device_service",),
        metadata_version=4,
        sources=("127.0.0.2",),
    )
    assert match.relates_to == OUR_ID
    assert match.name == "Yard Cam"


def test_other_messages_are_not_probes() -> None:
    assert parse_probe(HIKVISION, "192.168.1.64") is None
    assert parse_probe(HELLO, "192.168.1.9") is None


# ---------------------------------------------------------------- device samples


def test_hikvision_shaped_answer() -> None:
    match = _one(HIKVISION)
    assert match.endpoint_ref == "urn:uuid:3f4e5a6b-1dd2-11b2-a105-A1B2C3D4E5F6"
    assert match.types == (DN_NVT, TDS_DEVICE)
    assert match.xaddrs == (
        "http://192.168.1.64/onvif/device_service",
        "http://[fe80::a3b2:c3ff:fed4:e5f6]/onvif/device_service",
    )
    assert len(match.scopes) == 6
    assert match.name == "HIKVISION DS-2CD2143G2-I"
    assert match.hardware == "DS-2CD2143G2-I"
    assert match.location == "city/hangzhou"
    assert match.mac == "a1:b2:c3:d4:e5:f6"
    assert match.metadata_version == 10
    assert match.sources == ("192.168.1.64",)
    assert match.source == "192.168.1.64"
    assert match.preferred_xaddr == "http://192.168.1.64/onvif/device_service"


def test_dahua_shaped_answer() -> None:
    match = _one(DAHUA, "192.168.1.108")
    assert match.identity == "uuid:4b7f3a10-2c3a-e800-1122-2c3ae8001122"
    assert (match.name, match.hardware, match.location) == (
        "Dahua",
        "IPC-HDW2431T-AS",
        "country/china",
    )
    assert match.scope_values("profile") == ("Streaming", "T")
    assert match.mac is None
    assert match.xaddrs == ("http://192.168.1.108/onvif/device_service",)


def test_axis_shaped_answer_with_default_namespaces() -> None:
    match = _one(AXIS, "192.168.0.90")
    assert match.types == (DN_NVT, TDS_DEVICE)
    assert match.name == "AXIS M3106-LVE Mk II"
    assert match.hardware == "M3106-LVE Mk II"
    assert match.location == "Gate 3"
    assert len(match.xaddrs) == 3
    assert match.relates_to is None
    assert match.preferred_xaddr == "http://192.168.0.90:80/onvif/device_service"


def test_preferred_xaddr_skips_link_local_when_the_source_is_not_listed() -> None:
    match = ProbeMatch(
        endpoint_ref="urn:uuid:x",
        xaddrs=("http://[fe80::1]/onvif/device_service", "http://203.0.113.7/onvif/device_service"),
        sources=("198.51.100.1",),
    )
    assert match.preferred_xaddr == "http://203.0.113.7/onvif/device_service"
    assert ProbeMatch(endpoint_ref="urn:uuid:x").preferred_xaddr is None


def test_soap11_answer_with_two_endpoints_and_no_types() -> None:
    first, second = parse_probe_matches(SOAP11_NVR, "10.1.2.3", relates_to={"uuid:whatever"})
    assert first.endpoint_ref.endswith("0001")
    assert first.types == ()
    assert first.name == "Channel_1"  # "Name" capitalised, as some firmware writes it
    assert first.xaddrs == ("http://10.1.2.3:8899/onvif/device_service",)
    assert second.endpoint_ref.endswith("0002")
    assert second.metadata_version is None
    assert second.scopes == ()
    assert second.name is None


def test_undeclared_prefix_is_read_by_local_names() -> None:
    data = (
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
        b"<wsdd:ProbeMatches><wsdd:ProbeMatch><wsa:EndpointReference><wsa:Address>"
        b"urn:uuid:77</wsa:Address></wsa:EndpointReference><wsdd:Types>dn:NetworkVideoTransmitter"
        b"</wsdd:Types><wsdd:XAddrs>http://10.0.0.7/onvif/device_service</wsdd:XAddrs>"
        b"</wsdd:ProbeMatch></wsdd:ProbeMatches></s:Body></s:Envelope>"
    )
    match = _one(data, "10.0.0.7")
    assert match.endpoint_ref == "urn:uuid:77"
    assert match.types == ("dn:NetworkVideoTransmitter",)  # prefix unknown: kept as written


def test_hello_and_probe_on_the_same_socket_are_ignored() -> None:
    assert parse_probe_matches(HELLO, "192.168.1.9") == ()
    assert parse_probe_matches(build_probe("urn:uuid:someone-else"), "192.168.1.9") == ()


def test_soap_fault_is_an_error_with_its_reason() -> None:
    with pytest.raises(DiscoveryError) as info:
        parse_probe_matches(FAULT, "192.168.1.64")
    assert str(info.value) == (
        "WS-Discovery answer from 192.168.1.64 is a SOAP fault: "
        "env:Sender d:MatchingRuleNotSupported the xml format error"
    )


# ---------------------------------------------------------------- RelatesTo


def test_relates_to_is_compared_without_case_or_urn_prefix() -> None:
    ours = {normalize_uuid_urn(OUR_ID)}
    assert _one(HIKVISION).relates_to is not None
    assert parse_probe_matches(HIKVISION, "192.168.1.64", relates_to=ours)
    assert parse_probe_matches(DAHUA, "192.168.1.108", relates_to=ours)
    assert parse_probe_matches(AXIS, "192.168.0.90", relates_to=ours)  # none given: passes


def test_answer_to_another_probe_is_refused() -> None:
    with pytest.raises(DiscoveryError, match=r"relates to .* not a probe of ours"):
        parse_probe_matches(HIKVISION, "192.168.1.64", relates_to={"uuid:00000000"})


# ---------------------------------------------------------------- absurd and hostile


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", 7),
        ("+7", 7),
        ("4294967295", 4294967295),
        ("4294967296", None),
        ("-1", None),
        ("abc", None),
        ("1e3", None),
        ("9" * 400, None),
        ("", None),
    ],
)
def test_metadata_version_out_of_range_is_none(text: str, expected: int | None) -> None:
    data = SOAP11_NVR.replace(b"<d:MetadataVersion>1<", f"<d:MetadataVersion>{text}<".encode())
    assert parse_probe_matches(data, "10.1.2.3")[0].metadata_version == expected


def test_a_match_without_endpoint_reference_is_skipped() -> None:
    data = SOAP11_NVR.replace(
        b"<a:Address>urn:uuid:aaaaaaaa-0000-0000-0000-000000000001</a:Address>", b""
    )
    (match,) = parse_probe_matches(data, "10.1.2.3")
    assert match.endpoint_ref.endswith("0002")


def test_no_usable_match_is_an_error() -> None:
    data = DAHUA.replace(
        b"<wsa:Address>uuid:4b7f3a10-2c3a-e800-1122-2c3ae8001122</wsa:Address>", b""
    )
    with pytest.raises(DiscoveryError, match="a ProbeMatch has no EndpointReference/Address"):
        parse_probe_matches(data, "192.168.1.108")
    empty = DAHUA.split(b"<d:ProbeMatch>")[0] + b"</d:ProbeMatches></env:Body></env:Envelope>"
    with pytest.raises(DiscoveryError, match="ProbeMatches holds no ProbeMatch"):
        parse_probe_matches(empty, "192.168.1.108")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<Envelope><Body><ProbeMatches><ProbeMatch><EndpointReference><Address>&lol9;</Address>
</EndpointReference></ProbeMatch></ProbeMatches></Body></Envelope>"""

XXE = b"""<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Envelope><Body><ProbeMatches><ProbeMatch><EndpointReference><Address>&x;</Address>
</EndpointReference></ProbeMatch></ProbeMatches></Body></Envelope>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE Envelope SYSTEM "http://203.0.113.1/evil.dtd">
<Envelope><Body/></Envelope>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE e [<!ENTITY % p SYSTEM "http://203.0.113.1/p">%p;]>
<Envelope><Body/></Envelope>"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, XXE, EXTERNAL_DTD, PARAMETER_ENTITY])
def test_doctype_and_entities_are_refused(data: bytes) -> None:
    with pytest.raises(DiscoveryError) as info:
        parse_probe_matches(data, "203.0.113.9")
    assert str(info.value).startswith(
        "unusable WS-Discovery datagram from 203.0.113.9: refused XML: a DOCTYPE "
        "(WS-Discovery never uses one) ("
    )


def test_undefined_entity_reference_is_not_xml() -> None:
    data = HIKVISION.replace(b"urn:uuid:3f4e", b"&boom;urn:uuid:3f4e")
    with pytest.raises(DiscoveryError, match="undefined entity"):
        parse_probe_matches(data, "192.168.1.64")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x01junk", "not XML (not well-formed (invalid token): line 1, column 0)"),
        (b"M-SEARCH * HTTP/1.1\r\n\r\n", "not XML (syntax error: line 1, column 0)"),
        (b"<a><b></a>", "not XML (mismatched tag: line 1, column 8)"),
        (b"<soap:Fault/>", "root element is <Fault>, not a SOAP Envelope"),
        (
            b'<?xml version="1.0" encoding="x-nope"?><a/>',
            "not usable XML (unknown encoding: x-nope)",
        ),
        (b"<Envelope/>", "SOAP Envelope has no Body"),
        (b"<html><body>hi</body></html>", "root element is <html>, not a SOAP Envelope"),
    ],
)
def test_junk_datagrams_are_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        parse_probe_matches(data, "198.51.100.4")
    assert str(info.value).startswith(
        f"unusable WS-Discovery datagram from 198.51.100.4: {message} ({len(data)} bytes: "
    )


def test_empty_and_oversized_input_refused_unparsed() -> None:
    with pytest.raises(DiscoveryError, match=r"^empty WS-Discovery datagram from 10\.0\.0\.1$"):
        parse_probe_matches(b"  \r\n", "10.0.0.1")
    huge = HIKVISION.replace(b"</wsdd:Scopes>", b" " * 4_000_000 + b"</wsdd:Scopes>")
    with pytest.raises(DiscoveryError) as info:
        parse_probe_matches(huge, "10.0.0.1")
    assert str(info.value) == (
        f"WS-Discovery datagram from 10.0.0.1 is {len(huge)} bytes, over the "
        f"{MAX_DATAGRAM_BYTES}-byte limit of one UDP datagram"
    )


def test_deep_nesting_within_a_datagram_is_survived() -> None:
    data = b"<Envelope><Body>" + b"<x>" * 9_000 + b"</x>" * 9_000 + b"</Body></Envelope>"
    assert len(data) < MAX_DATAGRAM_BYTES
    assert parse_probe_matches(data, "10.0.0.1") == ()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_matches_or_discovery_error(data: bytes) -> None:
    with contextlib.suppress(DiscoveryError):
        parse_probe_matches(data, "10.0.0.1")


@pytest.mark.parametrize("sample", [HIKVISION, DAHUA, AXIS, SOAP11_NVR])
def test_every_truncation_gives_matches_or_discovery_error(sample: bytes) -> None:
    for end in range(len(sample)):
        with contextlib.suppress(DiscoveryError):
            parse_probe_matches(sample[:end], "10.0.0.1")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(HIKVISION) - 1), st.binary(min_size=1, max_size=8))
def test_corrupted_samples_give_matches_or_discovery_error(at: int, noise: bytes) -> None:
    data = HIKVISION[:at] + noise + HIKVISION[at + len(noise) :]
    try:
        for match in parse_probe_matches(data, "10.0.0.1"):
            assert match.endpoint_ref
    except DiscoveryError:
        pass


# ---------------------------------------------------------------- de-duplication


def test_same_device_via_multicast_and_unicast_appears_once() -> None:
    via_multicast = _one(HIKVISION, "192.168.1.64")
    relayed = HIKVISION.replace(
        b"http://[fe80::a3b2:c3ff:fed4:e5f6]/onvif/device_service",
        b"http://203.0.113.5:8080/onvif/device_service",
    ).replace(
        b"urn:uuid:3f4e5a6b-1dd2-11b2-a105-A1B2C3D4E5F6",
        b"uuid:3F4E5A6B-1DD2-11B2-A105-a1b2c3d4e5f6",
    )
    via_unicast = _one(relayed, "203.0.113.5")
    results = DiscoveryResults()
    results.add([via_multicast])
    results.add([via_unicast, via_multicast])
    (device,) = results.matches()
    assert len(results) == 1
    assert device.endpoint_ref == via_multicast.endpoint_ref
    assert device.sources == ("192.168.1.64", "203.0.113.5")
    assert device.xaddrs == (
        "http://192.168.1.64/onvif/device_service",
        "http://[fe80::a3b2:c3ff:fed4:e5f6]/onvif/device_service",
        "http://203.0.113.5:8080/onvif/device_service",
    )
    assert device.types == (DN_NVT, TDS_DEVICE)


def test_merge_keeps_the_newest_scopes_first_and_highest_version() -> None:
    old = ProbeMatch(
        "urn:uuid:a",
        scopes=("onvif://www.onvif.org/name/Old",),
        metadata_version=1,
        sources=("10.0.0.1",),
    )
    new = ProbeMatch(
        "urn:uuid:a",
        scopes=("onvif://www.onvif.org/name/New",),
        metadata_version=2,
        types=(TDS_DEVICE,),
        sources=("10.0.0.1",),
    )
    for first, second in ((old, new), (new, old)):
        (device,) = dedupe([first, second])
        assert device.name == "New"
        assert device.metadata_version == 2
        assert device.types == (TDS_DEVICE,)
        assert device.sources == ("10.0.0.1",)


def test_distinct_devices_keep_their_order() -> None:
    matches = (*parse_probe_matches(SOAP11_NVR, "10.1.2.3"), _one(DAHUA, "192.168.1.108"))
    assert [m.endpoint_ref[-4:] for m in dedupe(matches)] == ["0001", "0002", "1122"]


def test_normalize_uuid_urn() -> None:
    assert normalize_uuid_urn(" urn:uuid:ABC ") == "uuid:abc"
    assert normalize_uuid_urn("UUID:abc") == "uuid:abc"
    assert normalize_uuid_urn("http://Device/1") == "http://Device/1"
