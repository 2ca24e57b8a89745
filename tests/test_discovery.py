"""WS-Discovery on real sockets: unicast on loopback, multicast inside network namespaces.

Only loopback addresses and the private addresses of namespaces this module creates are
ever sent to; unicast tests pass ``multicast=False`` so nothing leaves on a real interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import secrets
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from nvr.errors import DiscoveryError
from nvr.ingest.discovery import expand_targets, multicast_interfaces, probe
from nvr.ingest.wsdiscovery import build_probe_match, parse_probe
from support.wsd_responder import WsdResponder

TESTS_DIR = Path(__file__).resolve().parent
# Linux's value; typeshed does not list the name.
_SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)


def _ref(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


# ---------------------------------------------------------------- expand_targets


def test_expand_hosts_ports_and_ranges() -> None:
    assert expand_targets(["10.0.0.5"], 3702) == [("10.0.0.5", 3702)]
    assert expand_targets([" 10.0.0.5:8000 "], 3702) == [("10.0.0.5", 8000)]
    assert expand_targets(["cam-1.example.net"], 3702) == [("cam-1.example.net", 3702)]
    assert expand_targets(["cam-1.example.net:3703"], 3702) == [("cam-1.example.net", 3703)]
    assert expand_targets(["192.168.7.0/29"], 3702) == [
        (f"192.168.7.{i}", 3702) for i in range(1, 7)
    ]
    assert expand_targets(["192.168.7.8/30:9"], 3702) == [("192.168.7.9", 9), ("192.168.7.10", 9)]
    assert expand_targets(["192.168.7.8/31"], 1) == [("192.168.7.8", 1), ("192.168.7.9", 1)]
    assert expand_targets(["192.168.7.8/32"], 1) == [("192.168.7.8", 1)]
    # Host bits set: the network it lies in, as people type it.
    assert len(expand_targets(["192.168.7.77/24"], 1)) == 254


def test_expand_keeps_order_and_drops_repeats() -> None:
    assert expand_targets(["10.0.0.2", "10.0.0.0/30", "10.0.0.2:3702", "10.0.0.2:1"], 3702) == [
        ("10.0.0.2", 3702),
        ("10.0.0.1", 3702),
        ("10.0.0.2", 1),
    ]
    assert expand_targets([], 3702) == []


def test_expand_a_slash_16_but_not_wider() -> None:
    assert len(expand_targets(["10.9.0.0/16"], 3702)) == 65534
    with pytest.raises(DiscoveryError) as info:
        expand_targets(["10.0.0.0/15"], 3702)
    assert str(info.value) == (
        "discovery target '10.0.0.0/15': 10.0.0.0/15 has 131072 addresses; "
        "ranges wider than a /16 are refused, split it"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("10.0.0.0/33", "discovery target '10.0.0.0/33': bad CIDR range ("),
        ("10.0.0.300/24", "discovery target '10.0.0.300/24': bad CIDR range ("),
        ("10.0.0/24", "discovery target '10.0.0/24': bad CIDR range ("),
        ("1.2.3", "discovery target '1.2.3': '1.2.3' is neither an IPv4 address nor a host name"),
        ("cam_1", "discovery target 'cam_1': 'cam_1' is neither an IPv4 address nor a host name"),
        ("-cam", "discovery target '-cam': '-cam' is neither an IPv4 address nor a host name"),
        ("10.0.0.1:http", "discovery target '10.0.0.1:http': port 'http' is not 1-65535"),
        ("10.0.0.1:0", "discovery target '10.0.0.1:0': port '0' is not 1-65535"),
        ("10.0.0.1:70000", "discovery target '10.0.0.1:70000': port '70000' is not 1-65535"),
        ("10.0.0.1:", "discovery target '10.0.0.1:': port '' is not 1-65535"),
        ("fe80::1", "discovery target 'fe80::1': IPv6 targets are not supported"),
        ("[::1]:3702", "discovery target '[::1]:3702': IPv6 targets are not supported"),
        ("239.255.255.250", "discovery target '239.255.255.250': 239.255.255.250 is not a unicast"),
        ("224.0.0.0/24", "discovery target '224.0.0.0/24': 224.0.0.0 is not a unicast address"),
        ("0.0.0.0", "discovery target '0.0.0.0': 0.0.0.0 is not a unicast address"),
        ("255.255.255.255", "discovery target '255.255.255.255': 255.255.255.255 is not a unicast"),
        ("  ", "empty discovery target '  '"),
    ],
)
def test_expand_names_the_bad_value(target: str, message: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        expand_targets(["10.0.0.1", target], 3702)
    assert str(info.value).startswith(message)


async def test_user_errors_are_raised_before_anything_is_sent() -> None:
    with pytest.raises(DiscoveryError, match=r"'10\.0\.0\.0/8'"):
        await probe(multicast=False, targets=["127.0.0.2", "10.0.0.0/8"])
    with pytest.raises(DiscoveryError, match="interface 'nvr-no-such0' is not an up"):
        await probe(multicast=True, interfaces=["nvr-no-such0"], timeout_s=0.1)
    with pytest.raises(DiscoveryError, match="timeout must be positive, not 0"):
        await probe(multicast=False, targets=["127.0.0.2"], timeout_s=0)
    with pytest.raises(DiscoveryError, match="concurrency must be at least 1, not 0"):
        await probe(multicast=False, targets=["127.0.0.2"], concurrency=0)
    with pytest.raises(DiscoveryError, match="rate must be positive, not -1"):
        await probe(multicast=False, targets=["127.0.0.2"], rate_per_s=-1)
    with pytest.raises(DiscoveryError, match=r"'nvr-test\.invalid': cannot resolve"):
        await probe(multicast=False, targets=["nvr-test.invalid"], timeout_s=0.1)


def test_multicast_interfaces_are_up_multicast_ipv4() -> None:
    for iface in multicast_interfaces():
        assert iface.name and iface.address.count(".") == 3
        assert iface.name != "lo"  # lo has no MULTICAST flag unless someone set it


# ---------------------------------------------------------------- unicast on loopback

LOOPBACK_DEVICES = (2, 3, 5)


@pytest.fixture
async def loopback_devices() -> AsyncIterator[tuple[dict[int, WsdResponder], int]]:
    """Responders on 127.0.0.2, .3 and .5, port 3702 (or one shared free port if another
    test run holds 3702 on these addresses)."""
    for wanted_port in (3702, 0):
        port = wanted_port
        responders: dict[int, WsdResponder] = {}
        try:
            for n in LOOPBACK_DEVICES:
                responder = WsdResponder(
                    f"127.0.0.{n}",
                    port,
                    endpoint_ref=_ref(n),
                    xaddrs=[f"http://127.0.0.{n}:8080/onvif/device_service"],
                    scopes=[f"onvif://www.onvif.org/name/Loopback%20{n}"],
                )
                await responder.start()
                responders[n] = responder
                port = responder.bound_port
        except OSError as exc:
            for responder in responders.values():
                await responder.stop()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        try:
            yield responders, port
        finally:
            for responder in responders.values():
                await responder.stop()
        return
    pytest.fail("no free port for the loopback responders")


def _with_port(target: str, port: int) -> str:
    return target if port == 3702 else f"{target}:{port}"


async def test_one_target_finds_exactly_that_device_without_waiting(
    loopback_devices: tuple[dict[int, WsdResponder], int],
) -> None:
    responders, port = loopback_devices
    start_s = time.monotonic()
    found = await probe(multicast=False, targets=[_with_port("127.0.0.3", port)], timeout_s=5.0)
    elapsed_s = time.monotonic() - start_s
    assert [m.endpoint_ref for m in found] == [_ref(3)]
    (device,) = found
    assert device.sources == ("127.0.0.3",)
    assert device.xaddrs == ("http://127.0.0.3:8080/onvif/device_service",)
    assert device.name == "Loopback 3"
    assert elapsed_s < 2.0  # the answer ends the wait; 5 s is only for silent hosts
    assert responders[2].probes_seen == responders[5].probes_seen == 0


async def test_cidr_sweep_finds_exactly_the_devices_present(
    loopback_devices: tuple[dict[int, WsdResponder], int],
) -> None:
    responders, port = loopback_devices
    start_s = time.monotonic()
    found = await probe(multicast=False, targets=[_with_port("127.0.0.0/29", port)], timeout_s=1.0)
    elapsed_s = time.monotonic() - start_s
    assert sorted(m.endpoint_ref for m in found) == [_ref(n) for n in LOOPBACK_DEVICES]
    assert sorted(m.source or "" for m in found) == ["127.0.0.2", "127.0.0.3", "127.0.0.5"]
    print(f"/29 sweep: {len(found)} devices of 3 in {elapsed_s:.2f} s (timeout 1 s)")
    assert 0.9 < elapsed_s < 1.8  # silent hosts .1 .4 .6 get their one timeout, in parallel
    assert all(r.answers_sent >= 1 for r in responders.values())


async def test_sweep_reports_progress_host_by_host(
    loopback_devices: tuple[dict[int, WsdResponder], int],
) -> None:
    _, port = loopback_devices
    seen: list[tuple[int, int, int]] = []
    await probe(multicast=False, targets=[_with_port("127.0.0.0/29", port)], timeout_s=1.0,
                on_progress=lambda *a: seen.append(a))  # fmt: skip
    assert [done for done, _, _ in seen] == list(range(1, 7))  # .1 to .6, each once
    assert {total for _, total, _ in seen} == {6}
    assert seen[-1][2] == 3


async def test_sweep_of_a_slash_24_takes_about_one_timeout(
    loopback_devices: tuple[dict[int, WsdResponder], int],
) -> None:
    _, port = loopback_devices
    start_s = time.monotonic()
    found = await probe(
        multicast=False,
        targets=[_with_port("127.0.0.0/24", port)],
        timeout_s=1.0,
        concurrency=256,
        rate_per_s=5000,
    )
    elapsed_s = time.monotonic() - start_s
    assert {_ref(n) for n in LOOPBACK_DEVICES} <= {m.endpoint_ref for m in found}
    assert elapsed_s < 2.5  # 254 hosts one after another would be 254 s


@contextlib.contextmanager
def _silent_hosts(
    addresses: list[str],
) -> Iterator[tuple[Callable[[], list[tuple[float, str]]], int]]:
    """Sockets that never answer, on one port of each address. The kernel stamps each
    datagram on arrival (SO_TIMESTAMPNS), so the times read afterwards do not depend on
    how busy this process was."""
    socks: list[socket.socket] = []
    port = 0
    try:
        for address in addresses:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((address, port))
            sock.setblocking(False)
            port = sock.getsockname()[1]

        def arrivals() -> list[tuple[float, str]]:
            seen: list[tuple[float, str]] = []
            for sock, address in zip(socks, addresses, strict=True):
                while True:
                    try:
                        _, ancillary, _, _ = sock.recvmsg(65535, 1024)
                    except BlockingIOError:
                        break
                    (stamp,) = [d for lvl, typ, d in ancillary if typ == _SO_TIMESTAMPNS]
                    sec, nsec = struct.unpack("qq", stamp[:16])
                    seen.append((sec + nsec / 1e9, address))
            return sorted(seen)

        yield arrivals, port
    finally:
        for sock in socks:
            sock.close()


async def test_concurrency_bounds_hosts_waited_on_at_once() -> None:
    hosts = [f"127.0.1.{i}" for i in range(1, 7)]
    with _silent_hosts(hosts) as (arrivals, port):
        start_s = time.monotonic()
        found = await probe(
            multicast=False, targets=[f"{h}:{port}" for h in hosts], timeout_s=0.4, concurrency=3
        )
        elapsed_s = time.monotonic() - start_s
        seen = arrivals()
    assert found == ()
    first_s = sorted(min(t for t, a in seen if a == h) for h in hosts)
    for i in range(len(first_s) - 3):  # a fourth host starts only when one of three ended
        assert first_s[i + 3] - first_s[i] >= 0.39
    assert 0.78 < elapsed_s < 2.0  # two waves of 0.4 s, not six
    # two probes (one per type set) at the start, again at half time for a silent host
    assert sorted(a for _, a in seen) == sorted(hosts * 4)


async def test_rate_bounds_datagrams_per_second() -> None:
    hosts = [f"127.0.2.{i}" for i in range(1, 6)]
    with _silent_hosts(hosts) as (arrivals, port):
        await probe(
            multicast=False, targets=[f"{h}:{port}" for h in hosts], timeout_s=0.2, rate_per_s=40
        )
        times_s = [t for t, _ in arrivals()]
    assert len(times_s) == 20
    gaps_s = [b - a for a, b in itertools.pairwise(times_s)]
    assert min(gaps_s) > 0.024  # 1/40 s apart


async def test_devices_answering_only_their_own_types() -> None:
    only_device = WsdResponder(
        "127.0.3.1",
        0,
        endpoint_ref=_ref(31),
        xaddrs=["http://127.0.3.1/onvif/device_service"],
        types=["tds:Device"],
    )
    printer = WsdResponder(
        "127.0.3.2",
        0,
        endpoint_ref=_ref(32),
        xaddrs=["http://127.0.3.2/wsd"],
        types=["{http://schemas.microsoft.com/windows/pnpx/2005/10}PrintDeviceType"],
    )
    async with only_device, printer:
        found = await probe(
            multicast=False,
            targets=[f"127.0.3.1:{only_device.bound_port}", f"127.0.3.2:{printer.bound_port}"],
            timeout_s=0.5,
        )
    assert [m.endpoint_ref for m in found] == [_ref(31)]
    assert found[0].types == ("{http://www.onvif.org/ver10/device/wsdl}Device",)
    assert printer.probes_seen >= 2
    assert printer.answers_sent == 0


async def test_answer_without_relates_to_is_matched_by_source() -> None:
    async with WsdResponder(
        "127.0.3.3", 0, endpoint_ref=_ref(33), xaddrs=["http://127.0.3.3/"], relates_to=False
    ) as quiet:
        start_s = time.monotonic()
        found = await probe(
            multicast=False, targets=[f"127.0.3.3:{quiet.bound_port}"], timeout_s=5.0
        )
        assert time.monotonic() - start_s < 2.0
    assert [m.endpoint_ref for m in found] == [_ref(33)]
    assert found[0].relates_to is None


class _Relay(asyncio.DatagramProtocol):
    """Hears a Probe on one address and answers from another (a multi-homed or NATed
    device), with or without RelatesTo."""

    def __init__(self, reply_from: asyncio.DatagramTransport, relates: bool, ref: str) -> None:
        self.reply_from = reply_from
        self.relates = relates
        self.ref = ref

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        parsed = parse_probe(data, addr[0])
        if parsed is None:
            return
        reply = build_probe_match(
            message_id="urn:uuid:relay",
            relates_to=parsed[0] if self.relates else None,
            endpoint_ref=self.ref,
            xaddrs=["http://127.0.4.9/onvif/device_service"],
        )
        self.reply_from.sendto(reply, addr)


@pytest.mark.parametrize("relates", [True, False])
async def test_answer_from_another_address_needs_relates_to(relates: bool) -> None:
    loop = asyncio.get_running_loop()
    out, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.4.9", 0)
    )
    listen, _ = await loop.create_datagram_endpoint(
        lambda: _Relay(out, relates, _ref(49)),
        local_addr=("127.0.4.1", 0),
    )
    try:
        port = listen.get_extra_info("sockname")[1]
        found = await probe(multicast=False, targets=[f"127.0.4.1:{port}"], timeout_s=0.5)
    finally:
        listen.close()
        out.close()
    if relates:
        assert [(m.endpoint_ref, m.sources) for m in found] == [(_ref(49), ("127.0.4.9",))]
    else:
        assert found == ()


class _Hostile(asyncio.DatagramProtocol):
    """Answers every datagram with junk, a DTD bomb, a SOAP fault and 60 KB of noise."""

    REPLIES = (
        b"\xff\xfe\x00junk",
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b"<Envelope><Body>&b;</Body></Envelope>",
        b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><e:Fault>'
        b"<e:Reason><e:Text>busy</e:Text></e:Reason></e:Fault></e:Body></e:Envelope>",
        b"<" * 60_000,
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        for reply in self.REPLIES:
            self.transport.sendto(reply, addr)


async def test_hostile_answers_are_survived_and_logged(
    loopback_devices: tuple[dict[int, WsdResponder], int], caplog: pytest.LogCaptureFixture
) -> None:
    _, port = loopback_devices
    loop = asyncio.get_running_loop()
    hostile, _ = await loop.create_datagram_endpoint(_Hostile, local_addr=("127.0.0.6", 0))
    try:
        hostile_port = hostile.get_extra_info("sockname")[1]
        with caplog.at_level(logging.WARNING, logger="nvr.ingest.discovery"):
            start_s = time.monotonic()
            found = await probe(
                multicast=False,
                targets=[f"127.0.0.6:{hostile_port}", _with_port("127.0.0.2", port)],
                timeout_s=1.0,
            )
            elapsed_s = time.monotonic() - start_s
    finally:
        hostile.close()
    assert [m.endpoint_ref for m in found] == [_ref(2)]
    assert elapsed_s < 1.8
    messages = [r.getMessage() for r in caplog.records]
    assert any("from 127.0.0.6: not XML" in m for m in messages)
    assert any("from 127.0.0.6: refused XML: a DOCTYPE" in m for m in messages)
    assert any("from 127.0.0.6 is a SOAP fault: busy" in m for m in messages)


# ---------------------------------------------------------------- multicast in namespaces


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def netns_lan() -> Iterator[tuple[str, str]]:
    """Two fresh namespaces joined by a veth pair, 10.77.0.1/24 and 10.77.0.2/24, with
    the multicast route on the veth; neither has any route out."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root (CI runs as root, so it runs there)")
    tag = secrets.token_hex(3)
    a, b = f"nvr-wsd-{tag}-a", f"nvr-wsd-{tag}-b"
    created: list[str] = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("-n", a, "link", "add", "wsd0", "type", "veth", "peer", "name", "wsd1", "netns", b)
        for ns, dev, addr in ((a, "wsd0", "10.77.0.1/24"), (b, "wsd1", "10.77.0.2/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        yield a, b
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=20)


@pytest.fixture
def netns_lo() -> Iterator[str]:
    """One fresh namespace with only lo, made multicast-capable."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root (CI runs as root, so it runs there)")
    ns = f"nvr-wsd-{secrets.token_hex(3)}-lo"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", "lo", "multicast", "on")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "lo")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=20)


def _helper(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "support.wsd_netns", *args]


def _helper_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(TESTS_DIR)}


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline_s = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left_s := deadline_s - time.monotonic()) > 0:
            if sel.select(left_s):
                return proc.stdout.readline()
    raise AssertionError(f"no line from {proc.args!r} within {timeout_s} s")


def _multicast_exchange(
    responder_ns: str, host: str, prober_ns: str
) -> tuple[dict[str, object], dict[str, int]]:
    responder = subprocess.Popen(
        _helper(
            responder_ns,
            "respond",
            "--host",
            host,
            "--endpoint-ref",
            _ref(77),
            "--xaddr",
            f"http://{host}/onvif/device_service",
            "--scope",
            "onvif://www.onvif.org/name/Namespace%20Cam",
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=TESTS_DIR,
        env=_helper_env(),
    )
    try:
        ready = _read_line(responder, 20)
        assert json.loads(ready) == {"ready": True, "port": 3702}, ready
        result = subprocess.run(
            _helper(prober_ns, "probe", "--timeout", "1.5"),
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=TESTS_DIR,
            env=_helper_env(),
        )
        assert result.returncode == 0, result.stderr
        assert responder.stdin is not None
        responder.stdin.close()
        counters = json.loads(_read_line(responder, 20))
        responder.wait(timeout=20)
        return json.loads(result.stdout), counters
    finally:
        if responder.poll() is None:
            responder.kill()
            responder.wait(timeout=20)


def test_multicast_probe_across_a_veth_lan(netns_lan: tuple[str, str]) -> None:
    a, b = netns_lan
    report, counters = _multicast_exchange(a, "10.77.0.1", b)
    assert report["interfaces"] == [["wsd1", "10.77.0.2"]]  # lo lacks MULTICAST: not used
    assert report["matches"] == [
        {
            "endpoint_ref": _ref(77),
            "xaddrs": ["http://10.77.0.1/onvif/device_service"],
            "sources": ["10.77.0.1"],
            "name": "Namespace Cam",
            "types": [
                "{http://www.onvif.org/ver10/device/wsdl}Device",
                "{http://www.onvif.org/ver10/network/wsdl}NetworkVideoTransmitter",
            ],
        }
    ]
    # two type sets, each sent twice (the SOAP-over-UDP repeat); one device in the result
    assert counters == {"probes_seen": 4, "answers_sent": 4}


def test_multicast_probe_on_a_lo_only_namespace(netns_lo: str) -> None:
    report, counters = _multicast_exchange(netns_lo, "127.0.0.1", netns_lo)
    assert report["interfaces"] == [["lo", "127.0.0.1"]]
    matches = cast(list[dict[str, object]], report["matches"])
    assert [m["endpoint_ref"] for m in matches] == [_ref(77)]
    assert counters["answers_sent"] == 4
