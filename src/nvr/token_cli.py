"""``nvr token``: add, list and revoke the bearer tokens of the HTTP API.

The tokens live in the index named by the configuration (``storage.index_path``), opened by
``cli_index`` the way ``nvr run`` opens it, so a first ``token add`` may create the index.
"""

from __future__ import annotations

import argparse
import json
import sys

from nvr.api.auth import Role, check_token_name, new_token, token_json, token_sha256
from nvr.cli_index import Refused, run_refusable, run_with_index


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="add, list or revoke API tokens")
    p.set_defaults(func=run_token)
    tsub = p.add_subparsers(dest="token_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", "-c", required=True, help="TOML configuration file")
        q.add_argument("--json", action="store_true", help="print JSON")

    q = tsub.add_parser("add", help="make a token; it is printed once and never again")
    common(q)
    q.add_argument("--name", required=True, help="who holds the token, e.g. ops-laptop")
    q.add_argument("--role", required=True, choices=[r.value for r in Role])
    q.set_defaults(token_func=_add)

    q = tsub.add_parser("list", help="list tokens (never the tokens themselves)")
    common(q)
    q.set_defaults(token_func=_list)

    q = tsub.add_parser("revoke", help="revoke a token by name")
    common(q)
    q.add_argument("--name", required=True)
    q.set_defaults(token_func=_revoke)


def _add(args: argparse.Namespace) -> int:
    problem = check_token_name(args.name)
    if problem is not None:
        raise Refused(problem.replace("'name'", "--name"))
    token = new_token()
    sha256 = token_sha256(token)
    row = run_with_index(args.config, lambda index: index.add_token(args.name, args.role, sha256))
    if args.json:
        print(json.dumps({"name": row.name, "role": row.role, "token": token}))
    else:
        print(token)
        print(f"token {row.name!r} ({row.role}): shown only this once, store it now; the "
              "index keeps only its SHA-256", file=sys.stderr)  # fmt: skip
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = run_with_index(args.config, lambda index: index.tokens())
    shown = [token_json(r) for r in rows]
    if args.json:
        print(json.dumps(shown))
        return 0
    if not shown:
        print("no tokens")
    for t in shown:
        state = f"revoked {t['revoked']}" if t["revoked"] else "valid"
        used = t["last_used"] or "never"
        print(f"{t['name']:<24} {t['role']:<8} created {t['created']}  used {used}  {state}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if not run_with_index(args.config, lambda index: index.revoke_token(args.name)):
        raise Refused(f"no valid token named {args.name!r}")
    if args.json:
        print(json.dumps({"name": args.name, "revoked": True}))
    else:
        print(f"token {args.name!r} revoked")
    return 0


def run_token(args: argparse.Namespace) -> int:
    """Dispatch ``nvr token ...``; a refusal is one line on stderr and a non-zero status (2 for
    a configuration error, else 1)."""
    return run_refusable(args.token_func, args)
