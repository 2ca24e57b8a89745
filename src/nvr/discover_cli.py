"""``nvr discover``: find ONVIF cameras and read who they are and what they stream."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nvr.clock import SystemClock
from nvr.errors import CameraError, NvrError
from nvr.ingest.discovery import probe
from nvr.ingest.onvif import DeviceReadout, read_clock, read_device
from nvr.ingest.source import device_service_url
from nvr.ingest.wsdiscovery import ProbeMatch
from nvr.redact import redact_url


@dataclass(frozen=True, slots=True)
class Found:
    url: str  # the device service URL
    sources: tuple[str, ...]  # where the answer came from (probe replies), empty for --host
    scopes_name: str | None
    readout: DeviceReadout | None
    clock_offset_ns: int | None
    error: str | None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("discover", help="find ONVIF cameras (WS-Discovery) and read them out")
    p.add_argument("--target", action="append", default=[], metavar="HOST[:PORT]|CIDR",
                   help="probe these hosts or ranges by unicast (repeatable)")  # fmt: skip
    p.add_argument("--host", action="append", default=[], metavar="URL",
                   help="read this device directly (http://HOST[:PORT]), no probe")  # fmt: skip
    p.add_argument("--no-multicast", action="store_true", help="do not probe by multicast")
    p.add_argument("--user", help="ONVIF user for the read-out")
    p.add_argument("--password-file", type=Path, help="file holding the ONVIF password")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--write-config", action="store_true",
                   help="print [[cameras]] entries for the devices found")  # fmt: skip
    p.set_defaults(func=run_discover)


async def _discover(args: argparse.Namespace, password: str | None) -> list[Found]:
    clock = SystemClock()
    devices: dict[str, tuple[tuple[str, ...], str | None]] = {}
    if args.target or not (args.host or args.no_multicast):
        matches: tuple[ProbeMatch, ...] = await probe(
            multicast=not args.no_multicast, targets=args.target, timeout_s=args.timeout,
            on_progress=_Progress(),
        )  # fmt: skip
        for m in matches:
            if m.preferred_xaddr:
                devices[m.preferred_xaddr] = (m.sources, m.name)
    for host in args.host:
        devices.setdefault(device_service_url(host), ((), None))

    async def one(url: str, sources: tuple[str, ...], name: str | None) -> Found:
        try:
            if args.user is not None and password is not None:
                timeout_s = max(args.timeout, 5.0)
                readout = await read_device(url, args.user, password, timeout_s=timeout_s,
                                            clock=clock)  # fmt: skip
                offset = readout.clock.offset_ns if readout.clock else None
                return Found(url, sources, name, readout, offset, None)
            reading = await read_clock(url, timeout_s=max(args.timeout, 5.0), clock=clock)
            return Found(url, sources, name, None, reading.offset_ns,
                         "no --user/--password-file: identity and profiles not read")  # fmt: skip
        except CameraError as exc:
            return Found(url, sources, name, None, None, str(exc))

    return list(await asyncio.gather(*(one(u, s, n) for u, (s, n) in devices.items())))


class _Progress:
    """A line on stderr at most once a second during a long sweep (a /16 takes minutes)."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def __call__(self, done: int, total: int, found: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last >= 1.0:
            self._last = now
            if total >= 256:
                print(f"probed {done}/{total} hosts, {found} answered", file=sys.stderr)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "camera"


def _config_entries(found: list[Found], user: str | None) -> str:
    out = []
    for f in found:
        ident = f.readout.identity if f.readout else None
        base = f"{ident.model}-{ident.serial[-6:]}" if ident else (f.scopes_name or f.url)
        cam_id = _slug(base)
        out += [
            "[[cameras]]",
            f'id = "{cam_id}"',
            f"name = {json.dumps(f.scopes_name or (ident.model if ident else cam_id))}",
            f'onvif = "{f.url}"',
            'profile = "main"',
            f"username = {json.dumps(user or 'admin')}",
            f'password_file = "/etc/nvr/secrets/{cam_id}"',
            "",
        ]
    return "\n".join(out)


def found_json(f: Found) -> dict[str, object]:
    """One device of ``nvr discover --json``, key by key: scripts depend on these names
    (docs/onvif.md), so they are spelled out here rather than derived from the dataclasses."""
    readout: dict[str, object] | None = None
    if f.readout is not None:
        r, i, c = f.readout, f.readout.identity, f.readout.clock
        readout = {
            "url": r.url,
            "identity": {
                "manufacturer": i.manufacturer, "model": i.model, "firmware": i.firmware,
                "serial": i.serial, "hardware_id": i.hardware_id, "mac": i.mac,
            },
            "clock": None if c is None else {
                "device_utc_ns": c.device_utc_ns, "offset_ns": c.offset_ns,
                "round_trip_ns": c.round_trip_ns,
            },
            "media2": r.media2,
            "profiles": [
                {
                    "token": p.token, "name": p.name, "codec": p.codec, "width": p.width,
                    "height": p.height, "fps": p.fps, "bitrate_kbps": p.bitrate_kbps,
                    "stream_uri": None if p.stream_uri is None else redact_url(p.stream_uri),
                    "snapshot_uri": None if p.snapshot_uri is None
                    else redact_url(p.snapshot_uri),
                    "via_media2": p.via_media2,
                }
                for p in r.profiles
            ],
        }  # fmt: skip
    return {
        "url": f.url,
        "sources": list(f.sources),
        "scopes_name": f.scopes_name,
        "clock_offset_ns": f.clock_offset_ns,
        "readout": readout,
        "error": f.error,
    }


def _human(found: list[Found]) -> str:
    if not found:
        return "no ONVIF devices answered"
    lines = []
    for f in found:
        offset = f" clock {f.clock_offset_ns / 1e9:+.1f} s" if f.clock_offset_ns is not None else ""
        lines.append(f"{f.url}{offset}")
        if f.readout is not None:
            i = f.readout.identity
            lines.append(f"  {i.manufacturer} {i.model}  serial {i.serial}  MAC {i.mac or '?'}"
                         f"  firmware {i.firmware}")  # fmt: skip
            for p in f.readout.profiles:
                size = f"{p.width}x{p.height}" if p.width else "?"
                lines.append(f"  profile {p.token:<16} {p.codec:<5} {size:>9} "
                             f"{p.fps or '?'} fps {p.bitrate_kbps or '?'} kb/s  "
                             f"{redact_url(p.stream_uri) if p.stream_uri else '?'}")
        if f.error:
            lines.append(f"  ! {f.error}")
    return "\n".join(lines)


def run_discover(args: argparse.Namespace) -> int:
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            print(f"error: cannot read {args.password_file}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        found = asyncio.run(_discover(args, password))
    except NvrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.write_config:
        print(_config_entries(found, args.user))
    elif args.json:
        print(json.dumps([found_json(f) for f in found], indent=2))
    else:
        print(_human(found))
    return 0
