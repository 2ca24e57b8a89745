"""``nvr hold``: place, list and release evidence holds from the command line.

The same holds as ``/api/v1/holds``, in the index named by the configuration (opened by
``cli_index``). ``created_by`` and ``released_by`` are the login name. Human output by default,
``--json`` for the same objects the API answers.
"""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import time

from nvr.api.holds import MAX_HOLD_90K, hold_json
from nvr.api.times import TimeFormatError, format_rfc3339, parse_rfc3339
from nvr.cli_index import Refused, run_refusable, run_with_index
from nvr.ingest.timeline import ns_to_90k
from nvr.storage.index import Index
from nvr.storage.index_rows import HoldRow

_MAX_TEXT = 500


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hold", help="place, list or release evidence holds")
    p.set_defaults(func=run_hold)
    hsub = p.add_subparsers(dest="hold_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", "-c", required=True, help="TOML configuration file")
        q.add_argument("--json", action="store_true", help="print JSON")

    q = hsub.add_parser("add", help="keep recording over a range from retention")
    common(q)
    q.add_argument("--camera", required=True, action="append", help="camera id (repeatable)")
    q.add_argument("--start", required=True,
                   help="RFC 3339 with an offset, e.g. 2026-11-29T03:00:00+07:00")  # fmt: skip
    q.add_argument("--end", required=True, help="RFC 3339 with an offset")
    q.add_argument("--case", required=True, help="the case reference, e.g. 2026/117")
    q.add_argument("--reason", required=True, help="why the recording is kept")
    q.add_argument("--until", help="when the hold lapses by itself (default: when released)")
    q.set_defaults(hold_func=_add)

    q = hsub.add_parser("list", help="list holds, newest first")
    common(q)
    q.add_argument("--active", action="store_true", help="only holds in force")
    q.set_defaults(hold_func=_list)

    q = hsub.add_parser("release", help="release a hold by id")
    common(q)
    q.add_argument("--id", required=True, dest="hold_id")
    q.set_defaults(hold_func=_release)


def _now_90k() -> int:
    return ns_to_90k(time.time_ns())


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry
        raise Refused("cannot tell who is asking: set LOGNAME") from None


def _time(text: str, flag: str) -> int:
    try:
        return parse_rfc3339(text, flag)[0]
    except TimeFormatError as exc:
        raise Refused(str(exc), 2) from None


def _text(value: str, flag: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= _MAX_TEXT:
        raise Refused(f"{flag} must be 1 to {_MAX_TEXT} characters", 2)
    return value


def _line(h: HoldRow, now_90k: int) -> str:
    if h.released_90k is not None:
        state = f"released {format_rfc3339(h.released_90k)} by {h.released_by}"
    elif not h.active(now_90k):
        state = "lapsed"
    elif h.until_90k is not None:
        state = f"active until {format_rfc3339(h.until_90k)}"
    else:
        state = "active"
    span = f"{format_rfc3339(h.start_90k)} to {format_rfc3339(h.end_90k)}"
    cams = ",".join(h.cameras)
    return f"{h.id}  {cams}  {span}  case {h.case_ref!r}  by {h.created_by}  {state}"


def _show(h: HoldRow, args: argparse.Namespace) -> None:
    print(json.dumps(hold_json(h, _now_90k())) if args.json else _line(h, _now_90k()))


def _add(args: argparse.Namespace) -> int:
    start_90k, end_90k = _time(args.start, "--start"), _time(args.end, "--end")
    until_90k = _time(args.until, "--until") if args.until is not None else None
    if end_90k <= start_90k:
        raise Refused("--end must be after --start", 2)
    if end_90k - start_90k > MAX_HOLD_90K:
        raise Refused(f"a hold may cover at most {MAX_HOLD_90K // 90_000 // 86_400} days", 2)
    if until_90k is not None and until_90k <= _now_90k():
        raise Refused("--until must be in the future", 2)
    case, reason = _text(args.case, "--case"), _text(args.reason, "--reason")
    who = _login()

    async def add(index: Index) -> HoldRow:
        for cam in sorted(set(args.camera)):
            if await index.camera(cam) is None:
                raise Refused(f"no camera with id {cam!r} in the index")
        return await index.add_hold(
            secrets.token_hex(8), args.camera, start_90k, end_90k, case_ref=case, reason=reason,
            created_by=who, until_90k=until_90k,
        )  # fmt: skip

    _show(run_with_index(args.config, add), args)
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = run_with_index(args.config, lambda index: index.holds(active_only=args.active))
    now_90k = _now_90k()
    if args.json:
        print(json.dumps([hold_json(h, now_90k) for h in rows]))
        return 0
    if not rows:
        print("no holds in force" if args.active else "no holds")
    for h in rows:
        print(_line(h, now_90k))
        print(f"    reason: {h.reason}" + (f" (export {h.export_id})" if h.export_id else ""))
    return 0


def _release(args: argparse.Namespace) -> int:
    who = _login()

    async def release(index: Index) -> HoldRow:
        found = await index.hold(args.hold_id)
        if found is None:
            raise Refused(f"no hold with id {args.hold_id!r}")
        if not await index.release_hold(found.id, who):
            raise Refused(f"hold {found.id} was released already")
        released = await index.hold(found.id)
        assert released is not None
        return released

    _show(run_with_index(args.config, release), args)
    return 0


def run_hold(args: argparse.Namespace) -> int:
    """Dispatch ``nvr hold ...``; a refusal is one line on stderr and a non-zero status (2 for
    a bad argument or configuration, else 1)."""
    return run_refusable(args.hold_func, args)
