"""How the front groups requests into calls to a version's replicas (modelbay.ray.remote.RemoteBatcher).

Through a real DeploymentHandle of Ray Serve's local testing mode (no cluster), to a deployment
that answers each request with its own payload, holding every call until the test lets it go: so
the test sees which requests each call carried and when. tests/e2e/test_ray.py runs the real
replicas on a real cluster.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from modelbay.errors import ModelNotReady
from modelbay.settings import BatchingConfig

with warnings.catch_warnings():  # Ray Serve's own pydantic deprecations
    warnings.simplefilter("ignore", DeprecationWarning)
    from ray import serve

    from modelbay.ray import remote
    from modelbay.ray.remote import CALLS_PER_REPLICA, RemoteBatcher, _Tensors

pytestmark = pytest.mark.anyio


@serve.deployment
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
async def held() -> AsyncIterator[tuple[RemoteBatcher, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        handle = serve.run(HeldReplica.bind(), _local_testing_mode=True)
    batcher = RemoteBatcher(handle, BatchingConfig(max_batch_size=4, max_queue_size=4), "digits")
    batcher.start()
    yield batcher, handle
    await batcher.stop()


def request(batcher: RemoteBatcher, x: int, items: int = 1) -> asyncio.Task[Any]:
    """Submit one OIP request, its tensor "x" of `items` int64 (8 bytes each) all `x`."""
    tensors = {"x": np.full(items, x, dtype=np.int64)}
    return asyncio.get_running_loop().create_task(batcher.submit(_Tensors(tensors)))


async def until(check: Any, what: str) -> None:
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"waited 5 s for {what}")


async def test_requests_wait_for_a_free_call_and_go_together(held: tuple[RemoteBatcher, Any]) -> None:
    batcher, handle = held
    first = [request(batcher, x) for x in (1, 2)]
    await until(lambda: _calls(handle, 1), "the first call")
    # An idle version sends at once: the two requests of one loop turn in one call.
    assert await handle.seen.remote() == [[1, 2]]
    second = request(batcher, 3)
    await until(lambda: _calls(handle, 2), "a second call while the first is held")
    assert CALLS_PER_REPLICA == 2  # one replica has answered nothing yet: two calls in flight
    later = [request(batcher, x) for x in range(4, 11)]
    gone = request(batcher, 99)
    await asyncio.sleep(0.1)
    assert await handle.seen.remote() == [[1, 2], [3]]  # the rest waits at the front
    assert batcher.queue_depth == 8
    gone.cancel()  # its client left while it waited: it never goes
    await handle.let_go.remote("a")
    assert [(await task)["x"][0] for task in first] == [1, 2]
    # The freed call carries what waited, at most max_queue_size (4) requests a call.
    await until(lambda: _calls(handle, 3), "the waiting requests' call")
    assert (await handle.seen.remote())[2] == [4, 5, 6, 7]
    await handle.let_go.remote("a", 4)
    assert [(await task)["x"][0] for task in [second, *later]] == list(range(3, 11))
    assert await handle.seen.remote() == [[1, 2], [3], [4, 5, 6, 7], [8, 9, 10]]
    assert gone.cancelled() and batcher.queue_depth == 0


async def test_a_call_carries_about_call_bytes(
    held: tuple[RemoteBatcher, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher, handle = held
    monkeypatch.setattr(remote, "CALL_BYTES", 100)
    tasks = [request(batcher, x, items) for x, items in [(1, 8), (2, 4), (3, 8), (4, 20)]]
    await handle.let_go.remote("a", 3)
    assert [(await task)["x"][0] for task in tasks] == [1, 2, 3, 4]
    # 64 + 32 bytes fit in 100, 64 + 160 do not; a request over the limit goes alone.
    assert await handle.seen.remote() == [[1, 2], [3], [4]]


async def test_each_replica_that_answers_adds_calls(
    held: tuple[RemoteBatcher, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher, handle = held
    monkeypatch.setattr(remote, "REPLICA_SEEN_S", 0.5)
    assert batcher.calls_allowed() == CALLS_PER_REPLICA
    for replica in ("a", "b", "b"):
        task = request(batcher, 1)
        await handle.let_go.remote(replica)
        await task
    assert batcher.calls_allowed() == 2 * CALLS_PER_REPLICA
    # A replica silent for REPLICA_SEEN_S (gone, or scaled down) no longer counts.
    await asyncio.sleep(0.6)
    task = request(batcher, 1)
    await handle.let_go.remote("b")
    await task
    assert batcher.calls_allowed() == CALLS_PER_REPLICA


async def test_stopping_answers_the_waiting_requests(held: tuple[RemoteBatcher, Any]) -> None:
    batcher, handle = held
    in_flight = [request(batcher, x) for x in (1, 2)]
    await until(lambda: _calls(handle, 1), "a call")
    in_flight.append(request(batcher, 3))
    await until(lambda: _calls(handle, 2), "a second call")
    waiting = request(batcher, 4)
    await asyncio.sleep(0.05)
    await batcher.stop()
    for task in [*in_flight, waiting]:
        with pytest.raises(ModelNotReady):
            await task
    with pytest.raises(ModelNotReady):
        await batcher.submit(_Tensors({"x": np.array([5])}))


async def _calls(handle: Any, count: int) -> bool:
    return len(await handle.seen.remote()) >= count
