"""Importing is cheap: the client and the error tree load no torch and no server (PEP 562 names);
the client does load the gRPC client library, which it speaks."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "uvicorn", "starlette", "modelbay.grpc.servicer", "modelbay.server", "modelbay.loading"]


def loaded_after(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(result.stdout))


def test_the_error_tree_and_the_client_load_neither_torch_nor_the_server() -> None:
    assert loaded_after("import modelbay.errors") == []
    assert loaded_after("import modelbay.client; from modelbay import __version__") == []
    assert loaded_after("from modelbay import InvalidInput") == []


def test_public_names_import_on_first_use() -> None:
    import modelbay
    from modelbay.server import Server

    assert modelbay.Server is Server and "Server" in dir(modelbay)
    loaded = loaded_after("import modelbay; modelbay.Server")
    assert "modelbay.server" in loaded and "uvicorn" in loaded
    assert "torch" not in loaded  # torch is imported by a torch model only (modelbay[torch])
    try:
        modelbay.NoSuchName  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'NoSuchName'" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
