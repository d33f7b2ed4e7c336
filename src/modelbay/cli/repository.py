"""`modelbay models`, `modelbay load MODEL`, `modelbay unload MODEL`: a running server's model
repository, through the OIP model repository extension (REST)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from modelbay.client import Client
from modelbay.errors import ModelbayError

URL_HELP = "server URL (default: http://MODELBAY_HOST:MODELBAY_PORT, else http://127.0.0.1:8000)"


def add_parsers(commands: Any) -> None:
    """Add the three commands to the `modelbay` subparsers `commands`."""
    models = commands.add_parser(
        "models",
        help="list a running server's model versions and their states",
        description="The model repository index: name, version, state (READY, LOADING, UNLOADING, "
        "UNAVAILABLE, FAILED) and why.",
    )
    models.add_argument("--ready", action="store_true", help="only the READY versions")
    models.add_argument("--json", action="store_true", help="the index as JSON")
    models.add_argument("--url", help=URL_HELP)
    for name, text in (
        ("load", "load (or reload) MODEL from where the server found it; returns once it serves"),
        ("unload", "unload MODEL once its requests in flight are done"),
    ):
        command = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        command.add_argument("model", metavar="MODEL")
        command.add_argument("--url", help=URL_HELP)


def run(args: argparse.Namespace, url: str) -> int:
    """Run `models`, `load` or `unload` against `url`; exit status 1 when the server refused."""
    try:
        with Client(url, timeout_s=600.0) as client:
            if args.command == "models":
                rows = client.repository_index(ready=args.ready)
                print(json.dumps(rows) if args.json else _table(rows))
            elif args.command == "load":
                client.load_model(args.model)
                print(f"model {args.model!r} loaded")
            else:
                client.unload_model(args.model)
                print(f"model {args.model!r} unloaded")
    except (ModelbayError, httpx.HTTPError) as exc:
        print(f"modelbay: {exc}", file=sys.stderr)
        return 1
    return 0


def _table(rows: list[dict[str, str]]) -> str:
    header = ("NAME", "VERSION", "STATE", "REASON")
    lines = [header, *((row["name"], row["version"], row["state"], row["reason"]) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(3)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(line[:3], widths, strict=True)), line[3]]
        ).rstrip()
        for line in lines
    )
