"""The edge's side of transport security: channel credentials and the bearer token.

TLS when ``tls_ca`` is set (or ``tls`` for the system roots), mutual TLS with ``tls_cert`` +
``tls_key``. Plaintext is used to a loopback target, or anywhere with ``allow_plaintext``
(``--insecure``); otherwise `channel_for` refuses. The token (``token_file`` or ``token``) goes as
``authorization: Bearer <token>`` metadata on every call.

A loopback target (localhost, 127.0.0.0/8, ::1, a unix socket: `is_loopback_target`) never goes
through an HTTP proxy: gRPC honours ``grpc_proxy`` / ``https_proxy`` / ``http_proxy`` for loopback
targets too unless ``no_proxy`` lists the host, and a proxy cannot reach this machine's loopback
anyway, so its channels get `LOOPBACK_CHANNEL_OPTIONS`. Other targets use the proxy as gRPC does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc

from splitfc.common.errors import SplitfcError
from splitfc.common.transport import is_loopback
from splitfc.edge.settings import EdgeSettings

LOOPBACK_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.enable_http_proxy", 0),)
"""Channel arguments added for a loopback target: no HTTP proxy, whatever the environment says."""
PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "http_proxy")
"""Environment variables gRPC core reads a proxy from (lower case only), the first one set wins
(gRPC's doc/environment_variables.md)."""
UNIX_SCHEMES = ("unix:", "unix-abstract:")


def target_host(target: str) -> str:
    """The host of ``host:port`` / ``[v6]:port`` / ``dns:///host:port``."""
    t = target.split("///", 1)[-1]
    if t.startswith("["):
        return t[1:].split("]", 1)[0]
    return t.rsplit(":", 1)[0] if t.count(":") == 1 else t


def is_loopback_target(target: str) -> bool:
    """True for a target on this machine: a loopback host (`is_loopback` of `target_host`) or a unix socket."""
    if target.startswith(UNIX_SCHEMES):
        return True
    return is_loopback(target_host(target))


def channel_options(target: str, settings: EdgeSettings) -> list[tuple[str, int | str]]:
    """Channel arguments for ``target``: ``settings.grpc_options()``, plus `LOOPBACK_CHANNEL_OPTIONS` for a
    loopback target (`is_loopback_target`)."""
    options: list[tuple[str, int | str]] = list(settings.grpc_options())
    if is_loopback_target(target):
        options.extend(LOOPBACK_CHANNEL_OPTIONS)
    return options


def proxy_note(target: str) -> str:
    """``""``, or a sentence naming the proxy variable a channel to ``target`` may go through (for error
    messages): only for a non-loopback target, and only when one of `PROXY_VARIABLES` is set.
    ``no_grpc_proxy`` / ``no_proxy`` are not evaluated here: the note says "may"."""
    if is_loopback_target(target):
        return ""
    for name in PROXY_VARIABLES:
        value = os.environ.get(name)
        if value:
            scheme, _, rest = value.rpartition("://")
            shown = (scheme + "://" if scheme else "") + rest.rsplit("@", 1)[-1]  # never the URL's user:password
            return (f" (the channel may go through the proxy {shown} of {name}: "
                    f"list {target_host(target)} in no_proxy to connect directly)")
    return ""


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SplitfcError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_token(settings: EdgeSettings) -> str | None:
    """The bearer token of ``token_file`` (first non-comment line) or ``token``; None without one."""
    if settings.token_file is not None:
        lines = [ln.strip() for ln in _read(settings.token_file, "token file").decode().splitlines()]
        tokens = [ln for ln in lines if ln and not ln.startswith("#")]
        if not tokens:
            raise SplitfcError(f"token file {settings.token_file} holds no token")
        return tokens[0]
    if settings.token is not None and settings.token.get_secret_value().strip():
        return settings.token.get_secret_value().strip()
    return None


def call_metadata(settings: EdgeSettings) -> tuple[tuple[str, str], ...]:
    """Metadata added to every call: the bearer token, if any."""
    token = load_token(settings)
    return () if token is None else (("authorization", f"Bearer {token}"),)


def channel_for(target: str, settings: EdgeSettings, warn: bool = True) -> grpc.aio.Channel:
    """An aio channel to ``target`` under the TLS policy of ``settings``, with `channel_options`."""
    s = settings
    options = channel_options(target, s)
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SplitfcError(
            "mutual TLS needs both SPLITFC_EDGE_TLS_CERT and SPLITFC_EDGE_TLS_KEY (--tls-cert/--tls-key)"
        )
    if s.tls or s.tls_ca is not None or s.tls_cert is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(s.tls_ca, "CA bundle") if s.tls_ca is not None else None,
            private_key=_read(s.tls_key, "TLS key") if s.tls_key is not None else None,
            certificate_chain=_read(s.tls_cert, "TLS certificate") if s.tls_cert is not None else None,
        )
        if s.tls_server_name:
            options.append(("grpc.ssl_target_name_override", s.tls_server_name))
        return grpc.aio.secure_channel(target, creds, options=options)
    host = target_host(target)
    if not is_loopback(host):
        if not s.allow_plaintext:
            raise SplitfcError(
                f"refusing plaintext to non-loopback {target}: set --tls-ca (SPLITFC_EDGE_TLS_CA) or "
                "SPLITFC_EDGE_TLS=true, or pass --insecure to allow plaintext explicitly"
            )
        if warn:
            print(f"splitfc edge: warning: PLAINTEXT to {target}, explicitly allowed (--insecure): "
                  "requests and the token can be read and altered on the path", file=sys.stderr, flush=True)
    return grpc.aio.insecure_channel(target, options=options)
