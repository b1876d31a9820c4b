"""Serving commands: ``cloud serve`` and ``edge run`` (the two halves of split inference)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from splitfc.common.models.base import PRESET_HELP, PRESETS

ORDER = 30


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud side: gRPC inference service + HTTP health/metrics")
    cloud_sub = cloud.add_subparsers(dest="cloud_command", metavar="COMMAND", required=True)
    p = cloud_sub.add_parser(
        "serve", help="serve splitfc.v1.SplitInference (gRPC) and /healthz /readyz /v1/info /metrics (HTTP)",
        description="Run until SIGTERM/SIGINT, then drain in-flight requests. "
        "Every option also reads SPLITFC_CLOUD_<NAME> (e.g. SPLITFC_CLOUD_MAX_CONCURRENCY).",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 picks a free one)")
    p.add_argument("--preset", choices=PRESETS, help=f"{PRESET_HELP} (default tiny)")
    p.add_argument("--splits", help="all, or comma-separated split ids (default all)")
    p.add_argument("--max-concurrency", type=_positive_int, help="requests decoded/run at once (default 2)")
    p.add_argument("--max-queue", type=int, help="requests allowed to wait (default 64)")
    p.add_argument(
        "--processes", type=_positive_int,
        help="engine processes behind the one gRPC port (SO_REUSEPORT; default 1); "
        "processes x max-concurrency x torch threads must fit the cores (docs/serving.md)",
    )
    p.add_argument("--log-file", help="request JSON lines go here (default stderr)")
    sec = p.add_argument_group("security (docs/hardening.md)")
    sec.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate: TLS on gRPC and HTTP")
    sec.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    sec.add_argument("--tls-client-ca", type=Path, metavar="PEM", help="mutual TLS: clients need a cert it signed")
    sec.add_argument("--auth-tokens-file", type=Path, metavar="PATH",
                     help="accepted bearer tokens, one per line (every RPC and HTTP route but health)")
    sec.add_argument("--insecure", action="store_true",
                     help="allow plaintext and unauthenticated clients on a non-loopback address")
    p.set_defaults(func=cmd_cloud_serve)

    edge = sub.add_parser("edge", help="the edge side: run head, code, send to a cloud, report")
    edge_sub = edge.add_subparsers(dest="edge_command", metavar="COMMAND", required=True)
    p = edge_sub.add_parser(
        "run", help="run N samples through head -> codec -> cloud and report rate, latency and accuracy",
        description="Every request ends as a result or an explicit error. Exit status 1 when any request failed. "
        "Client settings read SPLITFC_EDGE_<NAME> (retries, deadline_s, chunk_bytes, ...).",
    )
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="cloud gRPC address")
    p.add_argument("--split", required=True, help="split id, e.g. dinov2-cls")
    p.add_argument("--codec", required=True, help="codec name (see splitfc codecs)")
    p.add_argument("--raw-dtype", choices=["float32", "float16", "bfloat16"], help="raw codec: stored dtype")
    p.add_argument("--qp", type=int, default=None, help="rate: QP (vvenc/hevc/vtm) or quality index; raw: omit")
    p.add_argument("--samples", type=_positive_int, default=8, help="number of samples (default 8)")
    p.add_argument("--preset", choices=PRESETS, default="tiny", help=f"{PRESET_HELP} (default tiny)")
    p.add_argument(
        "--data", type=Path, metavar="PATH",
        help="the split's data set under PATH (ImageNet/VOC/NYU/ARC/COCO layouts, see splitfc.common.data) "
        "instead of the built-in samples",
    )
    p.add_argument("--concurrency", type=_positive_int, default=1, help="requests in flight (default 1)")
    p.add_argument("--deadline", type=float, help="seconds per request, all retries included (default 60)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the full report (every request) as JSON")
    p.add_argument("--log", action="store_true", help="write one JSON line per request to stderr")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the server to be ready")
    sec = p.add_argument_group("security (docs/hardening.md)")
    sec.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA that signed the cloud's certificate: TLS")
    sec.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    sec.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    sec.add_argument("--token-file", type=Path, metavar="PATH", help="bearer token sent on every call")
    sec.add_argument("--insecure", action="store_true", help="allow plaintext to a non-loopback cloud")
    p.set_defaults(func=cmd_edge_run)


def cmd_cloud_serve(args: argparse.Namespace) -> int:
    from splitfc.cloud.settings import CloudSettings

    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "host": args.host, "grpc_port": args.grpc_port, "http_port": args.http_port, "preset": args.preset,
            "splits": args.splits, "max_concurrency": args.max_concurrency, "max_queue": args.max_queue,
            "log_file": args.log_file, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
            "tls_client_ca": args.tls_client_ca, "auth_tokens_file": args.auth_tokens_file,
            "processes": args.processes,
        }.items()
        if value is not None
    }
    if args.insecure:
        overrides.update(allow_plaintext=True, allow_unauthenticated=True)
    settings = CloudSettings(**overrides)
    settings.split_ids()  # validate before binding anything

    def started(ep: Any) -> None:
        procs = f"  {settings.processes} engine processes" if settings.processes > 1 else ""
        print(
            f"splitfc cloud: gRPC {ep.grpc_target}  HTTP {ep.http_url}  preset {settings.preset}  "
            f"splits {','.join(settings.split_ids())}{procs}  (loading models; /readyz says when ready)",
            file=sys.stderr, flush=True,
        )

    if settings.processes > 1:
        # Imports nothing of prometheus_client or gRPC before the metrics directory is set.
        from splitfc.cloud.processes import serve_processes

        serve_processes(settings, on_start=started)
        print("splitfc cloud: stopped", file=sys.stderr)
        return 0

    from splitfc.cloud.server import CloudServer

    server = CloudServer(settings)

    async def main() -> None:
        await server.serve(on_start=started)

    asyncio.run(main())
    print("splitfc cloud: stopped", file=sys.stderr)
    return 0


def cmd_edge_run(args: argparse.Namespace) -> int:
    import grpc

    from splitfc.common.codecs import get_codec
    from splitfc.common.errors import SplitfcError
    from splitfc.common.jsonlog import json_logger, silent_logger
    from splitfc.common.specs import get_split
    from splitfc.edge.client import EdgeClient
    from splitfc.edge.runner import EdgeRunConfig, exit_code, format_summary, run_edge
    from splitfc.edge.settings import EdgeSettings

    get_split(args.split)
    codec = get_codec(args.codec)
    codec.require_available()
    qp = args.qp
    if qp is None:
        if codec.rate_name != "none":
            raise SplitfcError(f"codec {codec.name} needs --qp (its {codec.rate_name}), e.g. {list(codec.rates)}")
        qp = 0
    edge_overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key, "token_file": args.token_file,
        }.items()
        if value is not None
    }
    if args.insecure:
        edge_overrides["allow_plaintext"] = True
    settings = EdgeSettings(**edge_overrides)
    if args.log or settings.log_file:
        logger = json_logger("splitfc.edge.requests", settings.log_file)
    else:
        logger = silent_logger("splitfc.edge.requests")
    config = EdgeRunConfig(
        server=args.server, split=args.split, codec=args.codec, qp=qp, samples=args.samples, preset=args.preset,
        raw_dtype=args.raw_dtype,
        data=args.data, concurrency=args.concurrency, deadline_s=args.deadline,
    )

    async def main() -> dict[str, Any]:
        async with EdgeClient(args.server, settings) as client:
            try:
                info = await client.wait_ready(args.wait)
            except TimeoutError as exc:
                raise SplitfcError(str(exc)) from None
            except grpc.aio.AioRpcError as exc:
                raise SplitfcError(f"server {args.server}: {exc.code().name}: {exc.details()}") from None
        served = [s.split for s in info.splits]
        if args.split not in served:
            raise SplitfcError(f"server {args.server} does not serve {args.split} (it serves {', '.join(served)})")
        if info.preset != args.preset:
            raise SplitfcError(f"server {args.server} runs the {info.preset} preset; this edge asked for {args.preset}")
        return await run_edge(config, settings, logger=logger)

    report = asyncio.run(main())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(format_summary(report))
    return exit_code(report)
