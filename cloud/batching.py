"""Dynamic batching of the tail: decoded requests of one split that arrive close together run as one batch.

Per split (and preset) the `TailBatcher` keeps the decoded requests waiting for their tail. It asks for a
worker slot as soon as one of these holds:

* ``max_batch_size`` requests wait;
* no admitted request is still being decoded or queued (nothing more can join soon: at concurrency 1 a
  request never waits for company);
* the oldest has waited ``max_batch_delay_ms``.

The batch is taken when the slot is granted: requests decoded while it was awaited join (up to
``max_batch_size``), so under load batches grow to what the wait for a thread allows. A batch takes one
worker slot of the engine's `FairSlots`, ahead of queued requests (its requests are admitted and decoded
already; a request holds a slot only while its decode runs), so worker threads stay ``max_concurrency``
and admission, the queue bound and RESOURCE_EXHAUSTED work as without batching.

A batch runs ``SplitModel.tail_batch`` on requests of one feature shape (any shapes for models whose
``tail_batch_mixed_shapes`` is set, e.g. CSR, whose tail reads only the last token), equal bit for bit
to ``tail`` per request (``tests/test_batching.py``). Requests whose caller is gone or whose deadline
passed while they waited are dropped before the batch runs (not run; the engine answers them
DEADLINE_EXCEEDED or CANCELLED). If a batched tail raises, its requests are run one by one, so one bad
request fails alone. As Triton's dynamic batcher (max batch size, max queue delay), on CPU worker threads.

A split whose batched tail measured at most ``inline_tail_max_ms`` of CPU per request (moving average of
its batches; the first runs in the pool) runs its batches on the event loop, still holding the worker
slot: for tiny tails (Cls: about 0.1 ms) the hop to a thread and the GIL contention of a worker cost more
than the tail.

Event loop only, except `run_batch` (a worker thread, or the loop for cheap tails). Transport-free, like
the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from splitfc.cloud.admission import FairSlots
from splitfc.cloud.errors import RequestFailed, Status
from splitfc.cloud.request import RequestRecord, WorkStop
from splitfc.common.models.base import SplitModel
from splitfc.common.wire import task_result_to_proto
from splitfc.v1 import service_pb2 as svc

BatchKey = tuple[str, str]
"""(split id, preset)."""


@dataclass(eq=False)
class TailRequest:
    """One decoded request waiting for (or in) a batch."""

    features: np.ndarray | None
    model: SplitModel
    rec: RequestRecord
    stop: WorkStop
    answer: asyncio.Future[Any]
    """Resolved (event loop) with ``(TaskResult, tail seconds, batch size)`` or a `RequestFailed`."""
    tail_started: asyncio.Future[None]
    """Resolved when the batch holding this request is handed to a worker thread (or it left the batcher)."""
    added: float = field(default_factory=time.monotonic)

    def shape(self) -> tuple[int, ...]:
        return () if self.features is None else tuple(self.features.shape)


def batch_counter(registry: CollectorRegistry) -> Counter:
    """``splitfc_cloud_tail_batches_total`` (split, size): tail batches run, by request count (1 ..
    max_batch_size: a closed label set)."""
    return Counter(
        "splitfc_cloud_tail_batches", "Tail batches run (dynamic batching), by their number of requests.",
        ["split", "size"], registry=registry,
    )


class TailBatcher:
    """Collects decoded requests per (split, preset) and runs their tails in batches on ``executor``."""

    def __init__(
        self,
        executor: Executor,
        slots: FairSlots,
        max_batch_size: int,
        max_delay_s: float,
        counter: Counter,
        logger: logging.Logger,
        inline_max_s: float = 0.0,
    ) -> None:
        self.executor = executor
        self.slots = slots
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.counter = counter
        self.log = logger
        self.pending: dict[BatchKey, list[TailRequest]] = {}
        self._timers: dict[BatchKey, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._asking: set[BatchKey] = set()
        """Keys with a dispatch waiting for a worker slot (one at a time per key)."""
        self.holding = 0
        """Worker slots held by batches now."""
        self.inline_max_s = inline_max_s
        """A key whose tail has cost at most this per request (`tail_cost`) runs its batches on the event
        loop, holding their worker slot meanwhile; 0: every batch in the pool."""
        self.tail_cost: dict[BatchKey, float] = {}
        """Per key, the CPU seconds per request of its recent batched tails (thread CPU time, moving
        average over batches run so far, wherever they ran); unknown until its first batch has run."""

    def requests_in_flight(self) -> int:
        """Requests queued for a slot or holding one (decoding): those that may still join a batch."""
        return self.slots.queued + self.slots.slots - self.slots.free - self.holding

    # -- the event loop side ------------------------------------------------------------------
    def add(self, key: BatchKey, req: TailRequest) -> None:
        """Queue a decoded request for its tail; asks for a worker slot once the batch is due."""
        self.pending.setdefault(key, []).append(req)
        self._maybe_dispatch(key)

    def poke(self) -> None:
        """A decode ended without joining a batch: dispatch what waits if nothing comes any more."""
        for key in list(self.pending):
            self._maybe_dispatch(key)

    def _due(self, key: BatchKey) -> bool:
        queue = self.pending[key]
        return (len(queue) >= self.max_batch_size or self.requests_in_flight() == 0
                or time.monotonic() - queue[0].added >= self.max_delay_s)

    def _maybe_dispatch(self, key: BatchKey) -> None:
        if not self.pending.get(key) or key in self._asking:
            return
        if self._due(key):
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()
            self._asking.add(key)
            task = asyncio.get_running_loop().create_task(self._dispatch(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif key not in self._timers:
            wait = self.pending[key][0].added + self.max_delay_s - time.monotonic()
            self._timers[key] = asyncio.get_running_loop().call_later(max(0.0, wait), self._expired, key)

    def _expired(self, key: BatchKey) -> None:
        self._timers.pop(key, None)
        self._maybe_dispatch(key)

    def _take(self, key: BatchKey) -> list[TailRequest]:
        """The next batch of ``key``: live requests of the first one's shape (any shape if the model takes
        mixed shapes), oldest first, at most ``max_batch_size`` and, while other worker slots are free, only
        this slot's share (the rest goes to the idle threads: a batch runs on one thread, and ``tail_batch``
        of a heavy tail costs what its requests cost one by one). Requests stopped meanwhile are answered."""
        queue, group, rest = self.pending.pop(key, []), [], []
        for req in queue:
            if req.stop.reason() is not None or req.answer.done():
                self._finish(req, req.stop.failure("while waiting for its batch; not run"))
            else:
                rest.append(req)
        queue, rest = rest, []
        share = min(self.max_batch_size, -(-len(queue) // (1 + max(0, self.slots.free))))
        for req in queue:
            if len(group) < share and (
                not group or req.model.tail_batch_mixed_shapes or req.shape() == group[0].shape()
            ):
                group.append(req)
            else:
                rest.append(req)
        if rest:
            self.pending[key] = rest
        return group

    async def _dispatch(self, key: BatchKey) -> None:
        """Take a worker slot (ahead of queued requests), then the batch: requests decoded while the
        slot was awaited join it (up to ``max_batch_size``); run its tail in the pool and answer."""
        # The slot is counted against the oldest request's client, as when that request held a slot for
        # its decode and tail without batching.
        client = self.pending[key][0].rec.client
        try:
            await self.slots.acquire_first(client)
        except asyncio.CancelledError:
            self._asking.discard(key)
            for req in self.pending.pop(key, []):
                self._finish(req, RequestFailed(Status.UNAVAILABLE, "server is shutting down"))
            raise
        self._asking.discard(key)
        group = self._take(key)
        self._maybe_dispatch(key)  # what is left may be due already (another shape, past max_batch_size)
        if not group:
            self.slots.release(client)
            return
        self.holding += 1
        cost = self.tail_cost.get(key)
        if cost is not None and cost <= self.inline_max_s:
            # A tail this cheap costs less than the hop to a worker thread and back, and run there it
            # contends with this loop for the GIL on every torch op: run it here (the slot is held).
            for req in group:
                resolve(req.tail_started, None)
            self._batch_done(client, group, self.run_batch(key, group))
            return
        loop = asyncio.get_running_loop()
        try:
            cfut = self.executor.submit(self.run_batch, key, group)
        except RuntimeError:
            self.holding -= 1
            self.slots.release(client)
            for req in group:
                self._finish(req, RequestFailed(Status.UNAVAILABLE, "server is shutting down"))
            return
        for req in group:  # the slot is a thread: the batch starts now
            resolve(req.tail_started, None)
        # the slot is given back when the thread returns, even if every caller left (the CPU bound holds)
        cfut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._batch_done, client, group, f))

    def _batch_done(self, client: str, group: list[TailRequest], cfut: Any) -> None:
        """A batch ended: ``cfut`` is its pool future, or (run on the loop) `run_batch`'s outcomes."""
        self.holding -= 1
        self.slots.release(client)
        self.poke()
        if isinstance(cfut, list):
            outcomes: list[Any] = cfut
        elif cfut.cancelled():
            outcomes = [RequestFailed(Status.UNAVAILABLE, "server is shutting down")] * len(group)
        else:
            outcomes = cfut.result()  # run_batch never raises
        for req, outcome in zip(group, outcomes, strict=True):
            self._finish(req, outcome)

    @staticmethod
    def _finish(req: TailRequest, outcome: Any) -> None:
        req.features = None
        resolve(req.answer, outcome)
        resolve(req.tail_started, None)

    # -- the worker thread side ---------------------------------------------------------------
    def run_batch(self, key: BatchKey, group: list[TailRequest]) -> list[Any]:
        """Run one batch's tail (worker thread, or the loop for cheap tails): per request ``(TaskResult,
        tail s, batch size)`` or a `RequestFailed`; never raises. Requests stopped since the dispatch are
        not run. Updates ``tail_cost[key]``."""
        split = key[0]
        outcomes: list[Any] = [None] * len(group)
        run = []
        for i, req in enumerate(group):
            if req.stop.reason() is not None:
                outcomes[i] = req.stop.failure("while waiting for its batch; not run")
            else:
                run.append(i)
        if not run:
            return outcomes
        model = group[run[0]].model
        t0, cpu0 = time.perf_counter(), time.thread_time()
        try:
            results = [task_result_to_proto(o) for o in model.tail_batch([group[i].features for i in run])]
            if len(results) != len(run):
                raise RuntimeError(f"tail_batch returned {len(results)} outputs for {len(run)} requests")
        except Exception:
            if len(run) > 1:
                self.log.warning(f"batched tail of {split} failed; running its {len(run)} requests one by one",
                                 exc_info=True)
            results = [self._single(split, group[i]) for i in run]
        tail_s = time.perf_counter() - t0
        per_request = (time.thread_time() - cpu0) / len(run)
        last = self.tail_cost.get(key)
        self.tail_cost[key] = per_request if last is None else 0.8 * last + 0.2 * per_request
        self.counter.labels(split, str(len(run))).inc()
        for i, result in zip(run, results, strict=True):
            outcomes[i] = result if isinstance(result, RequestFailed) else (result, tail_s, len(run))
        return outcomes

    def _single(self, split: str, req: TailRequest) -> svc.TaskResult | RequestFailed:
        try:
            return task_result_to_proto(req.model.tail(req.features))  # type: ignore[arg-type]
        except Exception as exc:
            self.log.exception("tail failed", extra={"fields": {"request_id": req.rec.request_id}})
            return RequestFailed(Status.INTERNAL, f"tail of {split} failed: {type(exc).__name__}: {exc}")


def resolve(fut: asyncio.Future[Any], value: Any) -> None:
    """Set ``fut``'s result unless it is done (or cancelled) already."""
    if not fut.done():
        fut.set_result(value)
