"""Run one side of a WS-Discovery exchange inside a network namespace, for test_discovery.

    ip netns exec NS python -m support.wsd_netns respond --host 10.77.0.1 --endpoint-ref ...
    ip netns exec NS python -m support.wsd_netns probe --timeout 1.5

``respond`` prints one JSON line once listening, then serves until stdin closes and
prints its counters as a second line. ``probe`` prints one JSON line: the multicast
interfaces it saw and the devices that answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from nvr.ingest.discovery import multicast_interfaces, probe
from support.wsd_responder import WsdResponder


async def _respond(args: argparse.Namespace) -> None:
    responder = WsdResponder(
        args.host,
        args.port,
        endpoint_ref=args.endpoint_ref,
        xaddrs=args.xaddr,
        scopes=args.scope,
        multicast=True,
    )
    async with responder:
        print(json.dumps({"ready": True, "port": responder.bound_port}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # returns when stdin closes
    counters = {"probes_seen": responder.probes_seen, "answers_sent": responder.answers_sent}
    print(json.dumps(counters), flush=True)


async def _probe(args: argparse.Namespace) -> None:
    matches = await probe(multicast=True, timeout_s=args.timeout, port=args.port)
    print(
        json.dumps(
            {
                "interfaces": [[i.name, i.address] for i in multicast_interfaces()],
                "matches": [
                    {
                        "endpoint_ref": m.endpoint_ref,
                        "xaddrs": list(m.xaddrs),
                        "sources": list(m.sources),
                        "name": m.name,
                        "types": list(m.types),
                    }
                    for m in matches
                ],
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    respond = sub.add_parser("respond")
    respond.add_argument("--host", required=True)
    respond.add_argument("--port", type=int, default=3702)
    respond.add_argument("--endpoint-ref", required=True)
    respond.add_argument("--xaddr", action="append", default=[])
    respond.add_argument("--scope", action="append", default=[])
    prober = sub.add_parser("probe")
    prober.add_argument("--timeout", type=float, default=1.0)
    prober.add_argument("--port", type=int, default=3702)
    args = parser.parse_args()
    asyncio.run(_respond(args) if args.mode == "respond" else _probe(args))


if __name__ == "__main__":
    main()
