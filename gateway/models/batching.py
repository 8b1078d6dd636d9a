"""Adaptive micro-batching: requests that arrive while a predict is running share the next one.

A single dispatcher task per served model takes what is queued (up to `max_batch_size`) and runs
it as one batch in the predict thread pool. When the model is idle a request is dispatched at once,
so a lone caller pays no wait; only when the previous batch held several requests (the model is
under concurrent load) does the dispatcher linger, up to `max_wait_ms`, until the next batch is as
large as the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(slots=True)
class _Pending(Generic[Item, Result]):
    item: Item
    shape: Hashable
    future: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MicroBatcher(Generic[Item, Result]):
    """Runs `run_batch(items)` (one result per item, same order) on batches of queued items.

    Items of different shapes are never put in one `run_batch` call.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], list[Result]],
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_s: float,
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Pending[Item, Result]] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._last_batch_size = 0
        self.batches_run = 0  # predict calls made, for /ready and metrics
        self.items_run = 0  # requests they answered

    async def submit(self, item: Item, shape: Hashable) -> Result:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._dispatcher = asyncio.create_task(self._dispatch_forever(self._queue))
        pending: _Pending[Item, Result] = _Pending(item, shape)
        self._queue.put_nowait(pending)
        return await pending.future

    async def aclose(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher

    async def _dispatch_forever(self, queue: asyncio.Queue[_Pending[Item, Result]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            await self._fill(queue, batch)
            self._last_batch_size = len(batch)
            by_shape: dict[Hashable, list[_Pending[Item, Result]]] = {}
            for pending in batch:
                if not pending.future.cancelled():  # the client went away while queued
                    by_shape.setdefault(pending.shape, []).append(pending)
            for group in by_shape.values():
                items = [pending.item for pending in group]
                self.batches_run += 1
                self.items_run += len(items)
                try:
                    results = await loop.run_in_executor(self._executor, self._run_batch, items)
                except Exception as exc:
                    for pending in group:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                for pending, result in zip(group, results, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(result)

    async def _fill(
        self, queue: asyncio.Queue[_Pending[Item, Result]], batch: list[_Pending[Item, Result]]
    ) -> None:
        while len(batch) < self._max_batch_size and not queue.empty():
            batch.append(queue.get_nowait())
        if self._last_batch_size <= 1 or self._max_wait_s <= 0:
            return
        # Under steady load the callers of the last batch come back for the next one: wait for
        # as many (never past max_wait), not for max_batch_size callers that may not exist.
        target = min(self._max_batch_size, self._last_batch_size)
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while len(batch) < target:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                return
