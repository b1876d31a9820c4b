"""How the cloud answers errors: one table from error type to gRPC status; the metric label is the type's reason.

Errors are typed where they are found (`splitfc.common.errors`); the services
never look at a message's text to classify it, so a client-supplied string
cannot choose a status or a metric label.
"""

from __future__ import annotations

import grpc

from splitfc.common.errors import CodecUnavailableError, SplitfcError

STATUS_BY_ERROR: tuple[tuple[type[SplitfcError], grpc.StatusCode], ...] = (
    (CodecUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (SplitfcError, grpc.StatusCode.INVALID_ARGUMENT),
)
"""The first entry whose type matches the error decides its status (most specific first)."""


def status_for(exc: SplitfcError) -> tuple[grpc.StatusCode, str]:
    """gRPC status and metric reason of a `SplitfcError` raised while decoding a request."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return code, exc.reason
    return grpc.StatusCode.INVALID_ARGUMENT, SplitfcError.reason


class RequestFailed(Exception):
    """A request that ends with a non-OK gRPC status."""

    def __init__(
        self, code: grpc.StatusCode, message: str, reason: str | None = None, limit: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        """Decode-error reason for the metrics (None: not a bitstream problem)."""
        self.limit = limit if limit is not None else ("elements" if reason == "too_many_elements" else None)
        """Which limit refused the request (``splitfc_cloud_limit_rejections_total``), if one did."""

    @classmethod
    def from_error(cls, exc: SplitfcError) -> RequestFailed:
        """The failure that answers ``exc`` (status and reason from `status_for`)."""
        code, reason = status_for(exc)
        return cls(code, str(exc), reason)
