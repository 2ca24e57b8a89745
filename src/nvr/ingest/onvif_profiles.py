"""ONVIF media profiles: what one offers, which one to record, and addresses made reachable.

A camera behind NAT reports the LAN address it believes it has in its service addresses and
stream URIs; ``rewrite_private_host`` and ``rewrite_xaddr`` put the address we reached it at
in their place. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from nvr.errors import CameraProtocolError


@dataclass(frozen=True, slots=True)
class MediaProfile:
    token: str
    name: str
    codec: str  # "h264", "h265", or the device's encoding name in lower case ("jpeg", ...)
    width: int | None
    height: int | None
    fps: float | None
    bitrate_kbps: int | None
    stream_uri: str | None  # RTSP, private hosts already rewritten to the host we reached
    snapshot_uri: str | None
    via_media2: bool  # only Media2 showed this profile (H.265 profiles, typically)


def rewrite_private_host(uri: str, reached_host: str) -> str:
    """Put ``reached_host`` in place of a private, loopback, link-local or unspecified host.

    A camera behind NAT reports the LAN address it believes it has (192.168.1.64) in its
    XAddrs and stream URIs; we must use the address we reached it at. Host names and public
    addresses are left alone, as are the scheme, credentials, port, path and query. A URI that
    does not parse comes back unchanged (the RTSP client will then say what is wrong with it).
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport.startswith("["):
        host, bracket, port_part = hostport[1:].partition("]")
        if not bracket:
            return uri
    else:
        host, colon, port = hostport.partition(":")
        port_part = colon + port
    if not _is_private_ip(host):
        return uri
    new_host = reached_host.strip("[]")
    if ":" in new_host:
        new_host = f"[{new_host}]"
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{new_host}{port_part}"))


_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_IPV6_ULA = ipaddress.ip_network("fc00::/7")


def _is_private_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False  # a host name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return True
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in _RFC1918)
    return ip in _IPV6_ULA


def pick_profile(profiles: Sequence[MediaProfile], want: str) -> MediaProfile:
    """The profile to record: ``"main"`` (largest picture), ``"sub"`` (smallest), or a token.

    For ``main`` and ``sub`` only profiles with a stream URI count; ties go to the earlier
    profile, and Media profiles come before Media2-only ones, so an H.264 main stream wins
    over an H.265 one of the same size. A token matches exactly.
    """
    if want in ("main", "sub"):
        usable = [p for p in profiles if p.stream_uri]
        if usable:
            area = [(p.width or 0) * (p.height or 0) for p in usable]
            if want == "main":
                return usable[area.index(max(area))]
            known = [a for a in area if a > 0]
            return usable[area.index(min(known))] if known else usable[0]
    else:
        for p in profiles:
            if p.token == want:
                return p
    choices = ", ".join(
        f"{p.token} ({p.codec} {p.width or '?'}x{p.height or '?'})" for p in profiles
    )
    raise CameraProtocolError(
        f"no ONVIF profile {want!r} with a stream: choose 'main', 'sub' or a token"
        + (f" ({choices})" if choices else " (the device offers no profiles)")
    )


def rewrite_xaddr(xaddr: str, device_url: str) -> str:
    """A service address on a private host becomes one on the host and port we reached.

    Unlike stream URIs (RTSP has its own forwarded port), a camera serves all its SOAP
    services on one HTTP port, so behind a port forward the port must follow too.
    """
    reached = urlsplit(device_url)
    try:
        parts = urlsplit(xaddr)
        host = parts.hostname or ""
    except ValueError as exc:
        raise CameraProtocolError(f"ONVIF device {device_url} sent a bad XAddr {xaddr!r}") from exc
    if host == reached.hostname or not _is_private_ip(host):
        return xaddr
    return urlunsplit(parts._replace(scheme=reached.scheme, netloc=reached.netloc))
