"""API keys end to end: `modelbay keys create`, then the real `modelbay serve --auth`, called as curl
would (httpx with the header), and the client commands with MODELBAY_API_KEY; a revoked key is
refused by the running server; its output never holds a key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import SAMPLES, serve_process

MODELBAY = str(Path(sys.executable).parent / "modelbay")


def keys_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODELBAY, "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def cli(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "MODELBAY_API_KEY"}
    if key is not None:
        env["MODELBAY_API_KEY"] = key
    return subprocess.run([MODELBAY, *args], capture_output=True, text=True, timeout=120, env=env)


def test_keys_made_on_the_command_line_open_a_server_started_with_auth(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    made = keys_cli(
        "create", "--scope", "infer", "--name", "mobile-app", "--model", "digits", "--file", str(path)
    )
    assert made.returncode == 0, made.stderr
    app = made.stdout.strip()
    assert app.startswith("mb_") and "only time the key is shown" in made.stderr
    ops = keys_cli(
        "create", "--scope", "admin", "--name", "ops", env={"MODELBAY_AUTH": str(path)}
    ).stdout.strip()
    assert ops.startswith("mb_") and ops != app
    refused = keys_cli(
        "create", "--scope", "admin", "--name", "root", "--model", "digits", "--file", str(path)
    )
    assert refused.returncode == 1 and "only an infer key names models" in refused.stderr
    listed = keys_cli("list", "--file", str(path))
    assert listed.returncode == 0
    assert listed.stdout.split("\n")[0].split() == ["NAME", "SCOPES", "MODELS", "RATE", "LIMIT", "CREATED"]
    assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [
        ["mobile-app", "infer", "digits"],
        ["ops", "admin", "*"],
    ]
    stored = yaml.safe_load(path.read_text())["keys"]
    for text in (listed.stdout, path.read_text()):
        assert app not in text and ops not in text
    assert all(entry["sha256"] not in listed.stdout for entry in stored)
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    image = (SAMPLES / "7.png").read_bytes()
    with serve_process("--auth", str(path), "--log-level", "debug") as served:
        url = served.url
        reply = httpx.post(f"{url}/predict/digits", content=image, headers={"Authorization": f"Bearer {app}"})
        assert reply.status_code == 200 and reply.json()["predictions"][0]["label"] == "7"
        reply = httpx.post(f"{url}/predict/digits", content=image)
        assert reply.status_code == 401 and "needs an API key" in reply.json()["error"]
        reply = httpx.post(f"{url}/v2/repository/index", headers={"x-api-key": app})
        assert reply.status_code == 403
        assert httpx.get(f"{url}/metrics").status_code == 200  # open

        predicted = cli("predict", "digits", str(SAMPLES / "7.png"), "--url", url, key=app)
        assert predicted.returncode == 0 and predicted.stdout.startswith(f"{SAMPLES / '7.png'}: 7 ")
        listed = cli("models", "--url", url, key=ops)
        assert listed.returncode == 0 and "digits" in listed.stdout and "READY" in listed.stdout
        without = cli("models", "--url", url)
        assert without.returncode == 1 and "needs an API key" in without.stderr

        revoked = keys_cli("revoke", "mobile-app", "--file", str(path))
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 15  # the server looks at the file every second
        while True:
            status = httpx.post(
                f"{url}/predict/digits", content=image, headers={"x-api-key": app}
            ).status_code
            if status == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 401
        assert cli("models", "--url", url, key=ops).returncode == 0  # the other key still works
        log = served.log()
    assert "API keys read again from" in log
    assert app not in log and ops not in log
    assert app.removeprefix("mb_") not in log and ops.removeprefix("mb_") not in log


def test_serve_refuses_a_missing_or_broken_key_file(tmp_path: Path) -> None:
    for text, message in ((None, "does not exist"), ("keys: [{name: x}]", "is not valid")):
        path = tmp_path / "keys.yaml"
        if text is not None:
            path.write_text(text)
        started = cli("serve", "--auth", str(path), "--port", "0", "--grpc-port", "0")
        assert started.returncode == 2 and message in started.stderr and str(path) in started.stderr
