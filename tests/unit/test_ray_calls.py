"""How the front groups requests into calls to a version's replicas (modelbay.ray.remote.RemoteBatcher).

Through a real DeploymentHandle of Ray Serve's local testing mode (no cluster), to a deployment
that answers each request with its own payload, holding every call until the test lets it go: so
the test sees which requests each call carried and when. tests/e2e/test_ray.py runs the real
replicas on a real cluster. Ray is imported in the fixture, not when pytest collects this file:
tests/e2e/test_ray.py sets what Ray reads at import (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER) first.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from modelbay.errors import ModelNotReady
from modelbay.settings import BatchingConfig

pytestmark = pytest.mark.anyio


class HeldReplica:
    """Answers serve_many as ModelReplica does ((replica id, one answer per request)), each
    request by its own tensors, once `let_go` names the replica that answers."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []  # the requests (their "x" values) of each call so far
        self.answering: asyncio.Queue[str] = asyncio.Queue()

    async def serve_many(self, calls: list[tuple[str, Any, float | None]]) -> tuple[str, list[Any]]:
        self.calls.append([int(payload["x"][0]) for _, payload, _ in calls])
        replica = await self.answering.get()
        return replica, [(payload, False) for _, payload, _ in calls]

    async def let_go(self, replica: str, calls: int = 1) -> None:
        for _ in range(calls):
            self.answering.put_nowait(replica)

    def seen(self) -> list[list[int]]:
        return self.calls


@pytest.fixture
def remote() -> Any:
    """modelbay.ray.remote, imported (with Ray) when a test of this file runs."""
    with warnings.catch_warnings():  # Ray Serve's own pydantic deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from modelbay.ray import remote

    return remote


@dataclass
class Held:
    """A RemoteBatcher (max_batch_size and max_queue_size 4), the handle of its HeldReplica and
    the module they come from."""

    batcher: Any
    handle: Any
    remote: Any

    def request(self, x: int, items: int = 1) -> asyncio.Task[Any]:
        """Submit one OIP request, its tensor "x" of `items` int64 (8 bytes each) all `x`."""
        tensors = self.remote._Tensors({"x": np.full(items, x, dtype=np.int64)})
        return asyncio.get_running_loop().create_task(self.batcher.submit(tensors))

    async def calls(self) -> list[list[int]]:
        """The requests of each call the replica got so far."""
        return list(await self.handle.seen.remote())


@pytest.fixture
async def held(remote: Any) -> AsyncIterator[Held]:
    from ray import serve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        handle = serve.run(serve.deployment(HeldReplica).bind(), _local_testing_mode=True)
    batcher = remote.RemoteBatcher(handle, BatchingConfig(max_batch_size=4, max_queue_size=4), "digits")
    batcher.start()
    yield Held(batcher, handle, remote)
    await batcher.stop()


async def until(check: Any, what: str) -> None:
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"waited 5 s for {what}")


async def test_requests_wait_for_a_free_call_and_go_together(held: Held) -> None:
    first = [held.request(x) for x in (1, 2)]
    await until(lambda: _calls(held, 1), "the first call")
    # An idle version sends at once: the two requests of one loop turn in one call.
    assert await held.calls() == [[1, 2]]
    second = held.request(3)
    await until(lambda: _calls(held, 2), "a second call while the first is held")
    assert held.remote.CALLS_PER_REPLICA == 2  # one replica has answered nothing yet: two calls in flight
    later = [held.request(x) for x in range(4, 11)]
    gone = held.request(99)
    await asyncio.sleep(0.1)
    assert await held.calls() == [[1, 2], [3]]  # the rest waits at the front
    assert held.batcher.queue_depth == 8
    gone.cancel()  # its client left while it waited: it never goes
    await held.handle.let_go.remote("a")
    assert [(await task)["x"][0] for task in first] == [1, 2]
    # The freed call carries what waited, at most max_queue_size (4) requests a call.
    await until(lambda: _calls(held, 3), "the waiting requests' call")
    assert (await held.calls())[2] == [4, 5, 6, 7]
    await held.handle.let_go.remote("a", 4)
    assert [(await task)["x"][0] for task in [second, *later]] == list(range(3, 11))
    assert await held.calls() == [[1, 2], [3], [4, 5, 6, 7], [8, 9, 10]]
    assert gone.cancelled() and held.batcher.queue_depth == 0


async def test_a_call_carries_about_call_bytes(held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(held.remote, "CALL_BYTES", 100)
    tasks = [held.request(x, items) for x, items in [(1, 8), (2, 4), (3, 8), (4, 20)]]
    await held.handle.let_go.remote("a", 3)
    assert [(await task)["x"][0] for task in tasks] == [1, 2, 3, 4]
    # 64 + 32 bytes fit in 100, 64 + 160 do not; a request over the limit goes alone.
    assert await held.calls() == [[1, 2], [3], [4]]


async def test_each_replica_that_answers_adds_calls(held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(held.remote, "REPLICA_SEEN_S", 0.5)
    assert held.batcher.calls_allowed() == held.remote.CALLS_PER_REPLICA
    for replica in ("a", "b", "b"):
        task = held.request(1)
        await held.handle.let_go.remote(replica)
        await task
    assert held.batcher.calls_allowed() == 2 * held.remote.CALLS_PER_REPLICA
    # A replica silent for REPLICA_SEEN_S (gone, or scaled down) no longer counts.
    await asyncio.sleep(0.6)
    task = held.request(1)
    await held.handle.let_go.remote("b")
    await task
    assert held.batcher.calls_allowed() == held.remote.CALLS_PER_REPLICA


async def test_stopping_answers_the_waiting_requests(held: Held) -> None:
    in_flight = [held.request(x) for x in (1, 2)]
    await until(lambda: _calls(held, 1), "a call")
    in_flight.append(held.request(3))
    await until(lambda: _calls(held, 2), "a second call")
    waiting = held.request(4)
    await asyncio.sleep(0.05)
    await held.batcher.stop()
    for task in [*in_flight, waiting]:
        with pytest.raises(ModelNotReady):
            await task
    with pytest.raises(ModelNotReady):
        await held.request(5)


async def _calls(held: Held, count: int) -> bool:
    return len(await held.calls()) >= count
