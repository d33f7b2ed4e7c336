"""Who may manage the server, and what a load may carry: the rules both doors' repository
extension apply (http/repository.py, grpc/servicer.py), written once."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from modelbay.errors import Forbidden, InvalidInput


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
    manages the server, so it answers only loopback clients until API keys exist (issue 11)."""
    if not is_loopback_host(host):
        raise Forbidden(
            "the model repository API answers only loopback clients until API keys exist (issue 11)"
        )


def refuse_model_upload(parameter_names: Iterable[str]) -> None:
    """Raise InvalidInput when a load sends a model with the request (`config`, `file:<path>`
    parameters of the OIP repository extension): not supported yet."""
    sent = sorted(name for name in parameter_names if name == "config" or name.startswith("file:"))
    if sent:
        raise InvalidInput(
            f"loading a model sent with the request ({', '.join(sent)}) is not supported yet; "
            "load a model the server already knows by name"
        )
