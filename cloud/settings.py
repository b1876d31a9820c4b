"""Cloud service settings (env prefix ``SPLITFC_CLOUD_``).

The message limit and keepalive fields are shared with the edge
(`splitfc.common.transport.GrpcChannelSettings`).
"""

from __future__ import annotations

from math import prod
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from splitfc.common.errors import SplitfcError
from splitfc.common.specs import SPLITS, get_split
from splitfc.common.transport import MIB, GrpcChannelSettings

DEFAULT_MAX_TOKENS = 8192
"""Token bound of variable-length splits (llama3-csr) when no max_elements is set."""


def default_max_elements(split_id: str) -> int:
    """Largest accepted feature tensor of a split: its paper shape (``N`` tokens -> 8192)."""
    shape = get_split(split_id).paper_shape
    return prod(DEFAULT_MAX_TOKENS if s is None else s for s in shape)


class CloudSettings(GrpcChannelSettings):
    """Everything `splitfc cloud serve` can be told; env ``SPLITFC_CLOUD_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_CLOUD_", extra="ignore")

    host: str = "127.0.0.1"
    grpc_port: int = 50051
    """gRPC port (0: pick a free one)."""
    http_port: int = 8000
    """HTTP port of /healthz, /readyz, /v1/info, /metrics (0: pick a free one)."""
    preset: str = "tiny"
    """Model preset: tiny (random-weight, seeded), small (pretrained small models offline, ``splitfc[small]``)
    or paper (real checkpoints)."""
    splits: str = "all"
    """Splits to serve: "all" or comma-separated ids."""
    max_bitstream_bytes: int = 256 * MIB
    """Largest serialized bitstream, unary or reassembled from chunks."""
    max_elements: dict[str, int] = Field(default_factory=dict)
    """Per split: largest declared feature tensor (elements); default: the paper shape."""
    max_concurrency: int = 2
    """Requests decoded + run at once (worker threads); keep x torch_threads <= cores."""
    max_queue: int = 64
    """Requests allowed to wait for a worker; beyond it: RESOURCE_EXHAUSTED."""
    torch_threads: int = 1
    """torch intra-op threads per worker."""
    processes: int = 1
    """Engine processes behind the one gRPC port (SO_REUSEPORT, docs/serving.md#several-engine-processes);
    start-up refuses processes x max_concurrency x torch_threads over the usable cores."""
    min_ping_interval_ms: int = 10_000
    """Smallest client ping interval the server permits (client keepalive_time_ms must be >= this)."""
    drain_seconds: float = 30.0
    """On SIGTERM: how long in-flight requests may take to finish."""
    log_file: str | None = None
    """Where request JSON lines go (default: stderr)."""
    log_requests: bool = True
    """Write one JSON line per request."""
    # -- dynamic batching of the tail (cloud/batching.py, docs/serving.md#dynamic-batching) -----------
    max_batch_size: int = Field(8, ge=1)
    """Most requests of one split whose tails run as one batch; 1: no batching. With batching, up to
    max_batch_size x max_concurrency requests are admitted at once (decoding, waiting for their batch or
    in it) on max_concurrency worker threads; beyond them requests queue (max_queue) as before."""
    max_batch_delay_ms: float = Field(2.0, ge=0)
    """Longest a decoded request waits for more requests to join its batch; a batch also starts as soon
    as it is full or no admitted request is still being decoded."""
    inline_decode_max_bytes: int = Field(0, ge=0)
    """With batching: a raw-coded request of at most this many bytes, on the wire and decoded (float32),
    is decoded on the event loop instead of in a worker thread (the hop costs more than such a decode;
    e.g. 262144 for tiny splits, docs/serving.md); 0 (default): every decode in the pool."""
    inline_tail_max_ms: float = Field(0.5, ge=0)
    """With batching: a split whose batched tail has cost at most this much CPU per request (measured on
    its batches so far) runs its batches on the event loop instead of a worker thread; 0: always the pool."""
    # -- hardening (docs/hardening.md) --------------------------------------------------------
    tls_cert: Path | None = None
    """PEM server certificate (chain): TLS on both the gRPC and the HTTP port. Needs ``tls_key``."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    tls_client_ca: Path | None = None
    """PEM CA bundle: mutual TLS, every client must present a certificate it signed."""
    auth_tokens_file: Path | None = None
    """Accepted bearer tokens, one per line (# comments): required on every RPC and HTTP route but health."""
    auth_tokens: SecretStr | None = None
    """More accepted bearer tokens, comma-separated (env ``SPLITFC_CLOUD_AUTH_TOKENS``)."""
    allow_plaintext: bool = False
    """Serve without TLS on a non-loopback address (loopback is always allowed; a warning either way)."""
    allow_unauthenticated: bool = False
    """Serve a non-loopback address with neither tokens nor mutual TLS."""
    max_decode_seconds: float = 30.0
    """Worker time (parse + decode + tail) one request may take; beyond it: RESOURCE_EXHAUSTED. 0: no limit."""
    max_streams_per_client: int = 64
    """Concurrent calls of one client (its token, else its IP address); beyond it: RESOURCE_EXHAUSTED."""
    upload_idle_seconds: float = 30.0
    """A call that sends nothing for this long while the server waits for its next message (a request, a
    chunk) ends with DEADLINE_EXCEEDED; frees its per-client slot and buffered bytes. Must be > 0."""
    max_buffered_upload_bytes: int = 1024 * MIB
    """Bytes of chunked uploads held at once, all streams together (received chunks until their request
    ends); a chunk past it, or a first chunk announcing more than is left: RESOURCE_EXHAUSTED."""
    max_stream_unsent: int = 8
    """Requests of one InferStream running or answered but not yet taken by the client; at the bound the
    server stops reading that stream's requests until the client reads an answer (back-pressure)."""
    max_buffered_upload_bytes_per_client: int | None = None
    """Share of ``max_buffered_upload_bytes`` one client (token, else IP address) may hold at once across its
    chunked uploads; past it: RESOURCE_EXHAUSTED (limit ``upload_bytes_per_client``). Default: a quarter of
    ``max_buffered_upload_bytes``, at least ``max_bitstream_bytes``."""
    min_upload_bytes_per_second: int = 32 * 1024
    """Slowest chunked upload accepted: after ``upload_rate_grace_seconds``, an upload must have delivered at
    least this many bytes per second since it began, else DEADLINE_EXCEEDED (limit ``upload_rate``). 0: off."""
    upload_rate_grace_seconds: float = 10.0
    """Start of a chunked upload not held to ``min_upload_bytes_per_second`` (connection set-up, slow start)."""
    max_upload_seconds: float = 600.0
    """Longest a chunked upload may take from its first message to its last, whatever its rate; past it:
    DEADLINE_EXCEEDED (limit ``upload_time``). Must be > 0."""
    stream_write_timeout_seconds: float = 30.0
    """An InferStream answer the client has not taken (flow control keeps it unwritten) for this long ends
    the stream with DEADLINE_EXCEEDED (limit ``stream_write``); frees its per-client slot. Must be > 0."""
    check_answer_sizes: bool = True
    """At start-up, run each served split's tail once on zero features and refuse to serve when its answer
    does not fit ``max_message_bytes`` (a slow preset's tail may make this take a while: then turn it off;
    answers over the limit are still refused per request, RESOURCE_EXHAUSTED, limit ``answer_bytes``)."""

    @field_validator("max_concurrency", "torch_threads", "max_streams_per_client", "max_stream_unsent", "processes")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("max_queue", "max_decode_seconds", "min_upload_bytes_per_second", "upload_rate_grace_seconds")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        from splitfc.common.models.base import PRESETS

        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; valid presets: {', '.join(PRESETS)}")
        return v

    @field_validator("upload_idle_seconds", "max_upload_seconds", "stream_write_timeout_seconds")
    @classmethod
    def _positive_seconds(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0 (a call that never times out holds its memory and slot forever)")
        return v

    @model_validator(mode="after")
    def _limits_work_together(self) -> CloudSettings:
        """Refuse combinations that cannot work, at start-up rather than on the first large request."""
        if self.max_bitstream_bytes < 1:
            raise ValueError(f"max_bitstream_bytes={self.max_bitstream_bytes} must be >= 1")
        if self.max_buffered_upload_bytes < self.max_bitstream_bytes:
            raise ValueError(
                f"max_buffered_upload_bytes={self.max_buffered_upload_bytes} is below max_bitstream_bytes="
                f"{self.max_bitstream_bytes}: a bitstream of the largest accepted size could never be uploaded"
            )
        per_client = self.max_buffered_upload_bytes_per_client
        if per_client is not None and per_client < self.max_bitstream_bytes:
            raise ValueError(
                f"max_buffered_upload_bytes_per_client={per_client} is below max_bitstream_bytes="
                f"{self.max_bitstream_bytes}: a bitstream of the largest accepted size could never be uploaded"
            )
        return self

    def upload_bytes_per_client(self) -> int:
        """The per-client share of the buffered-upload budget in force (see the field)."""
        if self.max_buffered_upload_bytes_per_client is not None:
            return min(self.max_buffered_upload_bytes_per_client, self.max_buffered_upload_bytes)
        return max(self.max_bitstream_bytes, self.max_buffered_upload_bytes // 4)

    def split_ids(self) -> list[str]:
        """The split ids to serve, validated."""
        if self.splits.strip() in ("", "all"):
            return list(SPLITS)
        ids = [s.strip() for s in self.splits.split(",") if s.strip()]
        for s in ids:
            get_split(s)
        if len(set(ids)) != len(ids):
            raise SplitfcError(f"split listed twice in {self.splits!r}")
        return ids

    def max_elements_for(self, split_id: str) -> int:
        return self.max_elements.get(split_id, default_max_elements(split_id))

    def grpc_options(self) -> list[tuple[str, int]]:
        """Channel arguments of the gRPC server."""
        return [
            *self.channel_options(),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", 2),
        ]
