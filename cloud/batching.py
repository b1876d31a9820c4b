"""Dynamic batching of the tail: decoded requests of one split that arrive close together run as one batch.

Per split (and preset) the `TailBatcher` keeps the decoded requests waiting for their tail. A batch is
handed to the worker pool as soon as one of these holds:

* it has ``max_batch_size`` requests;
* no admitted request is still being decoded (nothing more can join soon: at concurrency 1 a request
  never waits for company);
* its first request has waited ``max_batch_delay_ms``.

A batch takes one worker slot of the engine's `FairSlots` (ahead of queued requests: its requests are
admitted and decoded already; a request holds a slot only while its decode runs), so worker threads stay
``max_concurrency`` and admission, the queue bound and RESOURCE_EXHAUSTED work as without batching.
A batch runs ``SplitModel.tail_batch`` on groups of equal feature shape (one group for models whose
``tail_batch_mixed_shapes`` is set, e.g. CSR, whose tail reads only the last token), each equal bit for bit
to ``tail`` per request (``tests/test_batching.py``). Requests whose caller is gone or whose deadline
passed while they waited are dropped before the batch runs (not run; the engine answers them
DEADLINE_EXCEEDED or CANCELLED). If a batched tail raises, its requests are run one by one, so one bad
request fails alone. As Triton's dynamic batcher (max batch size, max queue delay), on CPU worker threads.

Event loop only, except `run_batch` (a worker thread). Transport-free, like the engine.
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
    """Resolved when the batch holding this request starts running in a worker thread."""
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
        self.holding = 0
        """Worker slots held by batches now."""

    def requests_in_flight(self) -> int:
        """Requests queued for a slot or holding one (decoding): those that may still join a batch."""
        return self.slots.queued + self.slots.slots - self.slots.free - self.holding

    # -- the event loop side ------------------------------------------------------------------
    def add(self, key: BatchKey, req: TailRequest) -> None:
        """Queue a decoded request for its tail; dispatches at once when the batch is due."""
        queue = self.pending.setdefault(key, [])
        queue.append(req)
        if len(queue) >= self.max_batch_size or self.requests_in_flight() == 0:
            self.flush(key)
        elif key not in self._timers:
            self._timers[key] = asyncio.get_running_loop().call_later(self.max_delay_s, self.flush, key)

    def poke(self) -> None:
        """A decode ended without joining a batch: dispatch what waits if nothing comes any more."""
        if self.requests_in_flight() == 0:
            for key in list(self.pending):
                self.flush(key)

    def flush(self, key: BatchKey) -> None:
        """Hand the waiting requests of ``key`` to the pool, in groups the model's ``tail_batch`` takes."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        queue = self.pending.pop(key, [])
        live = []
        for req in queue:
            if req.stop.reason() is not None or req.answer.done():
                self._finish(req, req.stop.failure("while waiting for its batch; not run"))
            else:
                live.append(req)
        if not live:
            return
        groups: dict[tuple[int, ...], list[TailRequest]] = {}
        mixed = live[0].model.tail_batch_mixed_shapes
        for req in live:
            groups.setdefault(() if mixed else req.shape(), []).append(req)
        for group in groups.values():
            task = asyncio.get_running_loop().create_task(self._run_group(key[0], group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_group(self, split: str, group: list[TailRequest]) -> None:
        """Take a worker slot (ahead of queued requests), run the group's tail in the pool, answer."""
        # The batch runs as its first request's client: fair scheduling counts the slot against it, as
        # when that request held a slot for its decode and tail without batching.
        client = group[0].rec.client
        try:
            await self.slots.acquire_first(client)
        except asyncio.CancelledError:
            for req in group:
                self._finish(req, RequestFailed(Status.UNAVAILABLE, "server is shutting down"))
            raise
        self.holding += 1
        loop = asyncio.get_running_loop()
        try:
            cfut = self.executor.submit(self.run_batch, split, group, loop)
        except RuntimeError:
            self.holding -= 1
            self.slots.release(client)
            for req in group:
                self._finish(req, RequestFailed(Status.UNAVAILABLE, "server is shutting down"))
            return
        # the slot is given back when the thread returns, even if every caller left (the CPU bound holds)
        cfut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._batch_done, client, group, f))

    def _batch_done(self, client: str, group: list[TailRequest], cfut: Any) -> None:
        self.holding -= 1
        self.slots.release(client)
        if cfut.cancelled():
            outcomes: list[Any] = [RequestFailed(Status.UNAVAILABLE, "server is shutting down")] * len(group)
        else:
            outcomes = cfut.result()  # run_batch never raises
        for req, outcome in zip(group, outcomes, strict=True):
            self._finish(req, outcome)

    @staticmethod
    def _finish(req: TailRequest, outcome: Any) -> None:
        req.features = None
        if not req.answer.done():
            req.answer.set_result(outcome)

    # -- the worker thread side ---------------------------------------------------------------
    def run_batch(self, split: str, group: list[TailRequest], loop: asyncio.AbstractEventLoop) -> list[Any]:
        """Run one batch's tail (worker thread): per request ``(TaskResult, tail s, batch size)`` or a
        `RequestFailed`; never raises. Requests stopped since the dispatch are not run."""
        outcomes: list[Any] = [None] * len(group)
        run = []
        for i, req in enumerate(group):
            if req.stop.reason() is not None:
                outcomes[i] = req.stop.failure("while waiting for its batch; not run")
            else:
                run.append(i)
                loop.call_soon_threadsafe(_resolve, req.tail_started)
        if not run:
            return outcomes
        model = group[run[0]].model
        t0 = time.perf_counter()
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


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
