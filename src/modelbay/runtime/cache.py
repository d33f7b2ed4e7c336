"""A prediction cache: answers for repeated requests without running the model again.

Keyed by the model version and a digest (BLAKE2b, 128 bits) of everything that decides the answer:
the door, the input tensors' names, datatypes, shapes and bytes, or the simple door's examples.
Identical requests that arrive while the first is still running share its computation (computed
once). Failures are not cached. Entries leave in least-recently-used order past `max_entries`,
and after `ttl_s` seconds when it is set.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
import numpy as np

from modelbay.runtime.fetch import UrlInput

_encode = msgspec.json.Encoder(order="deterministic").encode


def request_key(parts: Iterable[Any]) -> bytes:
    """A 16-byte digest of `parts`: numpy arrays (dtype, shape and bytes), bytes, URL inputs (their
    URL: the same URL is answered from the cache without being fetched again), or JSON-able values."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            if part.dtype == object:
                for element in part.reshape(-1):
                    value = bytes(element)
                    digest.update(len(value).to_bytes(8, "little") + value)
            else:
                digest.update(np.ascontiguousarray(part).data)
        elif isinstance(part, bytes | bytearray):
            digest.update(b"b" + len(part).to_bytes(8, "little") + part)
        elif isinstance(part, UrlInput):  # never the key of JSON {"url": ...}
            url = part.url.encode()
            digest.update(b"u" + len(url).to_bytes(8, "little") + url)
        else:
            encoded = _encode(part)
            digest.update(b"j" + len(encoded).to_bytes(8, "little") + encoded)
    return digest.digest()


class PredictionCache:
    """LRU + TTL cache of one model version's answers, with in-flight sharing.

    max_entries: most answers kept. ttl_s: seconds an answer stays valid; None keeps it until evicted.
    clock: seconds, monotonic (injectable for tests).
    """

    def __init__(
        self, max_entries: int, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: collections.OrderedDict[bytes, tuple[float, Any]] = collections.OrderedDict()
        self._inflight: dict[bytes, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_compute(
        self,
        key: bytes,
        compute: Callable[[], Awaitable[Any]],
        keep: Callable[[Any], bool] = lambda _value: True,
    ) -> tuple[Any, bool]:
        """The cached answer for `key` (hit: True), or `compute()`'s, stored if it succeeds and
        `keep(answer)` says so (hit: False); a default output given under an SLO is not kept.

        A request identical to one still running waits for that one's answer (hit: True). The
        computation runs as its own task, so a caller that goes away does not cancel it for others.
        Raises what `compute` raises.
        """
        entry = self._entries.get(key)
        if entry is not None:
            stored_at, value = entry
            if self.ttl_s is None or self._clock() - stored_at < self.ttl_s:
                self._entries.move_to_end(key)
                return value, True
            del self._entries[key]
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running), True
        task = asyncio.ensure_future(compute())
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._settle(key, done, keep))
        return await asyncio.shield(task), False

    def _settle(self, key: bytes, task: asyncio.Task[Any], keep: Callable[[Any], bool]) -> None:
        del self._inflight[key]
        if task.cancelled() or task.exception() is not None or not keep(task.result()):
            return
        self._entries[key] = (self._clock(), task.result())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
