"""The SOAP helpers, on bytes alone."""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

import pytest

from nvr.errors import CameraAuthError, CameraProtocolError
from nvr.ingest.onvif_soap import SECOND_NS, envelope, parse_reply, username_token

NS_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
NS_WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
WHERE = "ONVIF device http://192.0.2.1/onvif/device_service"
T0_NS = 1_767_225_600 * SECOND_NS  # 2026-01-01T00:00:00Z


def _fault(subcode: str, reason: str) -> bytes:
    return envelope(
        f"<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>{subcode}</s:Value>"
        f"</s:Subcode></s:Code><s:Reason><s:Text>{reason}</s:Text></s:Reason></s:Fault>"
    ).replace(b"<s:Envelope ", b'<s:Envelope xmlns:ter="http://www.onvif.org/ver10/error" ')


@pytest.mark.parametrize("status", [400, 401, 500])
def test_not_authorized_fault_is_an_auth_error(status: int) -> None:
    with pytest.raises(CameraAuthError, match=r"rejected the credentials \(Op: Sender not Auth"):
        parse_reply(WHERE, "Op", status, _fault("ter:NotAuthorized", "Sender not Authorized"))


def test_other_faults_and_garbage_are_protocol_errors() -> None:
    with pytest.raises(CameraProtocolError, match="SOAP fault: no such profile"):
        parse_reply(WHERE, "Op", 400, _fault("ter:NoProfile", "no such profile"))
    with pytest.raises(CameraProtocolError, match="no SOAP XML"):
        parse_reply(WHERE, "Op", 200, b"\x00\x01 not xml")
    with pytest.raises(CameraProtocolError, match="DTD"):
        parse_reply(WHERE, "Op", 200, b'<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    with pytest.raises(CameraProtocolError, match="envelope"):
        parse_reply(WHERE, "Op", 200, b"<Envelope><Body><x/></Body></Envelope>")
    with pytest.raises(CameraAuthError, match="HTTP 401"):
        parse_reply(WHERE, "Op", 401, b"<html>401 Unauthorized</html>")


def test_username_token_digest() -> None:
    """The digest as the WS-Security UsernameToken Profile defines it, with the given time."""
    nonce = bytes(range(16))
    xml = username_token("admin", "secret-pw", T0_NS + 12 * SECOND_NS + 999_999_999, nonce)
    token = ET.fromstring(xml).find(f"{{{NS_WSSE}}}UsernameToken")
    assert token is not None
    created = token.findtext(f"{{{NS_WSU}}}Created")
    assert created == "2026-01-01T00:00:12Z"
    digest = base64.b64encode(
        hashlib.sha1(nonce + created.encode() + b"secret-pw").digest()
    ).decode()
    assert token.findtext(f"{{{NS_WSSE}}}Password") == digest
    assert token.findtext(f"{{{NS_WSSE}}}Nonce") == base64.b64encode(nonce).decode()
    assert "secret-pw" not in xml
