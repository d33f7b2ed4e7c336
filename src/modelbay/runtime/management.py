"""Who may manage a server without API keys, and what a load may carry: the rules both doors'
repository extension apply (http/repository.py, grpc/servicer.py, through modelbay.auth.access),
written once."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from modelbay.errors import Forbidden, InvalidInput
from modelbay.registry.upload import check_name, split_path

FILE_PREFIX = "file:"


def is_loopback_host(host: str) -> bool:
    """True for a loopback IP address (127.0.0.0/8, ::1, an IPv4-mapped loopback); False otherwise."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def check_manager(host: str) -> None:
    """Raise Forbidden unless the caller at `host` is on loopback: the model repository API
    manages the server, so without API keys (`--auth`) it answers only loopback clients; with
    them, an admin key from any address (modelbay.auth.access)."""
    if not is_loopback_host(host):
        raise Forbidden(
            "the model repository API answers only loopback clients on a server without API keys "
            "(modelbay serve --auth)"
        )


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What a load of the repository extension carries besides the model's name.

    config: modelbay.yaml fields (the `config` parameter), None when not sent.
    files:  a model sent with the load: content by path relative to the model folder
            (`file:<path>` parameters, prefix dropped), e.g. {"3/model.onnx": b"..."}; None when
            none was sent.
    """

    config: dict[str, Any] | None = None
    files: dict[str, bytes] | None = None


def load_request(model: str, parameters: Mapping[str, object]) -> LoadRequest:
    """Read a load's parameters as Triton's repository extension defines them, the same for
    both doors (each gives the values as its wire carries them):

      config       a str: a JSON object of modelbay.yaml fields, e.g. '{"task": "tensor"}'
      file:<path>  the file's bytes (gRPC bytes_param), or a str of standard padded base64 (REST:
                   tritonclient.http sends base64.b64encode(content)); <path> is
                   <version>/<relative path> (registry/upload.py's rules)

    Raises InvalidInput for any other parameter, a config that is not a JSON object, base64
    that is not strict (no whitespace, padding, alphabet), a bad path, or files sent for a model
    name that cannot be a folder.
    """
    config: dict[str, Any] | None = None
    files: dict[str, bytes] = {}
    for name, value in parameters.items():
        if name == "config":
            config = _config(value)
        elif name.startswith(FILE_PREFIX):
            path = name.removeprefix(FILE_PREFIX)
            split_path(path)
            files[path] = _file(name, value)
        else:
            raise InvalidInput(
                f"unknown load parameter {name!r}: a load takes config and file:<version>/<path>"
            )
    if files:
        check_name(model)
    return LoadRequest(config, files or None)


def _config(value: object) -> dict[str, Any]:
    if not isinstance(value, str):
        raise InvalidInput(f"parameter config must be a JSON object as a string, got {type(value).__name__}")
    try:
        config = msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"parameter config is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidInput(
            f"parameter config must be a JSON object of modelbay.yaml fields, got {type(config).__name__}"
        )
    return config


def _file(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise InvalidInput(
            f"parameter {name!r} must be the file's content in base64, got {type(value).__name__}"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"parameter {name!r} is not valid base64 (standard alphabet, padded)") from None
