"""Dynamic batching on an asyncio loop, written once for both runners: requests (their images or texts) are merged
into one model call of at most `max_batch_size` items; only `run` (how a batch reaches a model) differs.

    batcher = Batcher(run=lambda items: worker.call("embed_texts", items), max_batch_size=32, wait_s=0.010)
    async with batcher.coming():                 # this request will submit soon: a forming batch may wait for it
        texts = parse(...)
    emb = await batcher.submit(texts)            # float32 [N, D], this request's rows only

When to send a batch: at once when it is full; otherwise when a model slot is free and either nothing else is on its
way (no request between `coming()` and `submit`) or `wait_s` has passed since the batch's first request. So a lone
client never waits for company, and under load a batch fills while the previous one runs (no timer needed then).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np


class BatchStats:
    """How many model calls ran and how full they were (what /info shows about batching)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.items = 0
        self.largest = 0
        self.sizes: dict[int, int] = {}  # batch size -> model calls of that size

    def add(self, n: int) -> None:
        with self._lock:
            self.calls += 1
            self.items += n
            self.largest = max(self.largest, n)
            self.sizes[n] = self.sizes.get(n, 0) + 1

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            mean = self.items / self.calls if self.calls else 0.0
            return {"calls": self.calls, "items": self.items, "largest": self.largest, "mean": round(mean, 3),
                    "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class _Entry:
    __slots__ = ("items", "future", "since")

    def __init__(self, items: Any, future: "asyncio.Future[np.ndarray]"):
        self.items = items  # a list of texts or a uint8 [N, S, S, 3] array; N <= max_batch_size
        self.future = future
        self.since = time.monotonic()


class Batcher:
    """Merge submitted items into model calls; `concurrency` batches may run at once (1 for a model on one
    thread; more when batches go to several replicas)."""

    def __init__(self, run: Callable[[Any], Awaitable[np.ndarray]], max_batch_size: int, wait_s: float,
                 concurrency: int = 1):
        self._run = run  # items of one batch (list or concatenated array) -> float32 [B, D]
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.stats = BatchStats()
        self._queue: deque[_Entry] = deque()
        self._queued_items = 0
        self._coming = 0  # requests inside coming(): about to submit
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Requests (chunks) queued and not yet in a running batch."""
        return len(self._queue)

    @contextlib.asynccontextmanager
    async def coming(self) -> AsyncIterator[None]:
        """Mark a request that is being read or decoded: a forming batch may wait (up to wait_s) for it."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            self._wake.set()

    async def submit(self, items: Any) -> np.ndarray:
        """A request's items (list or [N, ...] array) -> float32 [N, D], in order; cut into batch-sized chunks."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        m = self.max_batch_size
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(0, len(items), m):
            entry = _Entry(items[i: i + m], loop.create_future())
            self._queue.append(entry)
            self._queued_items += len(entry.items)
            futures.append(entry.future)
        self._wake.set()
        parts = await asyncio.gather(*futures)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            while self._queue and self._queued_items < self.max_batch_size and self._coming:
                left = self._queue[0].since + self.wait_s - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._dispatch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take(self) -> list[_Entry]:
        """Whole entries from the front, up to max_batch_size items (an entry is never split)."""
        batch: list[_Entry] = []
        n = 0
        while self._queue and n + len(self._queue[0].items) <= self.max_batch_size:
            entry = self._queue.popleft()
            self._queued_items -= len(entry.items)
            if entry.future.cancelled():  # its request went away (client disconnected, server cancelled it)
                continue
            batch.append(entry)
            n += len(entry.items)
        return batch

    async def _dispatch(self, batch: list[_Entry]) -> None:
        try:
            if isinstance(batch[0].items, np.ndarray):
                items: Any = batch[0].items if len(batch) == 1 else np.concatenate([e.items for e in batch])
            else:
                items = [x for e in batch for x in e.items]
            try:
                emb = await self._run(items)  # [B, D]
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the batch's error
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                return
            self.stats.add(len(items))
            start = 0
            for entry in batch:
                n = len(entry.items)
                if not entry.future.done():
                    entry.future.set_result(emb[start: start + n])
                start += n
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Stop the loop once every queued request has its answer (call after the server stopped taking requests)."""
        while self._queue or self._running:
            if self._running:
                await asyncio.gather(*list(self._running), return_exceptions=True)
            else:
                await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
