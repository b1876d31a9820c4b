"""Transport security and per-client limits of the cloud: TLS, bearer tokens, streams per client.

* `TokenSet`: the accepted bearer tokens (a file, one per line, and/or ``SPLITFC_CLOUD_AUTH_TOKENS``),
  checked with `hmac.compare_digest` against every token (no early exit on a match).
* `check_transport`: the start-up policy. TLS when a certificate and key are configured (mutual TLS
  when a client CA is too); plaintext only on a loopback address, or anywhere with ``allow_plaintext``
  (``--insecure``); either way a warning is printed. A non-loopback bind also needs tokens or mutual TLS
  unless ``allow_unauthenticated`` (``--insecure`` sets both).
* `ServerGuard`: a ``grpc.aio.ServerInterceptor`` that refuses a call without a valid token
  (UNAUTHENTICATED) before the handler runs or reads the request, and bounds the concurrent
  ``splitfc.v1.SplitInference`` calls of one client (RESOURCE_EXHAUSTED). Health and reflection
  are exempt from both.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from splitfc.cloud.metrics import CloudMetrics
from splitfc.cloud.settings import CloudSettings
from splitfc.common.errors import SplitfcError
from splitfc.common.transport import is_loopback

SERVICE_PREFIX = "/splitfc.v1.SplitInference/"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Methods served without a token (probes and generic tools)."""
BEARER = "bearer "


class SecurityConfigError(SplitfcError):
    """TLS/token settings that cannot be used (missing file, half a key pair, plaintext refused)."""


def read_token_file(path: Path) -> list[str]:
    """Tokens of a file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise SecurityConfigError(f"token file {path} holds no token")
    return tokens


class TokenSet:
    """Accepted bearer tokens; `match` compares in constant time against every one of them."""

    def __init__(self, tokens: list[str]) -> None:
        for t in tokens:
            if any(c.isspace() for c in t) or not t.isprintable():
                raise SecurityConfigError("a bearer token must be printable and hold no whitespace")
        self._tokens = [t.encode() for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def match(self, given: str) -> int | None:
        """Index of the matching token, or None. Every token is compared, match or not."""
        candidate = given.encode("utf-8", "replace")
        found = -1
        for i, token in enumerate(self._tokens):
            if hmac.compare_digest(candidate, token) and found < 0:
                found = i
        return None if found < 0 else found

    def check_header(self, value: str | None) -> tuple[int | None, str]:
        """``Authorization`` header value -> (token index, failure reason: "" / "missing" / "invalid")."""
        if not value:
            return None, "missing"
        if value[: len(BEARER)].lower() != BEARER:
            return None, "invalid"
        index = self.match(value[len(BEARER):].strip())
        return (index, "") if index is not None else (None, "invalid")


def load_tokens(settings: CloudSettings) -> TokenSet:
    """The tokens of ``auth_tokens_file`` and ``auth_tokens`` (comma-separated) together."""
    tokens: list[str] = []
    if settings.auth_tokens_file is not None:
        tokens += read_token_file(settings.auth_tokens_file)
    if settings.auth_tokens is not None:
        tokens += [t.strip() for t in settings.auth_tokens.get_secret_value().split(",") if t.strip()]
    return TokenSet(tokens)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


@dataclass
class TransportPolicy:
    """What the server will do, decided once at start-up."""

    tls: bool
    mutual_tls: bool
    tokens: TokenSet
    warnings: list[str] = field(default_factory=list)
    cert: bytes = b""
    key: bytes = b""
    client_ca: bytes | None = None

    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        """Server credentials (None: plaintext)."""
        if not self.tls:
            return None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca, require_client_auth=self.mutual_tls,
        )


def check_transport(settings: CloudSettings) -> TransportPolicy:
    """Validate the TLS/token settings against the bind address; raise `SecurityConfigError` if refused."""
    s = settings
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SecurityConfigError(
            "TLS needs both SPLITFC_CLOUD_TLS_CERT and SPLITFC_CLOUD_TLS_KEY (--tls-cert/--tls-key)"
        )
    if s.tls_client_ca is not None and s.tls_cert is None:
        raise SecurityConfigError("a client CA (mutual TLS) needs a server certificate and key too")
    tokens = load_tokens(s)
    loopback = is_loopback(s.host)
    warnings: list[str] = []
    policy = TransportPolicy(tls=s.tls_cert is not None, mutual_tls=s.tls_client_ca is not None, tokens=tokens)
    if policy.tls:
        assert s.tls_cert is not None and s.tls_key is not None
        policy.cert, policy.key = _read(s.tls_cert, "TLS certificate"), _read(s.tls_key, "TLS key")
        if s.tls_client_ca is not None:
            policy.client_ca = _read(s.tls_client_ca, "client CA")
    elif loopback:
        warnings.append(f"no TLS configured: plaintext on loopback {s.host}, "
                        "fine for local use; set SPLITFC_CLOUD_TLS_CERT/KEY for anything else")
    elif s.allow_plaintext:
        warnings.append(f"PLAINTEXT (no TLS) on {s.host}, explicitly allowed (--insecure / "
                        "SPLITFC_CLOUD_ALLOW_PLAINTEXT): anyone on the path can read and alter traffic")
    else:
        raise SecurityConfigError(
            f"refusing plaintext on non-loopback address {s.host}: set SPLITFC_CLOUD_TLS_CERT and "
            "SPLITFC_CLOUD_TLS_KEY (--tls-cert/--tls-key), or pass --insecure to allow plaintext explicitly"
        )
    if not tokens and not policy.mutual_tls:
        if loopback:
            warnings.append("no auth tokens configured: any local process may call this server")
        elif s.allow_unauthenticated:
            warnings.append(f"NO AUTHENTICATION on {s.host}, explicitly allowed (--insecure / "
                            "SPLITFC_CLOUD_ALLOW_UNAUTHENTICATED): every client is accepted")
        else:
            raise SecurityConfigError(
                f"refusing to serve {s.host} without authentication: set SPLITFC_CLOUD_AUTH_TOKENS_FILE "
                "(--auth-tokens-file) or a client CA, or pass --insecure"
            )
    policy.warnings = warnings
    return policy


def client_key(token_index: int | None, peer: str) -> str:
    """Whom a per-client limit counts: the token when there is one, else the peer's address (no port)."""
    if token_index is not None:
        return f"token:{token_index}"
    # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:..."
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


current_client: ContextVar[str] = ContextVar("splitfc_client", default="")
"""`client_key` of the call being handled (set by `ServerGuard` around the handler): the engine schedules
workers fairly between clients with it."""


class StreamCounter:
    """Concurrent calls per client (event-loop only: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        n = self.active.get(key, 0)
        if n >= self.limit:
            return False
        self.active[key] = n + 1
        return True

    def release(self, key: str) -> None:
        n = self.active.get(key, 0) - 1
        if n <= 0:
            self.active.pop(key, None)
        else:
            self.active[key] = n


def _ignore_request(_data: bytes) -> None:
    """Request deserializer of a refused call: the bytes are never parsed."""
    return None


def _refusing_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts at once (reads nothing of a request stream)."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover  (abort raises)

    kind = _kind(handler)
    behaviour = refuse_stream if handler.response_streaming else refuse
    return handler._replace(request_deserializer=_ignore_request, **{kind: behaviour})  # type: ignore[attr-defined]


def _kind(handler: grpc.RpcMethodHandler) -> str:
    req = "stream" if handler.request_streaming else "unary"
    resp = "stream" if handler.response_streaming else "unary"
    return f"{req}_{resp}"


class ServerGuard(grpc.aio.ServerInterceptor):
    """Bearer-token check on every call but health/reflection; concurrent-call bound per client."""

    def __init__(self, tokens: TokenSet, metrics: CloudMetrics, max_streams_per_client: int) -> None:
        self.tokens = tokens
        self.metrics = metrics
        self.streams = StreamCounter(max_streams_per_client)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        token_index: int | None = None
        if self.tokens:
            value = None
            for key, val in details.invocation_metadata or ():
                if key == "authorization":
                    value = val if isinstance(val, str) else val.decode("latin-1")
                    break
            token_index, reason = self.tokens.check_header(value)
            if token_index is None:
                self.metrics.auth_failures.labels("grpc", reason).inc()
                return _refusing_handler(
                    handler, grpc.StatusCode.UNAUTHENTICATED,
                    "missing bearer token" if reason == "missing" else "invalid bearer token",
                )
        if method.startswith(SERVICE_PREFIX):
            return self._bounded(handler, token_index)
        return handler

    def _bounded(self, handler: grpc.RpcMethodHandler, token_index: int | None) -> grpc.RpcMethodHandler:
        """Wrap a service handler: count the call against its client, refuse it over the limit."""
        kind = _kind(handler)
        inner = getattr(handler, kind)
        streams, metrics = self.streams, self.metrics

        def refused(key: str) -> str:
            metrics.limit_rejections.labels("streams_per_client").inc()
            metrics.requests.labels("unknown", "unknown", "RESOURCE_EXHAUSTED").inc()
            return (f"client {key} already has {streams.limit} calls in flight "
                    f"(max_streams_per_client {streams.limit}); retry later")

        if handler.response_streaming:
            async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                key = client_key(token_index, context.peer())
                if not streams.acquire(key):
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused(key))
                current_client.set(key)
                try:
                    async for item in inner(request, context):
                        yield item
                finally:
                    streams.release(key)

            return handler._replace(**{kind: wrapped_stream})  # type: ignore[attr-defined]

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            key = client_key(token_index, context.peer())
            if not streams.acquire(key):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused(key))
            current_client.set(key)
            try:
                return await inner(request, context)
            finally:
                streams.release(key)

        return handler._replace(**{kind: wrapped})  # type: ignore[attr-defined]
