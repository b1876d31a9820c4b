"""Admission control: worker slots shared fairly between clients, and a budget of buffered upload bytes.

Transport-free; used by the engine (`splitfc.cloud.engine`) and the servicer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable

from splitfc.cloud.errors import RequestFailed, Status


class FairSlots:
    """``max_concurrency`` worker slots shared fairly between clients (event loop only: no lock).

    A freed slot goes to the waiting request of the client with the fewest running, among equals the
    one served least recently (round robin), so a client with a long queue cannot keep another's
    request waiting behind all of its own. The queue holds at most ``max_queue`` requests; when it is
    full, a request of a client with fewer waiting takes the place of the newest request of the client
    with the most (that one is refused with RESOURCE_EXHAUSTED), so one client cannot fill the queue
    for everyone.
    """

    def __init__(self, slots: int, max_queue: int, on_queue_change: Callable[[int], None]) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.free = slots
        self.running: dict[str, int] = {}
        self.waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}
        self.queued = 0
        self._seq = itertools.count()
        self._served: dict[str, int] = {}
        """When each client with requests running or waiting was last given a slot (`_seq` order)."""
        self._on_queue_change = on_queue_change
        self.urgent: deque[tuple[str, asyncio.Future[None]]] = deque()
        """Waiters served before every queued request (`acquire_first`), outside ``max_queue``."""

    def _busy(self, detail: str) -> RequestFailed:
        return RequestFailed(
            Status.RESOURCE_EXHAUSTED,
            f"server busy: {self.slots} requests running and {self.queued} waiting (max_queue {self.max_queue})"
            f"{detail}; retry later",
            limit="queue",
        )

    def _make_room(self, client: str) -> None:
        """Queue full: push out the newest waiter of the client with the most waiting, if it has more than
        ``client`` would; else refuse ``client``."""
        mine = len(self.waiting.get(client, ()))
        heaviest = max(self.waiting, key=lambda c: len(self.waiting[c]), default=None)
        if heaviest is None or len(self.waiting[heaviest]) <= mine + 1:
            raise self._busy("")
        _, victim = self.waiting[heaviest].pop()
        if not self.waiting[heaviest]:
            del self.waiting[heaviest]
            self._tidy(heaviest)
        self._set_queued(self.queued - 1)
        victim.set_exception(self._busy(", and another client was waiting with fewer requests"))

    def _set_queued(self, n: int) -> None:
        self.queued = n
        self._on_queue_change(n)

    def try_acquire(self, client: str) -> bool:
        """Take a free slot for ``client`` now if there is one (what `acquire` does without waiting)."""
        if self.free > 0:
            self.free -= 1
            self._grant(client)
            return True
        return False

    async def acquire(self, client: str) -> None:
        """Take a slot for ``client``, waiting in the queue if needed; raises `RequestFailed` (queue)."""
        if self.try_acquire(client):  # a free slot means nobody live is waiting (release hands slots to waiters first)
            return
        if self.queued >= self.max_queue:
            self._make_room(client)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._seq), fut)
        self.waiting.setdefault(client, deque()).append(entry)
        self._set_queued(self.queued + 1)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(client)  # granted just as the caller left: hand the slot on
            else:
                self._forget(client, entry)
            raise
        except RequestFailed as exc:
            raise exc.detached() from None

    async def acquire_first(self, client: str) -> None:
        """Take a slot for ``client`` ahead of every queued request, waiting for the next free one; not
        counted in ``max_queue`` or ``queued``. For work whose requests were admitted already: the tail
        batches of `splitfc.cloud.batching` (their requests are decoded and hold memory)."""
        if self.free > 0:
            self.free -= 1
            self._grant(client)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.urgent.append((client, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(client)  # granted just as the caller left: hand the slot on
            raise

    def _grant(self, client: str) -> None:
        self.running[client] = self.running.get(client, 0) + 1
        self._served[client] = next(self._seq)

    def _tidy(self, client: str) -> None:
        if client not in self.running and client not in self.waiting:
            self._served.pop(client, None)

    def _forget(self, client: str, entry: tuple[int, asyncio.Future[None]]) -> None:
        queue = self.waiting.get(client)
        if queue is not None and entry in queue:
            queue.remove(entry)
            if not queue:
                del self.waiting[client]
            self._set_queued(self.queued - 1)
        self._tidy(client)

    def release(self, client: str) -> None:
        """Give ``client``'s slot back: to the fairest waiter, else to the pool."""
        n = self.running.get(client, 0) - 1
        if n > 0:
            self.running[client] = n
        else:
            self.running.pop(client, None)
        self._tidy(client)
        while self.urgent:
            who, urgent = self.urgent.popleft()
            if not urgent.done():
                self._grant(who)
                urgent.set_result(None)
                return
        while self.waiting:
            nxt = min(self.waiting, key=lambda c: (self.running.get(c, 0), self._served.get(c, -1)))
            queue = self.waiting[nxt]
            _, fut = queue.popleft()
            if not queue:
                del self.waiting[nxt]
            self._set_queued(self.queued - 1)
            if fut.done():  # cancelled while queued (its task removes nothing more)
                self._tidy(nxt)
                continue
            self._grant(nxt)
            fut.set_result(None)
            return
        self.free += 1


class ByteBudget:
    """Bytes held at once across requests (the chunked-upload budget), in total and per client; event loop only.

    ``limit`` bounds all clients together, ``per_client`` (default: ``limit``) each client's share, so one
    client cannot take the whole budget."""

    def __init__(self, limit: int, on_change: Callable[[int], None], per_client: int | None = None) -> None:
        self.limit = limit
        self.per_client = limit if per_client is None else min(per_client, limit)
        self.used = 0
        self.by_client: dict[str, int] = {}
        self._on_change = on_change

    def left(self, client: str = "") -> int:
        """Bytes ``client`` may still take (its share and the total)."""
        return min(self.limit - self.used, self.per_client - self.by_client.get(client, 0))

    def refusal(self, n: int, client: str = "") -> str | None:
        """Which bound ``n`` more bytes of ``client`` would pass: ``"total"``, ``"client"``, or None."""
        if self.used + n > self.limit:
            return "total"
        if self.by_client.get(client, 0) + n > self.per_client:
            return "client"
        return None

    def take(self, n: int, client: str = "") -> bool:
        """Reserve ``n`` bytes for ``client``; False (nothing taken) when that would pass a bound."""
        if self.refusal(n, client) is not None:
            return False
        self.used += n
        self.by_client[client] = self.by_client.get(client, 0) + n
        self._on_change(self.used)
        return True

    def give(self, n: int, client: str = "") -> None:
        if n == 0:
            return
        self.used -= n
        held = self.by_client.get(client, 0) - n
        if held > 0:
            self.by_client[client] = held
        else:
            self.by_client.pop(client, None)
        self._on_change(self.used)
