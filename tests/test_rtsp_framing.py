"""The RTSP stream splitter, sans-IO: bytes in, messages and frames out, fed whole and split
at every byte boundary. Resyncing on a live connection is in ``test_rtsp_client``.
"""

from __future__ import annotations

import random

from nvr.ingest.rtsp_framing import InterleavedFrame, RtspMessage, StreamSplitter
from support.rtsp_server import rtp_packet

JUNK = b"\x00\xffjunk from a confused camera firmware\r\n"


def _stream() -> tuple[bytes, list[object]]:
    response = (
        b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nContent-Length: 5\r\n"
        b"WWW-Authenticate: a\r\nWWW-Authenticate: b\r\n\r\nhello"
    )
    rtp = rtp_packet(1, 2)
    data = (
        b"$\x00"
        + len(rtp).to_bytes(2, "big")
        + rtp
        + b"\r\n"
        + response
        + b"$\x01\x00\x00"
        + JUNK
        + b"$\x00"
        + len(rtp).to_bytes(2, "big")
        + rtp
    )
    return data, [
        InterleavedFrame(0, rtp),
        "response",
        InterleavedFrame(1, b""),
        InterleavedFrame(0, rtp),
    ]


def _summary(items: list[object]) -> list[object]:
    return [i if isinstance(i, InterleavedFrame) else "response" for i in items]


def test_splitter_whole_and_at_every_boundary() -> None:
    data, expected = _stream()
    whole = StreamSplitter(lambda ch: ch in (0, 1))
    items: list[object] = list(whole.feed(data))
    assert _summary(items) == expected
    assert whole.junk_bytes == len(JUNK)
    response = items[1]
    assert isinstance(response, RtspMessage)
    assert response.body == b"hello"
    assert response.header_all("www-authenticate") == ("a", "b")
    for cut in range(1, len(data)):
        splitter = StreamSplitter(lambda ch: ch in (0, 1))
        got = splitter.feed(data[:cut]) + splitter.feed(data[cut:])
        assert _summary(list(got)) == expected, cut
        assert splitter.junk_bytes == len(JUNK), cut


def test_splitter_never_raises_and_recovers_after_random_bytes() -> None:
    rng = random.Random(7)
    data, expected = _stream()
    for _ in range(20):
        splitter = StreamSplitter(lambda ch: ch < 4)
        for _ in range(50):
            splitter.feed(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        # a bogus "$" header may swallow up to 64 KiB; after that the stream is read again
        got: list[object] = []
        for _ in range(70_000 // len(data) + 2):
            got += splitter.feed(data)
        assert _summary(got[-4:]) == expected

