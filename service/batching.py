"""Dynamic micro-batching: concurrent images become one onnxruntime batch.

A batch closes when it holds ``max_batch_size`` images, ``max_delay_s`` after its first image
arrived, or at once when no other image is on its way (queued, or announced with
:meth:`MicroBatcher.expecting` while a request decodes): a lone request never waits. The queue
is bounded (``QueueFull`` -> 503 with Retry-After). Inference runs in one dedicated thread, so
the event loop never blocks and batches run one at a time while the next one fills. Each queued
image carries the predictor it was preprocessed for, so a model reload never mixes models (or
input sizes) in one batch. ``close()`` drains what is queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service import metrics
from service.errors import InferenceTimeout, ModelNotReady, QueueFull

log = logging.getLogger("oltr.service")
Row = dict[str, np.ndarray]


class BatchModel(Protocol):
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass(eq=False)
class _Item:
    x: np.ndarray
    model: BatchModel
    future: asyncio.Future[Row] = field(repr=False)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Queue images, run them in batches; ``submit`` returns one output row per image."""

    def __init__(self, *, max_batch_size: int, max_delay_s: float, max_queue: int) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._queue: deque[_Item] = deque()
        self._collecting: list[_Item] = []
        self._incoming = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oltr-infer")

    def start(self) -> None:
        """Start the batching loop (call from the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="oltr-batcher")

    @property
    def depth(self) -> int:
        """Images waiting for inference: queued plus those in the batch being filled."""
        return len(self._queue) + len(self._collecting)

    @contextmanager
    def expecting(self, n: int) -> Iterator[None]:
        """Announce ``n`` images being decoded, so an open batch waits for them."""
        self._incoming += n
        try:
            yield
        finally:
            self._incoming -= n
            self._wakeup.set()

    def ensure_room(self, n: int) -> None:
        """ModelNotReady when closing, QueueFull when ``n`` more images would not fit now."""
        if self._closing or self._task is None:
            raise ModelNotReady("the service is shutting down")
        if self.depth + n > self.max_queue:
            raise QueueFull(
                f"inference queue is full ({self.depth} of {self.max_queue} images "
                f"waiting; this request has {n}); retry shortly"
            )

    async def submit(
        self, model: BatchModel, inputs: list[np.ndarray], timeout_s: float
    ) -> list[Row]:
        """Queue all images of one request together (or none: QueueFull) and await their rows."""
        self.ensure_room(len(inputs))
        loop = asyncio.get_running_loop()
        items = [_Item(x, model, loop.create_future()) for x in inputs]
        self._queue.extend(items)
        metrics.QUEUE_DEPTH.set(self.depth)
        self._wakeup.set()
        futures = [item.future for item in items]
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        except TimeoutError as err:
            raise InferenceTimeout(f"no inference result within {timeout_s:g} s") from err
        finally:
            for f in futures:
                f.cancel()  # no-op when done; otherwise the loop skips the item

    async def close(self) -> None:
        """Stop accepting, run everything still queued, stop the loop and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                continue
            batch = [item for item in await self._collect() if not item.future.done()]
            for items in _by_model(batch):  # (done: timed out or cancelled while waiting)
                await self._run_group(items)

    async def _collect(self) -> list[_Item]:
        """Take the oldest image, then wait up to max_delay_s for announced images."""
        batch: list[_Item] = []
        self._collecting = batch
        while len(batch) < self.max_batch_size:
            if self._queue:
                item = self._queue.popleft()
                if not item.future.done():
                    batch.append(item)
                continue
            if not batch or self._incoming == 0:
                break  # nothing queued and nothing on its way: run now
            remaining = batch[0].arrived + self.max_delay_s - time.monotonic()
            if remaining <= 0 or self._closing:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        self._collecting = []
        metrics.QUEUE_DEPTH.set(self.depth)
        return batch

    async def _run_group(self, items: list[_Item]) -> None:
        """Run one batch (all items share a model); results or the error go to each future."""
        loop = asyncio.get_running_loop()
        metrics.BATCH_SIZE.observe(len(items))
        start = time.perf_counter()
        try:
            x = np.stack([item.x for item in items])
            outputs = await loop.run_in_executor(self._executor, items[0].model.run, x)
        except Exception as err:  # noqa: BLE001 -- handed to every waiting request
            log.exception("inference failed on a batch of %d", len(items))
            for item in items:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        finally:
            metrics.INFERENCE_DURATION.observe(time.perf_counter() - start)
        for i, item in enumerate(items):
            if not item.future.done():
                item.future.set_result({name: value[i] for name, value in outputs.items()})


def _by_model(batch: list[_Item]) -> list[list[_Item]]:
    """Split a batch by model (only differs around a reload), keeping arrival order."""
    groups: dict[int, list[_Item]] = {}
    for item in batch:
        groups.setdefault(id(item.model), []).append(item)
    return list(groups.values())
