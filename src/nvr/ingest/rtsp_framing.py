"""Sans-IO framing of an RTSP TCP connection: bytes in, messages and interleaved frames out.

aiortsp drops the connection on unexpected bytes; ``StreamSplitter`` resyncs to the next ``$``
or ``RTSP/1.0`` and counts what it skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class InterleavedFrame:
    """One ``$``-framed RTP/RTCP packet of an interleaved TCP stream (RFC 2326 §10.12)."""

    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RtspMessage:
    """A response (``status`` > 0) or a request from the server (``method`` set)."""

    status: int
    reason: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]  # lower-case names, in order, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> tuple[str, ...]:
        name = name.lower()
        return tuple(value for key, value in self.headers if key == name)

    @property
    def cseq(self) -> int | None:
        value = self.header("cseq")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None


_RESPONSE_TOKEN = b"RTSP/1.0 "
_REQUEST_TOKENS = tuple(
    m + b" "
    for m in (b"OPTIONS", b"DESCRIBE", b"ANNOUNCE", b"SETUP", b"PLAY", b"PAUSE", b"TEARDOWN",
              b"GET_PARAMETER", b"SET_PARAMETER", b"REDIRECT", b"RECORD")
)
_SYNC_TOKENS = (_RESPONSE_TOKEN, *_REQUEST_TOKENS)
_LONGEST_TOKEN = max(len(t) for t in _SYNC_TOKENS)


class StreamSplitter:
    """Sans-IO: the bytes of an RTSP TCP connection in, messages and interleaved frames out.

    Bytes that start neither a ``$`` frame on a known channel nor an RTSP message are
    skipped up to the next plausible start; ``junk_bytes`` and ``resyncs`` count them.
    While resyncing, a ``$`` frame must also look like RTP/RTCP (version 2) to be taken.
    """

    def __init__(self, channel_ok: Callable[[int], bool]) -> None:
        self._channel_ok = channel_ok
        self._buf = bytearray()
        self._resyncing = False
        self.junk_bytes = 0
        self.resyncs = 0

    def feed(self, data: bytes) -> list[InterleavedFrame | RtspMessage]:
        buf = self._buf
        buf += data
        out: list[InterleavedFrame | RtspMessage] = []
        pos, n = 0, len(buf)
        while pos < n:
            first = buf[pos]
            if first == 0x24:  # "$"
                if n - pos < 4:
                    break
                channel = buf[pos + 1]
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if not self._channel_ok(channel) or (
                    self._resyncing and length and n - pos > 4 and buf[pos + 4] & 0xC0 != 0x80
                ):
                    pos = self._skip(buf, pos)
                    continue
                if n - pos - 4 < length:
                    break
                out.append(InterleavedFrame(channel, bytes(buf[pos + 4 : pos + 4 + length])))
                pos += 4 + length
                self._resyncing = False
                continue
            if first in (0x0D, 0x0A) and not self._resyncing:
                pos += 1  # stray line ends between messages
                continue
            if buf.startswith(_SYNC_TOKENS, pos):
                head_end = buf.find(b"\r\n\r\n", pos)
                if head_end < 0:
                    if n - pos > MAX_HEAD_BYTES:
                        pos = self._skip(buf, pos)
                        continue
                    break
                message = _parse_head(bytes(buf[pos:head_end]))
                if message is None:
                    pos = self._skip(buf, pos)
                    continue
                body_len = _content_length(message)
                if body_len > MAX_BODY_BYTES:
                    pos = self._skip(buf, pos)
                    continue
                body_start = head_end + 4
                if n - body_start < body_len:
                    break
                out.append(
                    RtspMessage(
                        message.status, message.reason, message.method, message.url,
                        message.headers, bytes(buf[body_start : body_start + body_len]),
                    )
                )
                pos = body_start + body_len
                self._resyncing = False
                continue
            rest = bytes(buf[pos : pos + _LONGEST_TOKEN])
            if len(rest) < _LONGEST_TOKEN and any(t.startswith(rest) for t in _SYNC_TOKENS):
                break  # maybe the start of a message: wait for more
            pos = self._skip(buf, pos)
        del buf[:pos]
        return out

    def _skip(self, buf: bytearray, pos: int) -> int:
        """Skip junk at ``pos`` up to the next candidate start; returns the new position."""
        candidates = [buf.find(b"$", pos + 1)]
        candidates += [buf.find(t, pos + 1) for t in _SYNC_TOKENS]
        found = [c for c in candidates if c >= 0]
        new_pos = min(found) if found else max(pos + 1, len(buf) - _LONGEST_TOKEN + 1)
        self.junk_bytes += new_pos - pos
        if not self._resyncing:
            self.resyncs += 1
        self._resyncing = True
        return new_pos


def _parse_head(head: bytes) -> RtspMessage | None:
    text = head.decode("utf-8", errors="replace")
    lines = text.split("\r\n")
    start = lines[0].split(None, 2)
    status, reason, method, url = 0, "", "", ""
    if lines[0].startswith("RTSP/1.0 "):
        if len(start) < 2 or not start[1].isdigit():
            return None
        status, reason = int(start[1]), start[2].strip() if len(start) > 2 else ""
    elif len(start) == 3 and start[2].strip() == "RTSP/1.0":
        method, url = start[0], start[1]
    else:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers.pop()
            headers.append((name, f"{value} {line.strip()}"))
            continue
        name, colon, value = line.partition(":")
        if colon and name.strip():
            headers.append((name.strip().lower(), value.strip()))
    return RtspMessage(status, reason, method, url, tuple(headers), b"")


def _content_length(message: RtspMessage) -> int:
    try:
        return max(0, int(message.header("content-length") or "0"))
    except ValueError:
        return 0
