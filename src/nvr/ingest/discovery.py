"""WS-Discovery on the network: multicast on every interface, unicast to hosts and ranges.

A thin asyncio layer over ``wsdiscovery``: it owns sockets, pacing and timeouts, nothing
about XML. ``probe`` sends one Probe per type set in ``PROBE_TYPE_SETS`` (a device must
offer every type listed in a Probe, and cameras differ in which of the two ONVIF types
they announce), collects the ProbeMatches that come back, and returns one entry per
device however many times and on however many paths it answered.

Multicast goes out of every up, multicast-capable IPv4 interface (found with the
``SIOCGIFFLAGS``/``SIOCGIFADDR`` ioctls over ``socket.if_nameindex()``, Linux), from a
socket bound to that interface's address with ``IP_MULTICAST_IF`` set to it and TTL 1;
devices answer by unicast to that socket. Each multicast Probe is repeated once after a
short delay, as SOAP-over-UDP recommends.

Unicast probing (``HOST``, ``HOST:PORT``, ``A.B.C.D/N``) shares one socket: at most
``concurrency`` hosts are waited on at a time, datagrams leave at most ``rate_per_s`` per
second, and each host gets ``timeout_s`` from its first probe (which is re-sent once at
half time when the host stayed silent). Replies are matched to their host by RelatesTo,
or by source address when the device leaves RelatesTo out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import re
import socket
import struct
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from nvr.errors import DiscoveryError
from nvr.ingest.wsdiscovery import (
    MULTICAST_GROUP,
    WSD_PORT,
    DiscoveryResults,
    ProbeMatch,
    build_probe,
    normalize_uuid_urn,
    parse_probe_matches,
)

log = logging.getLogger(__name__)

PROBE_TYPE_SETS: tuple[tuple[str, ...], ...] = (("dn:NetworkVideoTransmitter",), ("tds:Device",))
#: The largest range a single ``A.B.C.D/N`` target may name.
MAX_CIDR_PREFIX_HOSTS = 16
MULTICAST_TTL = 1
_MULTICAST_REPEAT_DELAY_S = 0.2

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_MULTICAST = 0x1000
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    address: str  # its (primary) IPv4 address


# ---------------------------------------------------------------- targets


def expand_targets(targets: Sequence[str], default_port: int = WSD_PORT) -> list[tuple[str, int]]:
    """``HOST``, ``HOST:PORT`` and ``A.B.C.D/N[:PORT]`` as ``(host, port)`` pairs, in the
    order given, without repeats. A range gives its usable hosts (not the network and
    broadcast addresses of a /30 or wider). Raises ``DiscoveryError`` naming a bad value."""
    pairs: dict[tuple[str, int], None] = {}
    for raw in targets:
        for pair in _expand_one(raw.strip(), default_port, raw):
            pairs[pair] = None
    return list(pairs)


def _expand_one(text: str, default_port: int, raw: str) -> Iterator[tuple[str, int]]:
    if not text:
        raise DiscoveryError(f"empty discovery target {raw!r}")
    if text.startswith("[") or text.count(":") > 1:
        raise DiscoveryError(f"discovery target {raw!r}: IPv6 targets are not supported")
    host, sep, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    port = _parse_port(port_text, raw) if sep else default_port
    if "/" in host:
        yield from ((str(a), port) for a in _network_hosts(host, raw))
        return
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        if re.fullmatch(r"[\d.]+", host) or not _HOSTNAME.fullmatch(host):
            raise DiscoveryError(
                f"discovery target {raw!r}: {host!r} is neither an IPv4 address nor a host name"
            ) from None
        yield host, port
        return
    _check_unicast(address, raw)
    yield str(address), port


def _parse_port(text: str, raw: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise DiscoveryError(f"discovery target {raw!r}: port {text!r} is not 1-65535")
    return int(text)


def _network_hosts(cidr: str, raw: str) -> Iterator[ipaddress.IPv4Address]:
    try:
        network = ipaddress.IPv4Network(cidr, strict=False)
    except ValueError as exc:
        raise DiscoveryError(f"discovery target {raw!r}: bad CIDR range ({exc})") from None
    if network.prefixlen < MAX_CIDR_PREFIX_HOSTS:
        raise DiscoveryError(
            f"discovery target {raw!r}: {network} has {network.num_addresses} addresses; "
            f"ranges wider than a /{MAX_CIDR_PREFIX_HOSTS} are refused, split it"
        )
    _check_unicast(network.network_address, raw)
    yield from network.hosts()


def _check_unicast(address: ipaddress.IPv4Address, raw: str) -> None:
    if (
        address.is_multicast
        or address.is_unspecified
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise DiscoveryError(f"discovery target {raw!r}: {address} is not a unicast address")


# ---------------------------------------------------------------- interfaces


def multicast_interfaces() -> list[Interface]:
    """Interfaces that are up, multicast-capable and have an IPv4 address (Linux)."""
    found: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                flags = _ioctl_ifreq(sock, _SIOCGIFFLAGS, name)
                (flag_bits,) = struct.unpack_from("H", flags, 16)
                if flag_bits & _IFF_UP == 0 or flag_bits & _IFF_MULTICAST == 0:
                    continue
                addr = _ioctl_ifreq(sock, _SIOCGIFADDR, name)
            except OSError:  # no IPv4 address (EADDRNOTAVAIL), or gone meanwhile
                continue
            found.append(Interface(name, socket.inet_ntoa(addr[20:24])))
    return found


def _ioctl_ifreq(sock: socket.socket, request: int, name: str) -> bytes:
    ifreq = struct.pack("16s24x", name.encode()[:15])
    return fcntl.ioctl(sock.fileno(), request, ifreq)


def _select_interfaces(wanted: Sequence[str] | None) -> list[Interface]:
    available = multicast_interfaces()
    if wanted is None:
        return available
    chosen: list[Interface] = []
    for item in wanted:
        by_name = [i for i in available if item in (i.name, i.address)]
        if by_name:
            chosen.extend(by_name)
            continue
        try:
            ipaddress.IPv4Address(item)
        except ValueError:
            names = ", ".join(i.name for i in available) or "none"
            raise DiscoveryError(
                f"interface {item!r} is not an up, multicast-capable IPv4 interface "
                f"(those are: {names})"
            ) from None
        chosen.append(Interface(item, item))
    return chosen


# ---------------------------------------------------------------- probing


async def probe(
    *,
    multicast: bool = True,
    targets: Sequence[str] = (),
    timeout_s: float = 3.0,
    concurrency: int = 64,
    rate_per_s: float = 500.0,
    port: int = WSD_PORT,
    interfaces: Sequence[str] | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> tuple[ProbeMatch, ...]:
    """Devices that answered, one entry each, in the order first heard.

    Returns after ``timeout_s`` for multicast, and once every unicast target has answered
    or had its ``timeout_s``. Unusable datagrams are logged and skipped. ``on_progress``
    hears (unicast hosts done, hosts in all, devices found) as each unicast host finishes.
    """
    if not timeout_s > 0:
        raise DiscoveryError(f"discovery timeout must be positive, not {timeout_s!r}")
    if concurrency < 1:
        raise DiscoveryError(f"discovery concurrency must be at least 1, not {concurrency!r}")
    if not rate_per_s > 0:
        raise DiscoveryError(f"discovery rate must be positive, not {rate_per_s!r}")
    endpoints = expand_targets(targets, port)
    chosen = _select_interfaces(interfaces) if multicast else []
    if multicast and not chosen:
        log.warning("no up, multicast-capable IPv4 interface: multicast probe skipped")
    session = _Session(timeout_s=timeout_s, concurrency=concurrency, rate_per_s=rate_per_s,
                       on_progress=on_progress)  # fmt: skip
    resolved = await session.resolve(endpoints) if endpoints else []
    jobs = [session.multicast(iface, port) for iface in chosen]
    if resolved:
        jobs.append(session.unicast(resolved))
    await asyncio.gather(*jobs)
    return session.results.matches()


@dataclass
class _Target:
    host: str  # as the user gave it
    ip: str
    port: int
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class _Pacer:
    """Lets one send through at a time, at least ``1 / rate_per_s`` after the previous one."""

    def __init__(self, rate_per_s: float) -> None:
        self._interval_s = 1.0 / rate_per_s
        self._next_s = 0.0
        self._lock = asyncio.Lock()

    async def turn(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            wait_s = self._next_s - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            # From when we actually go, so a late wake-up never lets two sends bunch up.
            self._next_s = loop.time() + self._interval_s


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, session: _Session, *, accept_unknown: bool) -> None:
        self._session = session
        self._accept_unknown = accept_unknown

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._session.received(data, str(addr[0]), accept_unknown=self._accept_unknown)

    def error_received(self, exc: Exception) -> None:
        log.debug("WS-Discovery socket error: %s", exc)


class _Session:
    def __init__(
        self,
        *,
        timeout_s: float,
        concurrency: int,
        rate_per_s: float,
        on_progress: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.results = DiscoveryResults()
        self._on_progress = on_progress
        self._hosts_done = 0
        self._hosts_total = 0
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._pacer = _Pacer(rate_per_s)
        self._ours: set[str] = set()  # normalised MessageIDs of every probe we sent
        self._by_message: dict[str, _Target] = {}
        self._by_ip: dict[str, list[_Target]] = {}

    def new_message_id(self, target: _Target | None = None) -> str:
        message_id = f"urn:uuid:{uuid.uuid4()}"
        self._ours.add(normalize_uuid_urn(message_id))
        if target is not None:
            self._by_message[normalize_uuid_urn(message_id)] = target
        return message_id

    def received(self, data: bytes, source: str, *, accept_unknown: bool) -> None:
        try:
            matches = parse_probe_matches(data, source, relates_to=self._ours)
        except DiscoveryError as exc:
            log.warning("%s", exc)
            return
        if not matches:
            return
        relates = matches[0].relates_to
        target = self._by_message.get(normalize_uuid_urn(relates)) if relates else None
        targets = [target] if target is not None else self._by_ip.get(source, [])
        if not targets and not accept_unknown and not relates:
            log.debug("ignored a ProbeMatch from %s, an address we did not probe", source)
            return
        for t in targets:
            t.answered.set()
        self.results.add(matches)

    async def resolve(self, endpoints: list[tuple[str, int]]) -> list[_Target]:
        loop = asyncio.get_running_loop()
        resolved: list[_Target] = []
        for host, port in endpoints:
            ip = host
            if not _is_ipv4(host):
                try:
                    infos = await loop.getaddrinfo(
                        host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM
                    )
                except OSError as exc:
                    raise DiscoveryError(
                        f"discovery target {host!r}: cannot resolve ({exc})"
                    ) from None
                ip = str(infos[0][4][0])
            target = _Target(host, ip, port)
            self._by_ip.setdefault(ip, []).append(target)
            resolved.append(target)
        return resolved

    async def multicast(self, iface: Interface, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((iface.address, 0))
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface.address)
            )
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MULTICAST_TTL)
        except OSError as exc:
            sock.close()
            log.warning("cannot probe by multicast on %s (%s): %s", iface.name, iface.address, exc)
            return
        loop = asyncio.get_running_loop()
        start_s = loop.time()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(self, accept_unknown=True), sock=sock
        )
        try:
            probes = [build_probe(self.new_message_id(), t) for t in PROBE_TYPE_SETS]
            for attempt in range(2):
                for datagram in probes:
                    transport.sendto(datagram, (MULTICAST_GROUP, port))
                if attempt == 0:
                    await asyncio.sleep(min(_MULTICAST_REPEAT_DELAY_S, self._timeout_s / 4))
            await asyncio.sleep(max(0.0, start_s + self._timeout_s - loop.time()))
        finally:
            transport.close()

    async def unicast(self, targets: list[_Target]) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(self, accept_unknown=False),
            local_addr=("0.0.0.0", 0),
            family=socket.AF_INET,
        )
        pending = iter(targets)
        self._hosts_total = len(targets)
        try:
            workers = min(self._concurrency, len(targets))
            await asyncio.gather(
                *(self._unicast_worker(transport, pending) for _ in range(workers))
            )
        finally:
            transport.close()

    async def _unicast_worker(
        self, transport: asyncio.DatagramTransport, pending: Iterator[_Target]
    ) -> None:
        loop = asyncio.get_running_loop()
        for target in pending:  # workers share the iterator: each target is taken once
            probes = [build_probe(self.new_message_id(target), t) for t in PROBE_TYPE_SETS]
            deadline_s = loop.time() + self._timeout_s
            for attempt in range(2):
                for datagram in probes:
                    await self._pacer.turn()
                    if target.answered.is_set():
                        break
                    transport.sendto(datagram, (target.ip, target.port))
                wait_s = deadline_s - loop.time()
                if attempt == 0:
                    wait_s -= self._timeout_s / 2
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(target.answered.wait(), max(0.0, wait_s))
                if target.answered.is_set():
                    break
            self._hosts_done += 1
            if self._on_progress is not None:
                self._on_progress(self._hosts_done, self._hosts_total, len(self.results))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
