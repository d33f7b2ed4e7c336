"""Who may call what: the one check every door makes (`authorize`), written once.

The doors call it before they read a request's body:
  HTTP  ModelbayApp.__call__ (http/app.py), for every request: the raw-ASGI hot routes and
        Starlette's alike; the path says the action and the model (http/app.py `route_action`).
  gRPC  InferenceServicer (grpc/servicer.py), in every RPC.
Each gives the key it read (`credential`: `Authorization: Bearer <key>` or `x-api-key: <key>`,
as HTTP headers or gRPC metadata) and the client's address, and puts the name it gets back on
the request's context (RequestContext.caller).

Actions and the scopes they need, with API keys on (`modelbay serve --auth keys.yaml`):
  HEALTH  health, server metadata, /metrics, the API description: open, unless `auth_health`
          (then any valid key)
  INFER   inference, model metadata and ready, of one model: a key of scope infer that names the
          model or no model, or of scope admin
  ADMIN   the model repository API (index, load, unload, default version, and what is added to
          it): a key of scope admin, from any address
Without API keys everything is open but ADMIN, which answers only loopback clients
(runtime/management.py check_manager), as before keys existed.

Errors: no key or an unknown one is Unauthenticated (401 / UNAUTHENTICATED), a key without the
scope or the model Forbidden (403 / PERMISSION_DENIED), a key over its rate limit TooManyRequests
(429 / RESOURCE_EXHAUSTED, Retry-After). No message and no log line ever holds a key.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from modelbay.auth.keys import ApiKey, digest, read_keys
from modelbay.auth.limit import TokenBucket
from modelbay.errors import Forbidden, ModelLoadError, TooManyRequests, Unauthenticated
from modelbay.runtime.management import check_manager

log = logging.getLogger("modelbay.auth")
WATCH_S = 1.0  # how often a server looks whether its key file changed
NO_KEY = "this server needs an API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
BAD_KEY = "the API key sent is not valid (unknown, or revoked)"
NOT_BEARER = "the Authorization header must be 'Bearer <key>' (or send the key as 'x-api-key: <key>')"


class Action(enum.Enum):
    """What a request does, for the check: see the module docstring."""

    HEALTH = "health"
    INFER = "infer"
    ADMIN = "admin"


def credential(authorization: str | None, api_key: str | None) -> str | None:
    """The API key a request carries: the token of `Authorization: Bearer <token>` (scheme in any
    case), else the value of `x-api-key`; None when it carries neither.

    Raises Unauthenticated for an Authorization header of another scheme (or an empty token) when
    no x-api-key was sent either: a client that meant to send a key learns why it was refused.
    """
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
    if api_key:
        return api_key.strip()
    if authorization is not None:
        raise Unauthenticated(NOT_BEARER)
    return None


class Access:
    """The keys a server accepts, their rate limits, and the rules of the module docstring.

    keys:   the key file's keys.
    health: health, server metadata, /metrics and the API description need a valid key too.
    path:   the key file, read again by `reload` (None: the keys are fixed).
    clock:  monotonic seconds, for the rate limits (injected in tests).
    Keys are looked up by their hash: whatever a lookup's timing could reveal is about a SHA-256
    of the key sent, not a key; the match is then confirmed in constant time (hmac.compare_digest).
    """

    def __init__(
        self,
        keys: Sequence[ApiKey],
        *,
        health: bool = False,
        path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.health = health
        self.path = path
        self.clock = clock
        self._stamp = _stamp(path) if path is not None else None
        self._keys: dict[str, ApiKey] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._use(keys)

    @classmethod
    def from_file(cls, path: str | Path, *, health: bool = False) -> Access:
        """The keys of the key file at `path`, read again by `reload` when it changes.

        Raises ModelLoadError when the file is missing or not valid (keys.read_keys).
        """
        path = Path(path)
        stamp = _stamp(path)  # before reading: a change made meanwhile is seen by the next reload
        access = cls(read_keys(path), health=health, path=path)
        access._stamp = stamp
        return access

    @property
    def names(self) -> list[str]:
        """The names of the keys in use."""
        return [key.name for key in self._keys.values()]

    def check(self, key: str | None, action: Action, model: str | None = None) -> str | None:
        """The name of the key `key` when it may do `action` (on `model`, for INFER) now; None for
        an open action (HEALTH without `health`), whatever was sent.

        Raises Unauthenticated (no key, an unknown one), TooManyRequests (the key is over its
        rate limit; every request of a valid key counts), Forbidden (no such scope or model).
        """
        if action is Action.HEALTH and not self.health:
            return None
        if key is None:
            raise Unauthenticated(NO_KEY)
        hashed = digest(key)
        found = self._keys.get(hashed)
        if found is None or not hmac.compare_digest(found.sha256, hashed):
            raise Unauthenticated(BAD_KEY)
        bucket = self._buckets.get(hashed)
        if bucket is not None:
            wait_s = bucket.take()
            if wait_s:
                raise TooManyRequests(
                    f"API key {found.name!r} is over its rate limit ({bucket.rate_per_s:g} requests/s, "
                    f"burst {bucket.burst}); retry in {math.ceil(wait_s)} s",
                    math.ceil(wait_s),
                )
        if action is Action.ADMIN and "admin" not in found.scopes:
            raise Forbidden(
                f"API key {found.name!r} may not use the model repository API: that needs the admin "
                f"scope, and it has {', '.join(found.scopes)}"
            )
        if action is Action.INFER and found.models and model not in found.models:
            raise Forbidden(
                f"API key {found.name!r} may not use model {model!r}; it may use {', '.join(found.models)}"
            )
        return found.name

    def reload(self) -> bool:
        """Read the key file again if it changed since it was last read (its inode, size or
        modification time); True when its keys are now in use.

        A file that cannot be read or is not valid is logged, and the keys in use are kept. The
        rate-limit state of a key whose limit did not change is kept too.
        """
        if self.path is None:
            return False
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            keys = read_keys(self.path)
        except ModelLoadError as exc:
            log.error("%s; the %d API key(s) read before stay in use", exc.message, len(self._keys))
            return False
        self._use(keys)
        log.info("API keys read again from %s: %d key(s)", self.path, len(keys))
        return True

    async def watch(self, every_s: float = WATCH_S) -> None:
        """`reload` every `every_s` seconds, until cancelled (the server runs it while it serves)."""
        while True:
            await asyncio.sleep(every_s)
            self.reload()

    def _use(self, keys: Sequence[ApiKey]) -> None:
        buckets = {}
        for key in keys:
            if key.rate_per_s is None:
                continue
            before, bucket = self._keys.get(key.sha256), self._buckets.get(key.sha256)
            same = before is not None and (before.rate_per_s, before.burst) == (key.rate_per_s, key.burst)
            if bucket is None or not same:
                bucket = TokenBucket(key.rate_per_s, key.burst, self.clock)
            buckets[key.sha256] = bucket
        self._keys = {key.sha256: key for key in keys}
        self._buckets = buckets


def authorize(
    access: Access | None, action: Action, key: str | None, host: str, model: str | None = None
) -> str:
    """The one check of every door. Returns who called: the key's name with API keys on, else
    `host`, the client's address (also for an open action).

    access: the server's keys; None when it runs without `--auth`.
    key:    what `credential` read from the request (None: no key).
    Raises Unauthenticated, Forbidden or TooManyRequests (Access.check); without keys, Forbidden
    for ADMIN from off loopback.
    """
    if access is None:
        if action is Action.ADMIN:
            check_manager(host)
        return host
    name = access.check(key, action, model)
    return host if name is None else name


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns
