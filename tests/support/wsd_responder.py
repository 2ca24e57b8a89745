"""A WS-Discovery target for tests: answers Probes for its types with a ProbeMatch.

    async with WsdResponder("127.0.0.2", endpoint_ref="urn:uuid:...", xaddrs=[...]) as r:
        ...

It answers by unicast to the address and port the Probe came from. With
``multicast=True`` it binds the wildcard address on ``port`` (sharing it, as devices do)
and joins 239.255.255.250 on the interface whose address is ``bind_host``; it then also
hears unicast Probes to any local address on that port.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import cast

from nvr.errors import DiscoveryError
from nvr.ingest.wsdiscovery import (
    DEFAULT_TYPES,
    MULTICAST_GROUP,
    WSD_PORT,
    build_probe_match,
    expand_type,
    parse_probe,
)


class WsdResponder:
    def __init__(
        self,
        bind_host: str,
        port: int = WSD_PORT,
        *,
        endpoint_ref: str,
        xaddrs: Sequence[str],
        types: Sequence[str] = DEFAULT_TYPES,
        scopes: Sequence[str] = (),
        multicast: bool = False,
        metadata_version: int = 1,
        relates_to: bool = True,
    ) -> None:
        self.bind_host = bind_host
        self.port = port
        self.endpoint_ref = endpoint_ref
        self.xaddrs = tuple(xaddrs)
        self.types = tuple(types)
        self.scopes = tuple(scopes)
        self.multicast = multicast
        self.metadata_version = metadata_version
        self.relates_to = relates_to  # False: leave RelatesTo out, as some firmware does
        self.probes_seen = 0  # Probes received, matching or not
        self.answers_sent = 0
        self.junk_seen = 0  # datagrams that were not a usable WS-Discovery message
        self._offered = frozenset(expand_type(t) for t in self.types)
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def bound_port(self) -> int:
        """The port actually bound (differs from ``port`` when that was 0)."""
        if self._transport is None:
            raise RuntimeError("responder not started")
        return int(self._transport.get_extra_info("sockname")[1])

    async def start(self) -> WsdResponder:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.multicast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", self.port))
                membership = struct.pack(
                    "4s4s", socket.inet_aton(MULTICAST_GROUP), socket.inet_aton(self.bind_host)
                )
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            else:
                sock.bind((self.bind_host, self.port))
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        return self

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> WsdResponder:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def answer(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        """The reply to one datagram, or ``None`` when it is not a Probe for our types."""
        try:
            probe = parse_probe(data, addr[0])
        except DiscoveryError:
            self.junk_seen += 1
            return None
        if probe is None:
            return None
        self.probes_seen += 1
        message_id, wanted = probe
        if not set(wanted) <= self._offered:
            return None
        self.answers_sent += 1
        return build_probe_match(
            message_id=f"urn:uuid:{uuid.uuid4()}",
            relates_to=message_id if self.relates_to else None,
            endpoint_ref=self.endpoint_ref,
            xaddrs=self.xaddrs,
            types=self.types,
            scopes=self.scopes,
            metadata_version=self.metadata_version,
        )


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, responder: WsdResponder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self._responder.answer(data, addr)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)
