"""One request as the engine sees it: its bytes, why its work should stop, what it logs, what it answers.

Transport-free, like the engine (`splitfc.cloud.engine`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from splitfc.cloud.errors import RequestFailed, Status
from splitfc.common.transport import MAX_REQUEST_ID_CHARS
from splitfc.common.untrusted import quote
from splitfc.v1 import bitstream_pb2 as bpb
from splitfc.v1 import service_pb2 as svc

Bitstream = bytes | bpb.FeatureBitstream


class Payload:
    """A request's bitstream, held in one place: `drop` (when the request ends) frees it even if a frame
    or a traceback somewhere still refers to the holder."""

    __slots__ = ("data",)

    def __init__(self, data: Bitstream | None) -> None:
        self.data = data

    def drop(self) -> None:
        self.data = None


class WorkStop:
    """Why a request's work should stop: its deadline passed, or the caller went away."""

    __slots__ = ("abandoned", "deadline")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        """The caller's deadline on ``time.monotonic()``'s clock (None: none)."""
        self.abandoned: str | None = None
        """Set by the event loop when nobody waits for the result any more."""

    def reason(self) -> str | None:
        if self.abandoned is not None:
            return self.abandoned
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline exceeded"
        return None

    def failure(self, where: str) -> RequestFailed:
        reason = self.reason() or "stopped"
        status = Status.DEADLINE_EXCEEDED if reason == "deadline exceeded" else Status.CANCELLED
        return RequestFailed(status, f"{reason} {where}")


@dataclass
class RequestRecord:
    """What one request logs and counts."""

    request_id: str
    method: str
    split: str | None = None
    codec: str | None = None
    qp: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    status: str = "OK"
    message: str = ""
    client: str = ""


@dataclass(frozen=True)
class InferOutcome:
    """A successful request: the task result and what the response reports beside it."""

    request_id: str
    split: str
    result: svc.TaskResult
    timings_ms: dict[str, float]
    """``queue_ms``, ``decode_ms``, ``tail_ms``, ``total_ms`` (server side)."""
    stats: dict[str, Any]
    """`BitstreamStats.as_dict()` of the request's bitstream."""




def request_id_problem(request_id: str) -> str | None:
    """Why a client's request id is refused (None: it is fine)."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        return (f"request_id of {len(request_id)} characters is over the limit of {MAX_REQUEST_ID_CHARS}: "
                f"{quote(request_id)}")
    return None
