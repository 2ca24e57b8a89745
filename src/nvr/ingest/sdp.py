"""SDP (RFC 8866) as far as an RTSP client needs it: the media sections of a DESCRIBE answer.

Sans-IO: text in, ``MediaDescription`` values out. Written to survive what cameras really
send: ``rtpmap`` with a channel count (``MPEG4-GENERIC/16000/1``), ``fmtp`` values holding
``=`` (base64 padding), ``; `` separators with spaces, vendor attributes, lines that are not
SDP at all, ``m=`` lines with non-numeric formats (Tapo's ``smart/1/90000``), and control
URLs that are absolute, relative, ``*`` or missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit, urlunsplit

from nvr.errors import CameraProtocolError
from nvr.media import MediaDescription

VIDEO_ENCODINGS = frozenset({"H264", "H265"})
AUDIO_ENCODINGS = frozenset({"MPEG4-GENERIC", "PCMA", "PCMU"})

# RFC 3551 static payload types a camera may use without an rtpmap line.
_STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    14: ("MPA", 90000, 1),
    26: ("JPEG", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
}


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """The parts of a whole SDP document we use."""

    control: str  # absolute URL for aggregate requests (PLAY, keepalive, TEARDOWN)
    media: tuple[MediaDescription, ...]  # usable media, in SDP order

    def first(self, kind: str, encodings: Iterable[str]) -> MediaDescription | None:
        wanted = frozenset(encodings)
        for m in self.media:
            if m.kind == kind and m.encoding in wanted:
                return m
        return None


@dataclass(slots=True)
class _Section:
    kind: str
    formats: list[str]
    rtpmap: dict[int, str] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    control: str | None = None


def parse_sdp(text: str, *, base_url: str) -> tuple[MediaDescription, ...]:
    """Parse a DESCRIBE body into its usable media sections.

    ``base_url`` is what relative control URLs resolve against: the Content-Base header,
    else Content-Location, else the request URL (RFC 2326 C.1.1; see ``describe_base_url``).
    Raises ``CameraProtocolError`` when no H.264/H.265 video is described.
    """
    return parse_session(text, base_url=base_url).media


def parse_session(text: str, *, base_url: str) -> SessionDescription:
    """Like ``parse_sdp``, but also returns the aggregate control URL."""
    session_control: str | None = None
    sections: list[_Section] = []
    for raw in text.lstrip("\ufeff").splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue  # blank, or not an SDP line at all
        kind, value = line[0], line[2:].strip()
        if kind == "m":
            words = value.split()
            if len(words) < 4:
                continue
            # "application/TP-LINK" -> "application"
            sections.append(_Section(kind=words[0].split("/")[0].lower(), formats=words[3:]))
        elif kind == "a":
            name, _, attr = value.partition(":")
            name = name.strip().lower()
            if not sections:
                if name == "control":
                    session_control = attr.strip()
                continue
            _attribute(sections[-1], name, attr.strip())

    control = resolve_control(base_url, session_control)
    media = tuple(m for m in (_media(s, control, base_url) for s in sections) if m is not None)
    if not any(m.kind == "video" and m.encoding in VIDEO_ENCODINGS for m in media):
        raise CameraProtocolError(
            "SDP describes no usable video (need H264 or H265); found: "
            + (_summary(sections) or "no media sections")
        )
    return SessionDescription(control=control, media=media)


def _attribute(section: _Section, name: str, value: str) -> None:
    if name == "control":
        section.control = value
    elif name in ("rtpmap", "fmtp"):
        pt_text, _, rest = value.partition(" ")
        try:
            pt = int(pt_text)
        except ValueError:
            return
        target = section.rtpmap if name == "rtpmap" else section.fmtp
        target.setdefault(pt, rest.strip())


def _media(section: _Section, session_control: str, base_url: str) -> MediaDescription | None:
    pt = _first_payload_type(section.formats)
    if pt is None:
        return None
    rtpmap = _parse_rtpmap(section.rtpmap.get(pt))
    if rtpmap is None:
        rtpmap = _STATIC_PAYLOAD_TYPES.get(pt)
    if rtpmap is None:
        return None  # dynamic payload type without an rtpmap: nothing we can decode
    encoding, clock_rate, channels = rtpmap
    if section.control is None:
        # No media-level control: the aggregate URL stands for the only stream.
        control = session_control
    else:
        control = resolve_control(base_url, section.control)
    return MediaDescription(
        kind=section.kind,
        payload_type=pt,
        encoding=encoding,
        clock_rate=clock_rate,
        channels=channels,
        fmtp=MappingProxyType(parse_fmtp(section.fmtp.get(pt, ""))),
        control=control,
    )


def _first_payload_type(formats: list[str]) -> int | None:
    for fmt in formats:
        try:
            pt = int(fmt)
        except ValueError:
            continue
        if 0 <= pt <= 127:
            return pt
    return None


def _parse_rtpmap(value: str | None) -> tuple[str, int, int] | None:
    """``H264/90000`` -> ("H264", 90000, 1); ``MPEG4-GENERIC/16000/1`` -> (..., 16000, 1)."""
    words = (value or "").split()
    if not words:
        return None
    parts = [p.strip() for p in words[0].split("/")]
    if len(parts) < 2 or not parts[0]:
        return None
    try:
        clock_rate = int(parts[1])
        channels = int(parts[2]) if len(parts) > 2 and parts[2] else 1
    except ValueError:
        return None
    if clock_rate <= 0 or channels <= 0:
        return None
    return parts[0].upper(), clock_rate, channels


def parse_fmtp(value: str) -> dict[str, str]:
    """``packetization-mode=1; sprop-parameter-sets=Z0IA=,aM4=`` -> lower-cased keys, raw values.

    Values keep every ``=`` after the first one (base64 padding); a parameter without a value
    maps to the empty string.
    """
    params: dict[str, str] = {}
    for item in value.split(";"):
        key, _, val = item.strip().partition("=")
        key = key.strip().lower()
        if key:
            params.setdefault(key, val.strip())
    return params


def describe_base_url(
    request_url: str, content_base: str | None, content_location: str | None
) -> str:
    """The URL relative controls resolve against (RFC 2326 C.1.1)."""
    for candidate in (content_base, content_location):
        if candidate and candidate.strip():
            return _absolute(request_url, candidate.strip())
    return request_url


def resolve_control(base_url: str, control: str | None) -> str:
    """Resolve an ``a=control`` value the way cameras expect it (and ffmpeg/live555 do it).

    Absolute URLs stand as they are; ``*`` or nothing means the base itself; a path starting
    with ``/`` replaces the base's path; anything else is appended to the base with exactly
    one ``/`` between, even after a query string: Dahua's base
    ``.../realmonitor?channel=1&subtype=0/`` plus ``trackID=0`` must stay that way, which
    RFC 3986 joining would break.
    """
    if control is None or control in ("", "*"):
        return base_url
    if "://" in control.split("?", 1)[0]:
        return _strip_userinfo(control)
    return _absolute(base_url, control)


def _absolute(base_url: str, ref: str) -> str:
    if "://" in ref.split("?", 1)[0]:
        return _strip_userinfo(ref)
    if ref.startswith("/"):
        parts = urlsplit(base_url)
        return urlunsplit((parts.scheme, parts.netloc, "", "", "")) + ref
    if base_url.endswith("/"):
        return base_url + ref
    return base_url + "/" + ref


def _strip_userinfo(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment)
    )


def _summary(sections: list[_Section]) -> str:
    found: list[str] = []
    for s in sections:
        pt = _first_payload_type(s.formats)
        if pt is None:
            found.append(f"{s.kind} (formats {' '.join(s.formats)})")
            continue
        rtpmap = _parse_rtpmap(s.rtpmap.get(pt)) or _STATIC_PAYLOAD_TYPES.get(pt)
        enc = rtpmap[0] if rtpmap else "no rtpmap"
        found.append(f"{s.kind} {enc} (pt {pt})")
    return ", ".join(found)
