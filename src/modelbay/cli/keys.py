"""`modelbay keys create / list / revoke`: the API key file a server reads (`modelbay serve --auth`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelbay.auth.keys import SCOPES, ApiKey, create_key, read_keys, revoke_key
from modelbay.errors import ModelLoadError

FILE_HELP = "the key file (default: $MODELBAY_AUTH, else keys.yaml)"


def add_parser(commands: Any) -> None:
    """Add `keys` and its commands to the `modelbay` subparsers `commands`."""
    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys (modelbay serve --auth FILE)",
        description="The API key file a server reads with --auth: keys are shown once when made and "
        "stored only as SHA-256 hashes, with their name, scopes, models and rate limit.",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser(
        "create",
        help="make a key, store its hash, print it once",
        description="Make a random key, add its hash to the key file (made with mode 0600 if missing) "
        "and print the key on stdout: it is shown only this once. A running server reads the file "
        "again within a second or so.",
    )
    create.add_argument("--name", required=True, help="what logs and errors call the key")
    create.add_argument(
        "--scope",
        required=True,
        choices=SCOPES,
        help="infer: inference, model metadata and ready; admin: also the model repository API",
    )
    create.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="MODEL",
        help="infer keys: may use only this model; repeat for each (default: every model)",
    )
    create.add_argument("--rate-per-s", type=float, help="requests per second on average (default: no limit)")
    create.add_argument("--burst", type=int, help="requests at once (default: one second's worth)")
    create.add_argument("--file", help=FILE_HELP)
    listing = actions.add_parser("list", help="the keys' names, scopes, models and limits (never hashes)")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.add_argument("--file", help=FILE_HELP)
    revoke = actions.add_parser(
        "revoke",
        help="remove a key; a running server refuses it once it has read the file again",
        description="Remove the key NAME from the key file; a running server reads the file again "
        "within a second or so and then answers that key 401.",
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--file", help=FILE_HELP)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run a `keys` command; exit status 1 when the file cannot be read or the command is refused."""
    path = Path(args.file or environ.get("MODELBAY_AUTH") or "keys.yaml")
    try:
        if args.keys_command == "create":
            scopes = [args.scope]
            key, entry = create_key(path, args.name, scopes, args.models, args.rate_per_s, args.burst)
            print(key)
            print(
                f"modelbay: API key {entry.name!r} ({_describe(entry)}) added to {path}. This is the "
                "only time the key is shown: store it now.",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            keys = read_keys(path, missing_ok=True)
            print(json.dumps([_public(key) for key in keys]) if args.json else _table(keys))
        else:
            revoke_key(path, args.name)
            print(f"modelbay: API key {args.name!r} removed from {path}", file=sys.stderr)
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"modelbay: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    return 0


def _public(key: ApiKey) -> dict[str, Any]:
    """What `keys list` shows of a key: everything but its hash."""
    return {
        "name": key.name,
        "scopes": key.scopes,
        "models": key.models,
        "created": key.created,
        "rate_per_s": key.rate_per_s,
        "burst": key.burst,
    }


def _limit(key: ApiKey) -> str:
    if key.rate_per_s is None:
        return ""
    burst = key.burst if key.burst is not None else max(1, math.ceil(key.rate_per_s))  # TokenBucket's
    return f"{key.rate_per_s:g}/s, burst {burst}"


def _describe(key: ApiKey) -> str:
    models = ", ".join(key.models) if key.models else "every model"
    return f"scope {'+'.join(key.scopes)}; {models}; {_limit(key) or 'no rate limit'}"


def _table(keys: list[ApiKey]) -> str:
    header = ("NAME", "SCOPES", "MODELS", "RATE LIMIT", "CREATED")
    lines = [header]
    for key in keys:
        models = ",".join(key.models) or "*"
        lines.append((key.name, ",".join(key.scopes), models, _limit(key) or "-", key.created))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
