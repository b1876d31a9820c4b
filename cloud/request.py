"""One request as the engine sees it: its bytes, why its work should stop, what it logs, what it answers.

Transport-free, like the engine (`splitfc.cloud.engine`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import Message

from splitfc.cloud.errors import RequestFailed, Status
from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import SplitModel
from splitfc.common.transport import MAX_REQUEST_ID_CHARS, MESSAGE_HEADROOM, bitstream_room
from splitfc.common.untrusted import quote
from splitfc.common.wire import task_result_to_proto
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


ANSWER_SLACK_BYTES = 64
"""Room for an answer's varints (class ids, lengths) to grow past those of the start-up probe's answer."""


def answer_problem(result: svc.TaskResult, max_message_bytes: int) -> RequestFailed | None:
    """The failure of an answer that would not fit one gRPC message (None: it fits).

    The response wraps ``result`` with a request id, timings and rates: `bitstream_room`'s headroom is kept
    for them. Without this check gRPC fails the send after the request was counted OK (the client sees
    RESOURCE_EXHAUSTED, the server's metrics and log said OK)."""
    size, room = result.ByteSize(), bitstream_room(max_message_bytes)
    if size <= room:
        return None
    return RequestFailed(
        Status.RESOURCE_EXHAUSTED,
        f"answer of {size} bytes does not fit the {max_message_bytes}-byte message limit (max_message_bytes, "
        f"{MESSAGE_HEADROOM} bytes kept for the response's other fields)", limit="answer_bytes",
    )


def _arrays(message: Message) -> Iterator[svc.Array]:
    for desc, value in message.ListFields():
        if desc.type != desc.TYPE_MESSAGE:
            continue
        for item in [value] if isinstance(value, Message) else value:
            if isinstance(item, svc.Array):
                yield item
            else:
                yield from _arrays(item)


def answer_bound(result: svc.TaskResult) -> int:
    """Most bytes an answer shaped like ``result`` can take: integer arrays at 4 bytes per element (a mask
    of class ids over 65535 is int32), plus `ANSWER_SLACK_BYTES` for varints."""
    extra = 0
    for array in _arrays(result):
        width = {"uint8": 1, "uint16": 2}.get(array.dtype)
        if width is not None:
            extra += (len(array.data) // width) * (4 - width) + 8
    return result.ByteSize() + extra + ANSWER_SLACK_BYTES


_PROBED: dict[tuple[str, str], int] = {}
"""`probe_answer_bytes` by (split, preset) of models loaded before in this process (test servers)."""


def probe_answer_bytes(model: SplitModel, tokens: int = 16) -> int:
    """`answer_bound` of ``model``'s answer to zero features of its expected shape (``tokens`` for a
    variable-length axis): runs the tail once, blocking (an answer's size depends on the model's output
    shape, not on the features' values, but for integer widths and varints, which the bound covers).
    Wrappers that keep the real model as ``inner`` (test doubles with slow tails) are looked through."""
    while isinstance(getattr(model, "inner", None), SplitModel):
        model = model.inner  # type: ignore[attr-defined]
    key = (str(getattr(model.spec, "id", "")), str(getattr(model, "preset", "")))
    if key[0] and key[1] and key in _PROBED:
        return _PROBED[key]
    shape = tuple(tokens if s is None else int(s) for s in model.expected_shape())
    need = answer_bound(task_result_to_proto(model.tail(np.zeros(shape, np.float32))))
    if key[0] and key[1]:
        _PROBED[key] = need
    return need


def check_answers_fit(models: dict[str, SplitModel], max_message_bytes: int) -> None:
    """Raise `SplitfcError` (one line) unless every served split's answer fits one gRPC message."""
    room = bitstream_room(max_message_bytes)
    for split, model in models.items():
        need = probe_answer_bytes(model)
        if need > room:
            raise SplitfcError(
                f"max_message_bytes={max_message_bytes} cannot hold split {split}'s answers (up to {need} bytes "
                f"+ {MESSAGE_HEADROOM} of framing): set SPLITFC_CLOUD_MAX_MESSAGE_BYTES >= {need + MESSAGE_HEADROOM} "
                f"(and the edge's the same), or do not serve {split}"
            )
