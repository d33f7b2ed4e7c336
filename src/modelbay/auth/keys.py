"""The API key file: the keys a server accepts, stored as hashes (`modelbay keys`, `serve --auth`).

    keys:
    - name: mobile-app                # what logs and errors call the key (never the key itself)
      sha256: 5e8c...                 # SHA-256 of the key, 64 hex digits
      scopes: [infer]                 # infer and/or admin
      models: [resnet]                # infer only these models; absent or []: every model
      created: "2025-06-01T12:00:00Z"
      rate_per_s: 10                  # optional: a token bucket refilled at 10 requests/s ...
      burst: 20                       # ... holding at most 20 (default: one second's worth)

A key is `mb_` and 32 bytes from `secrets` in url-safe base64 (46 characters): it is printed once
by `modelbay keys create` and never stored. The file keeps its SHA-256, a fast hash, on purpose:
slow password hashes (scrypt, PBKDF2, argon2) exist to make guessing a *human-chosen* password
from its stolen hash expensive, but no hash speed makes 2^256 random keys guessable, and the
server must hash every key it is sent, so a slow hash would cost each request milliseconds of CPU
and make the key check a way to overload the server. (GitHub and PyPI store their random tokens
the same way.)

The file is written whole to a temporary file beside it, with mode 0600, fsynced and renamed over
the old one, so a reader (a server reloading it) sees the old file or the new, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import yaml

from modelbay.errors import ModelLoadError

PREFIX = "mb_"
SCOPES = ("infer", "admin")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")


class ApiKey(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True):
    """One key of the file, as stored: never the key, only its hash.

    name:       1-64 letters, digits, `.`, `_`, `-`, starting with a letter or digit; unique in a file.
    sha256:     `digest(key)`, 64 lower-case hex digits.
    scopes:     "infer" (inference, model metadata and ready) and/or "admin" (the model repository
                API; admin implies infer, of every model).
    models:     the model names an infer key may use; empty: every model. An admin key names none:
                it manages the whole server, and what it uploads can run code in it.
    created:    when the key was made, ISO 8601 UTC.
    rate_per_s: requests per second the key may send on average (a token bucket); None: no limit.
    burst:      requests it may send at once (the bucket's size); None: max(1, ceil(rate_per_s)).
    """

    name: str
    sha256: str
    scopes: list[str]
    models: list[str] = msgspec.field(default_factory=list)
    created: str = ""
    rate_per_s: float | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise msgspec.ValidationError(
                f"key name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with "
                "a letter or digit"
            )
        if not _HEX.fullmatch(self.sha256):
            raise msgspec.ValidationError(f"key {self.name!r}: sha256 must be 64 lower-case hex digits")
        if not self.scopes or not set(self.scopes) <= set(SCOPES):
            raise msgspec.ValidationError(f"key {self.name!r}: scopes must be among {list(SCOPES)}")
        if "admin" in self.scopes and self.models:
            raise msgspec.ValidationError(
                f"key {self.name!r}: an admin key manages every model; only an infer key names models"
            )
        if self.rate_per_s is not None and not 0 < self.rate_per_s < float("inf"):
            raise msgspec.ValidationError(f"key {self.name!r}: rate_per_s must be > 0")
        if self.burst is not None and (self.burst < 1 or self.rate_per_s is None):
            raise msgspec.ValidationError(f"key {self.name!r}: burst must be >= 1, with a rate_per_s")


class _KeyFile(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[ApiKey] = msgspec.field(default_factory=list)


def new_key() -> str:
    """A fresh random key: `mb_` + 32 bytes from `secrets`, url-safe base64 without padding."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """SHA-256 of `key` (UTF-8) as 64 lower-case hex digits: what the file stores and the server
    looks keys up by."""
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: Path, missing_ok: bool = False) -> list[ApiKey]:
    """The keys of the key file at `path`, in file order.

    missing_ok: a file that does not exist holds no keys (for `keys create`); else it is an error.
    Raises ModelLoadError naming the file and the problem: unreadable, not YAML, an unknown or
    invalid field (msgspec's path to it), two keys with the same name or hash.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise ModelLoadError(
            f"the API key file {path} does not exist (modelbay keys create makes it)"
        ) from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read the API key file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
        keys = msgspec.convert(data, _KeyFile).keys
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ModelLoadError(f"the API key file {path} is not valid: {exc}") from exc
    for field in ("name", "sha256"):
        values = [getattr(key, field) for key in keys]
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            shown = repeated if field == "name" else f"{len(repeated)} hash(es)"
            raise ModelLoadError(f"the API key file {path} holds two keys with the same {field}: {shown}")
    return keys


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace the key file at `path` with `keys`, atomically (a temporary file in the same folder,
    mode 0600, fsynced, renamed over it; the folder fsynced)."""
    data = {"keys": [msgspec.to_builtins(key) for key in keys]}
    text = "# modelbay API keys (modelbay keys create / list / revoke): hashes only, never the keys\n"
    text += yaml.safe_dump(data, sort_keys=False)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            os.fchmod(file.fileno(), 0o600)  # whatever the umask
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def create_key(
    path: Path,
    name: str,
    scopes: list[str],
    models: list[str] | None = None,
    rate_per_s: float | None = None,
    burst: int | None = None,
) -> tuple[str, ApiKey]:
    """Make a key, add its hash to the key file at `path` (made if missing); returns (the key, its
    entry). The key exists nowhere else: show it once.

    Raises ValueError for a name already in the file or an invalid entry (ApiKey's rules),
    ModelLoadError when the file cannot be read.
    """
    with _locked(path):  # two `keys create` at once: each reads the other's key before writing
        return _create_key(path, name, scopes, models, rate_per_s, burst)


def _create_key(
    path: Path,
    name: str,
    scopes: list[str],
    models: list[str] | None,
    rate_per_s: float | None,
    burst: int | None,
) -> tuple[str, ApiKey]:
    keys = read_keys(path, missing_ok=True)
    if any(key.name == name for key in keys):
        raise ValueError(f"the API key file {path} already has a key named {name!r}; revoke it first")
    key = new_key()
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields: dict[str, Any] = {"name": name, "sha256": digest(key), "scopes": scopes, "created": created}
    if models:
        fields["models"] = models
    if rate_per_s is not None:
        fields["rate_per_s"] = rate_per_s
    if burst is not None:
        fields["burst"] = burst
    try:
        entry = msgspec.convert(fields, ApiKey)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    write_keys(path, [*keys, entry])
    return key, entry


def revoke_key(path: Path, name: str) -> None:
    """Remove the key named `name` from the key file at `path`; a server reading the file stops
    accepting it once it has read the file again.

    Raises ValueError when the file has no such key, ModelLoadError when it cannot be read.
    """
    with _locked(path):
        keys = read_keys(path)
        kept = [key for key in keys if key.name != name]
        if len(kept) == len(keys):
            names = ", ".join(key.name for key in keys) or "none"
            raise ValueError(f"the API key file {path} has no key named {name!r} (it has: {names})")
        write_keys(path, kept)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock (fcntl.flock on `.NAME.lock` beside the key file) while one change
    reads and rewrites the file, so changes made at once are applied one after the other. The
    server only reads the file (the rename makes each version whole) and never takes the lock."""
    lock = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing the descriptor releases the lock
