"""RTSP auth, sans-IO: challenge parsing, the scheme choice and RFC 7616 Digest vectors.

The exchanges with a camera (retry on 401, stale nonce, wrong password) are in
``test_rtsp_client``, against the scripted loopback server.
"""

from __future__ import annotations

import pytest

from nvr.ingest.rtsp_auth import BasicAuth, DigestAuth, choose_auth, parse_challenges


def test_challenge_parsing_and_choice() -> None:
    challenges = parse_challenges(
        [
            'Basic realm="cam"',
            'Digest realm="cam, inc", nonce="a\\"b", qop="auth,auth-int", stale=FALSE, '
            'Digest realm="cam", nonce="n2", algorithm=SHA-256',
        ]
    )
    assert [c.scheme for c in challenges] == ["basic", "digest", "digest"]
    assert challenges[1].params["realm"] == "cam, inc"
    assert challenges[1].params["nonce"] == 'a"b'
    chosen = choose_auth(challenges, "u", "p")
    assert isinstance(chosen, DigestAuth) and chosen.algorithm == "SHA-256"
    assert isinstance(choose_auth(challenges[:1], "u", "p"), BasicAuth)
    assert choose_auth(parse_challenges(["Negotiate abc"]), "u", "p") is None


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_digest_matches_rfc7616_example(algorithm: str, response: str) -> None:
    """RFC 7616 §3.9.1 test vectors."""
    (challenge,) = parse_challenges(
        [
            f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
            'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
            'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
        ]
    )
    auth = DigestAuth(
        "Mufasa", "Circle of Life", challenge, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    )
    header = auth.authorization("GET", "/dir/index.html")
    assert f'response="{response}"' in header
    assert "qop=auth, nc=00000001" in header
    assert "nc=00000002" in auth.authorization("GET", "/dir/index.html")
