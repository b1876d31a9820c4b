"""TLS, mutual TLS and bearer tokens on the cloud's gRPC and HTTP ports; the edge's side of it."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from _certs import Pki, make_pki
from _serving import ServerThread, cloud_settings, raw_bitstream
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitfc.cloud.security import SecurityConfigError, TokenSet, check_transport, client_key
from splitfc.common.errors import SplitfcError
from splitfc.common.transport import is_loopback
from splitfc.edge.client import EdgeClient, chunk_messages
from splitfc.edge.runner import EdgeRunConfig, run_edge
from splitfc.edge.settings import EdgeSettings
from splitfc.v1 import service_pb2 as svc
from splitfc.v1 import service_pb2_grpc as svc_grpc

TOKEN = "s3cret-token-for-tests"
SPLIT = "dinov2-cls"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    path.write_text(f"# accepted tokens\n{TOKEN}\n\nanother-token\n")
    return path


@pytest.fixture(scope="module")
def tls_cloud(pki: Pki, token_file: Path) -> Iterator[ServerThread]:
    """TLS + bearer tokens, dinov2-cls only."""
    settings = cloud_settings(splits=SPLIT, tls_cert=pki.server_cert, tls_key=pki.server_key,
                              auth_tokens_file=token_file)
    with ServerThread(settings) as server:
        yield server


def tls_channel(server: ServerThread, pki: Pki, cert: bool = False) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if cert else None,
        certificate_chain=pki.client_cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(server.endpoints.grpc_target, creds)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def every_rpc(stub: svc_grpc.SplitInferenceStub, metadata: tuple[tuple[str, str], ...]) -> list[grpc.StatusCode]:
    """Call all four methods with a valid request; return each final status."""
    data, _ = raw_bitstream(SPLIT)
    codes = []
    calls = [
        lambda: stub.Infer(svc.InferRequest(request_id="a", bitstream=data), metadata=metadata, timeout=20),
        lambda: stub.InferChunked(iter(chunk_messages("b", data, 4096)), metadata=metadata, timeout=20),
        lambda: list(stub.InferStream(iter([svc.InferRequest(request_id="c", bitstream=data)]),
                                      metadata=metadata, timeout=20)),
        lambda: stub.GetInfo(svc.GetInfoRequest(), metadata=metadata, timeout=20),
    ]
    for call in calls:
        try:
            call()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    return codes


def counted_requests(server: ServerThread) -> float:
    """Requests that reached the service (any status) plus decode errors: 0 means nothing was parsed."""
    m = server.server.metrics
    text = m.exposition().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("splitfc_cloud_requests_total{", "splitfc_cloud_decode_errors_total{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_without_a_valid_token_every_rpc_is_unauthenticated_and_nothing_is_decoded(
    tls_cloud: ServerThread, pki: Pki,
) -> None:
    stub = svc_grpc.SplitInferenceStub(tls_channel(tls_cloud, pki))
    metrics = tls_cloud.server.metrics
    before = counted_requests(tls_cloud)
    assert every_rpc(stub, ()) == [grpc.StatusCode.UNAUTHENTICATED] * 4
    assert every_rpc(stub, bearer("wrong-token")) == [grpc.StatusCode.UNAUTHENTICATED] * 4
    assert every_rpc(stub, (("authorization", TOKEN),)) == [grpc.StatusCode.UNAUTHENTICATED] * 4  # no "Bearer"
    assert counted_requests(tls_cloud) == before
    assert metrics.value("splitfc_cloud_stage_seconds_count", {"split": SPLIT, "stage": "decode"}) == 0
    assert metrics.value("splitfc_cloud_auth_failures_total", {"surface": "grpc", "reason": "missing"}) == 4
    assert metrics.value("splitfc_cloud_auth_failures_total", {"surface": "grpc", "reason": "invalid"}) == 8
    # With the token every method works (both tokens of the file are accepted).
    assert every_rpc(stub, bearer(TOKEN)) == [grpc.StatusCode.OK] * 4
    assert every_rpc(stub, bearer("another-token")) == [grpc.StatusCode.OK] * 4
    ok = {"split": SPLIT, "codec": "raw", "status": "OK"}
    assert metrics.value("splitfc_cloud_requests_total", ok) == 6


def test_plaintext_to_a_tls_port_is_unavailable_and_health_needs_no_token(tls_cloud: ServerThread, pki: Pki) -> None:
    plain = svc_grpc.SplitInferenceStub(grpc.insecure_channel(tls_cloud.endpoints.grpc_target))
    before = counted_requests(tls_cloud)
    assert every_rpc(plain, bearer(TOKEN)) == [grpc.StatusCode.UNAVAILABLE] * 4
    assert counted_requests(tls_cloud) == before
    health = health_pb2_grpc.HealthStub(tls_channel(tls_cloud, pki))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    # A client trusting another CA refuses the server's certificate.
    other = grpc.ssl_channel_credentials((pki.other_ca).read_bytes())
    stub = svc_grpc.SplitInferenceStub(grpc.secure_channel(tls_cloud.endpoints.grpc_target, other))
    with pytest.raises(grpc.RpcError) as info:
        stub.GetInfo(svc.GetInfoRequest(), metadata=bearer(TOKEN), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_http_routes_need_the_token_except_health(tls_cloud: ServerThread, pki: Pki) -> None:
    url = tls_cloud.endpoints.http_url
    assert url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(verify=ctx, timeout=10) as http:
        assert http.get(f"{url}/healthz").status_code == 200
        assert http.get(f"{url}/readyz").status_code == 200
        for path in ("/v1/info", "/metrics"):
            r = http.get(f"{url}{path}")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert http.get(f"{url}{path}", headers={"Authorization": "Bearer nope"}).status_code == 401
            assert http.get(f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    metrics = tls_cloud.server.metrics
    assert metrics.value("splitfc_cloud_auth_failures_total", {"surface": "http", "reason": "missing"}) == 2
    assert metrics.value("splitfc_cloud_auth_failures_total", {"surface": "http", "reason": "invalid"}) == 2
    with pytest.raises(httpx.HTTPError):  # plaintext HTTP to the TLS port
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: Pki) -> None:
    settings = cloud_settings(splits=SPLIT, tls_cert=pki.server_cert, tls_key=pki.server_key,
                              tls_client_ca=pki.ca)
    with ServerThread(settings) as server:
        without = svc_grpc.SplitInferenceStub(tls_channel(server, pki, cert=False))
        assert every_rpc(without, ()) == [grpc.StatusCode.UNAVAILABLE] * 4
        stranger = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.other_client_key.read_bytes(), pki.other_client_cert.read_bytes())
        stub = svc_grpc.SplitInferenceStub(grpc.secure_channel(server.endpoints.grpc_target, stranger))
        assert every_rpc(stub, ()) == [grpc.StatusCode.UNAVAILABLE] * 4
        assert counted_requests(server) == 0
        with_cert = svc_grpc.SplitInferenceStub(tls_channel(server, pki, cert=True))
        assert every_rpc(with_cert, ()) == [grpc.StatusCode.OK] * 4
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{server.endpoints.http_url}/healthz", verify=ctx, timeout=5)
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        assert httpx.get(f"{server.endpoints.http_url}/v1/info", verify=ctx, timeout=5).status_code == 200


def test_edge_over_tls_with_token_file(tls_cloud: ServerThread, pki: Pki, token_file: Path, tmp_path: Path) -> None:
    settings = EdgeSettings(tls_ca=pki.ca, token_file=token_file, cache_dir=tmp_path, retries=0)
    config = EdgeRunConfig(server=tls_cloud.endpoints.grpc_target, split=SPLIT, codec="raw", samples=2)
    report = asyncio.run(run_edge(config, settings))
    assert report["summary"]["ok"] == 2 and report["summary"]["errors"] == 0
    # Without the token the edge reports UNAUTHENTICATED for every request (not retried).
    report = asyncio.run(run_edge(config, EdgeSettings(tls_ca=pki.ca, cache_dir=tmp_path, retries=3)))
    assert report["summary"]["errors_by_status"] == {"UNAUTHENTICATED": 2}
    assert all(r["attempts"] == 1 for r in report["requests"])


def test_edge_refuses_plaintext_to_a_non_loopback_target() -> None:
    async def connect(settings: EdgeSettings) -> None:
        async with EdgeClient("10.1.2.3:50051", settings, warn=False):
            pass

    with pytest.raises(SplitfcError, match=r"refusing plaintext to non-loopback 10\.1\.2\.3:50051"):
        asyncio.run(connect(EdgeSettings()))
    asyncio.run(connect(EdgeSettings(allow_plaintext=True)))  # explicit: allowed
    asyncio.run(connect(EdgeSettings(tls=True)))  # TLS with system roots: allowed


def test_start_up_policy(pki: Pki, token_file: Path) -> None:
    with pytest.raises(SecurityConfigError, match=r"refusing plaintext on non-loopback address 0\.0\.0\.0"):
        check_transport(cloud_settings(host="0.0.0.0"))
    with pytest.raises(SecurityConfigError, match="without authentication"):
        check_transport(cloud_settings(host="0.0.0.0", allow_plaintext=True))
    policy = check_transport(cloud_settings(host="0.0.0.0", allow_plaintext=True, allow_unauthenticated=True))
    assert not policy.tls and len(policy.warnings) == 2 and "PLAINTEXT" in policy.warnings[0]
    policy = check_transport(cloud_settings(host="0.0.0.0", tls_cert=pki.server_cert, tls_key=pki.server_key,
                                            auth_tokens_file=token_file))
    assert policy.tls and not policy.mutual_tls and policy.warnings == [] and len(policy.tokens) == 2
    policy = check_transport(cloud_settings(host="0.0.0.0", tls_cert=pki.server_cert, tls_key=pki.server_key,
                                            tls_client_ca=pki.ca))
    assert policy.mutual_tls and policy.warnings == []
    with pytest.raises(SecurityConfigError, match="needs both"):
        check_transport(cloud_settings(tls_cert=pki.server_cert))
    with pytest.raises(SecurityConfigError, match="cannot read TLS key"):
        check_transport(cloud_settings(tls_cert=pki.server_cert, tls_key=pki.ca.parent / "missing.pem"))
    empty = token_file.parent / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(SecurityConfigError, match="holds no token"):
        check_transport(cloud_settings(auth_tokens_file=empty))
    loop = check_transport(cloud_settings())
    assert not loop.tls and "loopback" in loop.warnings[0]


def test_cli_refuses_plaintext_on_a_public_bind_with_one_line() -> None:
    res = subprocess.run([sys.executable, "-m", "splitfc", "cloud", "serve", "--host", "0.0.0.0", "--grpc-port", "0",
                          "--http-port", "0"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        "splitfc: error: refusing plaintext on non-loopback address 0.0.0.0: set SPLITFC_CLOUD_TLS_CERT and "
        "SPLITFC_CLOUD_TLS_KEY (--tls-cert/--tls-key), or pass --insecure to allow plaintext explicitly"
    ]


def test_token_set_and_helpers() -> None:
    tokens = TokenSet(["alpha", "beta"])
    assert tokens.match("beta") == 1 and tokens.match("alpha") == 0
    assert tokens.match("alph") is None and tokens.match("") is None and tokens.match("betaa") is None
    assert tokens.check_header("Bearer alpha") == (0, "")
    assert tokens.check_header("bearer  beta ") == (1, "")
    assert tokens.check_header(None) == (None, "missing")
    assert tokens.check_header("Basic alpha") == (None, "invalid")
    assert not TokenSet([])
    with pytest.raises(SecurityConfigError):
        TokenSet(["has space"])
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost", "0.0.0.0", "10.0.0.1",
                                     "example.org")] == [True, True, True, True, True, False, False, False]
    assert client_key(None, "ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert client_key(None, "ipv6:[::1]:5555") == "::1"
    assert client_key(3, "ipv4:10.0.0.1:1") == "token:3"
