"""How the cloud answers errors, transport-free: a status per error type, the metric label from the type.

Errors are typed where they are found (`splitfc.common.errors`); the cloud never
looks at a message's text to classify it, so a client-supplied string cannot
choose a status or a metric label. `Status` names the outcome in gRPC's terms
(the servicer maps it to ``grpc.StatusCode`` by name; the HTTP side could map it
to HTTP codes) so the engine needs no transport import.
"""

from __future__ import annotations

from enum import Enum
from typing import Self

from splitfc.common.errors import ArtefactUnavailableError, CodecUnavailableError, SplitfcError


class Status(Enum):
    """Request outcomes the engine reports (the gRPC status code names and numbers)."""

    OK = 0
    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14


STATUS_BY_ERROR: tuple[tuple[type[SplitfcError], Status], ...] = (
    (CodecUnavailableError, Status.FAILED_PRECONDITION),
    (ArtefactUnavailableError, Status.FAILED_PRECONDITION),
    (SplitfcError, Status.INVALID_ARGUMENT),
)
"""The first entry whose type matches the error decides its status (most specific first)."""


def status_for(exc: SplitfcError) -> tuple[Status, str]:
    """Status and metric reason of a `SplitfcError` raised while decoding a request."""
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status, exc.reason
    return Status.INVALID_ARGUMENT, SplitfcError.reason


MAX_MESSAGE_CHARS = 1000
"""Longest error message sent or logged (gRPC sends it percent-encoded in a trailer of at most 8 KiB).
Client strings inside are cut and quoted where the message is written (`splitfc.common.untrusted.quote`);
this cap is the backstop."""


class RequestFailed(Exception):
    """A request that ends with a non-OK status."""

    def __init__(self, status: Status, message: str, reason: str | None = None, limit: str | None = None) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "..."
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        """Decode-error reason for the metrics (None: not a bitstream problem)."""
        self.limit = limit if limit is not None else ("elements" if reason == "too_many_elements" else None)
        """Which limit refused the request (``splitfc_cloud_limit_rejections_total``), if one did."""

    def detached(self) -> Self:
        """This failure without its traceback and chained exceptions: they hold the frames (and so the
        payload) of the code that raised it, and a frame that holds the failure back makes a reference
        cycle that only the garbage collector would free. Call it where a failure is kept or returned."""
        self.__traceback__ = None
        self.__context__ = None
        self.__cause__ = None
        return self

    @classmethod
    def from_error(cls, exc: SplitfcError) -> RequestFailed:
        """The failure that answers ``exc`` (status and reason from `status_for`)."""
        status, reason = status_for(exc)
        return cls(status, str(exc), reason)
