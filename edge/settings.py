"""Edge client settings (env prefix ``SPLITFC_EDGE_``).

The message limit and keepalive fields are shared with the cloud
(`splitfc.common.transport.GrpcChannelSettings`); ``keepalive_time_ms`` must be
>= the server's ``min_ping_interval_ms`` (10 s by default), else the server
answers GOAWAY (too_many_pings).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from splitfc.common.transport import (
    MAX_GRPC_MESSAGE_BYTES,
    MESSAGE_HEADROOM,
    MIB,
    GrpcChannelSettings,
    bitstream_room,
)

DEFAULT_CHUNK_BYTES = 4 * MIB


class EdgeSettings(GrpcChannelSettings):
    """How `splitfc edge run` talks to the cloud; env ``SPLITFC_EDGE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_EDGE_", extra="ignore")

    max_receive_message_bytes: int = 16 * MIB
    """Largest answer the edge accepts (``grpc.max_receive_message_length``; env
    ``SPLITFC_EDGE_MAX_RECEIVE_MESSAGE_BYTES``), apart from ``max_message_bytes``, which limits what it sends: a
    small send limit (many small chunks) must not refuse a large answer (a Dpt depth map is ~62 KB on tiny)."""
    retries: int = 4
    """Extra attempts after UNAVAILABLE or a stream reset (CANCELLED); no other status is retried."""
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    backoff_multiplier: float = 2.0
    deadline_s: float = 60.0
    """Per request, all attempts together."""
    chunk_bytes: int | None = None
    """Bitstreams up to this size go unary; larger ones as chunks of this size. Default 4 MiB, or less when
    ``max_message_bytes`` (or the server's limit, from GetInfo) leaves less room: a message carries at most
    ``max_message_bytes - 1024`` bitstream bytes (``MESSAGE_HEADROOM``: tags, lengths, request id)."""
    workers: int = 2
    """Threads running head + encode (CPU work)."""
    torch_threads: int = 1
    cache_dir: Path = Path.home() / ".cache" / "splitfc" / "references"
    """Where uncompressed reference outputs are cached (accuracy without ground truth)."""
    log_file: str | None = None
    """Where request JSON lines go (default: stderr when --log is given, else nowhere)."""
    # -- hardening (docs/hardening.md) --------------------------------------------------------
    tls: bool = False
    """Use TLS with the system's root certificates (implied by ``tls_ca``)."""
    tls_ca: Path | None = None
    """PEM CA bundle that signed the cloud's certificate: TLS."""
    tls_cert: Path | None = None
    """PEM client certificate for mutual TLS (with ``tls_key``)."""
    tls_key: Path | None = None
    tls_server_name: str | None = None
    """Name to check the server certificate against, when it differs from the target's host."""
    token_file: Path | None = None
    """File whose first non-comment line is the bearer token sent on every call."""
    token: SecretStr | None = None
    """The bearer token itself (env ``SPLITFC_EDGE_TOKEN``); ``token_file`` wins when both are set."""
    allow_plaintext: bool = False
    """Talk plaintext to a non-loopback cloud (``--insecure``); loopback is always allowed."""

    @model_validator(mode="after")
    def _chunks_fit_messages(self) -> EdgeSettings:
        room = bitstream_room(self.max_message_bytes)
        if self.chunk_bytes is None:
            self.chunk_bytes = min(DEFAULT_CHUNK_BYTES, room)
        elif not 1 <= self.chunk_bytes <= room:
            raise ValueError(
                f"chunk_bytes={self.chunk_bytes} cannot work with max_message_bytes={self.max_message_bytes}: "
                f"a chunk carries 1 to {room} bytes (the message limit minus {MESSAGE_HEADROOM} of framing)"
            )
        if not 1 <= self.max_receive_message_bytes <= MAX_GRPC_MESSAGE_BYTES:
            raise ValueError(
                f"max_receive_message_bytes={self.max_receive_message_bytes} cannot work: it must be in "
                f"[1, {MAX_GRPC_MESSAGE_BYTES}]"
            )
        return self

    def grpc_options(self) -> list[tuple[str, int]]:
        """Channel arguments of the client."""
        receive = ("grpc.max_receive_message_length", self.max_receive_message_bytes)
        return [
            *(receive if name == receive[0] else (name, value) for name, value in self.channel_options()),
            ("grpc.http2.max_pings_without_data", 0),
            # Retries are ours (UNAVAILABLE only, with backoff); keep gRPC's transparent ones off.
            ("grpc.enable_retries", 0),
        ]
