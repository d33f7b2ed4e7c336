"""The steps of one request on the model version that serves it: the predictor's per-request hooks
(on the model's own hook threads when `preprocess_in_thread`, else inline), the batcher, and the
request's trace phases (runtime/tracing.py) when it is traced. The dataplane chooses the model and
holds the request's deadline around these steps (runtime/dataplane.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from modelbay.errors import model_failure
from modelbay.registry.registry import ServedModel
from modelbay.runtime.batcher import DefaultOutput
from modelbay.runtime.context import CURRENT
from modelbay.runtime.fetch import UrlFetcher

if TYPE_CHECKING:
    from modelbay.runtime.tracing import RequestTrace


async def infer(model: ServedModel, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """The model's named outputs for one OIP request, and whether they are its default output."""
    predictor = model.predictor
    in_thread = predictor.preprocess_in_thread  # else no coroutine per hook on the hot path
    decode, encode = predictor.decode_tensors, predictor.encode_tensors
    span = _span()
    began = time.monotonic() if span is not None else 0.0
    item = await _call(model, decode, inputs) if in_thread else _hook(model, decode, inputs)
    if span is not None:
        began = _phase(span, model, "preprocess", began)
    output = await model.batcher.submit(item)
    defaulted = isinstance(output, DefaultOutput)
    if defaulted:
        output = output.value
    if span is not None:
        began = time.monotonic()
    outputs: dict[str, np.ndarray] = (
        await _call(model, encode, output) if in_thread else _hook(model, encode, output)
    )
    if span is not None:
        _phase(span, model, "postprocess", began)
    return outputs, defaulted


async def predict(
    model: ServedModel, examples: list[Any], fetcher: UrlFetcher, fetched: Callable[[list[Any]], None]
) -> tuple[list[Any], list[int]]:
    """One prediction per example (a UrlInput fetched first: `fetched` is given the examples
    then), and the indices of those that are the default output."""
    examples = await fetcher.resolve(examples, model.url_inputs, model.name)
    fetched(examples)
    predictor = model.predictor
    in_thread = predictor.preprocess_in_thread
    pre, post = predictor.preprocess, predictor.postprocess
    span = _span()
    began = time.monotonic() if span is not None else 0.0
    items = [await _call(model, pre, x) if in_thread else _hook(model, pre, x) for x in examples]
    if span is not None:
        began = _phase(span, model, "preprocess", began)
    outputs = (
        [await model.batcher.submit(items[0])] if len(items) == 1 else await model.batcher.submit_many(items)
    )
    defaults = [index for index, y in enumerate(outputs) if isinstance(y, DefaultOutput)]
    if defaults:
        outputs = [y.value if isinstance(y, DefaultOutput) else y for y in outputs]
    if span is not None:
        began = time.monotonic()
    predictions = [await _call(model, post, y) if in_thread else _hook(model, post, y) for y in outputs]
    if span is not None:
        _phase(span, model, "postprocess", began)
    return predictions, defaults


def _span() -> RequestTrace | None:
    """The trace of the request being served, when it is sampled (runtime/tracing.py)."""
    context = CURRENT.get()
    return context.span if context is not None else None


def _phase(span: RequestTrace, model: ServedModel, name: str, began: float) -> float:
    """Record phase `name` of the request from `began` to now (time.monotonic()); returns now."""
    now = time.monotonic()
    span.phase(name, began, now, {"model_name": model.name, "model_version": model.version})
    return now


async def _call(model: ServedModel, hook: Callable[[Any], Any], arg: Any) -> Any:
    """Run a per-request predictor hook on the model's own hook threads (`preprocess_in_thread`):
    a hook that hangs holds only this model's threads, never the event loop or another model."""
    return await asyncio.get_running_loop().run_in_executor(model.hooks, _hook, model, hook, arg)


def _hook(model: ServedModel, hook: Callable[[Any], Any], arg: Any) -> Any:
    """Run a per-request predictor hook. A ModelbayError from it passes through; anything else,
    even SystemExit, is the model's failure (500) for this request only."""
    try:
        return hook(arg)
    except BaseException as exc:
        failure = model_failure(model.name, exc)
        if failure is exc:
            raise
        raise failure from exc
