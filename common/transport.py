"""What both ends of the gRPC link share: loopback checks and the channel settings that must agree.

The cloud (`splitfc.cloud.settings.CloudSettings`) and the edge
(`splitfc.edge.settings.EdgeSettings`) subclass `GrpcChannelSettings` with their
own env prefix, so the message limit and keepalive fields and the channel
arguments they imply are written once. A client that pings more often than the
server permits (``min_ping_interval_ms``) gets GOAWAY (too_many_pings).
"""

from __future__ import annotations

import ipaddress

from pydantic import model_validator
from pydantic_settings import BaseSettings

MIB = 1 << 20
MAX_REQUEST_ID_CHARS = 128
"""Longest request id the cloud accepts (a UUID is 32-36); longer ones are refused, never echoed."""
MESSAGE_HEADROOM = 1024
"""Bytes a request message needs beside the bitstream bytes it carries: field tags and lengths, a request
id of up to `MAX_REQUEST_ID_CHARS` characters (UTF-8: <= 512 bytes), a chunk's ``total_bytes``."""
MIN_MESSAGE_BYTES = 4 * MESSAGE_HEADROOM
"""Smallest ``max_message_bytes`` either side accepts: below it a message carries (almost) no bitstream."""
MAX_GRPC_MESSAGE_BYTES = (1 << 31) - 1
"""gRPC takes the message limit as a signed 32-bit integer."""


def bitstream_room(max_message_bytes: int) -> int:
    """Most bitstream bytes one request message (``InferRequest`` or ``BitstreamChunk``) can carry."""
    return max_message_bytes - MESSAGE_HEADROOM


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1, bracketed or not); False for 0.0.0.0 and names."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GrpcChannelSettings(BaseSettings):
    """gRPC message limit and keepalive, the same fields on both sides (each side sets its env prefix)."""

    max_message_bytes: int = 16 * MIB
    """Largest gRPC message, both directions (gRPC's default receive limit is 4 MiB); keep both sides equal.
    The edge receives up to its own ``max_receive_message_bytes`` instead (`splitfc.edge.settings`)."""
    keepalive_time_ms: int = 30_000
    """Keepalive ping interval (the edge's must be >= the cloud's ``min_ping_interval_ms``)."""
    keepalive_timeout_ms: int = 10_000
    """How long to wait for a keepalive ack."""

    @model_validator(mode="after")
    def _message_limit_works(self) -> GrpcChannelSettings:
        if not MIN_MESSAGE_BYTES <= self.max_message_bytes <= MAX_GRPC_MESSAGE_BYTES:
            raise ValueError(
                f"max_message_bytes={self.max_message_bytes} cannot work: it must be in [{MIN_MESSAGE_BYTES}, "
                f"{MAX_GRPC_MESSAGE_BYTES}] (a message needs {MESSAGE_HEADROOM} bytes of framing besides its data)"
            )
        return self

    def channel_options(self) -> list[tuple[str, int]]:
        """The channel arguments both sides set the same way."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
