"""The edge behind an HTTP proxy: loopback targets bypass it, others keep it, and an unreachable server's
error says why (the gRPC status, its details and the proxy)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from _serving import ServerThread, cloud_settings

from splitfc.cli import main
from splitfc.edge.client import EdgeClient
from splitfc.edge.runner import EdgeRunConfig, run_edge
from splitfc.edge.security import LOOPBACK_CHANNEL_OPTIONS, channel_options, is_loopback_target, proxy_note
from splitfc.edge.settings import EdgeSettings

DEAD_PROXY = "127.0.0.1:9"
"""The discard port: nothing listens there, so every connection through this "proxy" is refused."""
PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "http_proxy")
NO_PROXY_VARIABLES = ("no_grpc_proxy", "no_proxy", "NO_PROXY")


@pytest.fixture(scope="module")
def cloud() -> Iterator[ServerThread]:
    with ServerThread(cloud_settings(splits="dinov2-cls")) as server:
        yield server


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Every proxy variable gRPC reads names `DEAD_PROXY`; nothing in no_proxy. -> the proxy URL."""
    url = f"http://{DEAD_PROXY}"
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, url)
        monkeypatch.setenv(name.upper(), url)
    for name in NO_PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPLITFC_EDGE_CACHE_DIR", str(tmp_path / "refs"))
    return url


@pytest.mark.parametrize("target", [
    "127.0.0.1:50051", "127.8.9.10:1", "localhost:50051", "[::1]:50051", "dns:///localhost:50051",
    "unix:/tmp/splitfc.sock", "unix:///tmp/splitfc.sock", "unix-abstract:splitfc",
])
def test_loopback_targets_turn_the_proxy_off(target: str) -> None:
    assert is_loopback_target(target)
    assert ("grpc.enable_http_proxy", 0) in channel_options(target, EdgeSettings())


@pytest.mark.parametrize("target", [
    "10.1.2.3:50051", "cloud.example.com:443", "dns:///cloud.example.com:443", "0.0.0.0:50051",
    "[2001:db8::1]:50051", "localhost.example.com:1",
])
def test_other_targets_keep_the_proxy(target: str) -> None:
    assert not is_loopback_target(target)
    options = channel_options(target, EdgeSettings())
    assert all(name != "grpc.enable_http_proxy" for name, _ in options)
    assert options == EdgeSettings().grpc_options()


def test_edge_run_to_loopback_succeeds_behind_a_dead_proxy(cloud: ServerThread, dead_proxy: str) -> None:
    config = EdgeRunConfig(server=cloud.endpoints.grpc_target, split="dinov2-cls", codec="raw", samples=2,
                           concurrency=2, deadline_s=10.0)
    report = asyncio.run(run_edge(config, EdgeSettings(retries=1)))
    failures = [(r["status"], r["error"]) for r in report["requests"] if r["status"] != "OK"]
    assert failures == [] and report["summary"]["ok"] == 2


def test_edge_run_cli_to_loopback_succeeds_behind_a_dead_proxy(
    cloud: ServerThread, dead_proxy: str, capsys: pytest.CaptureFixture[str],
) -> None:
    # `splitfc edge run --server 127.0.0.1:PORT`: GetInfo (wait_ready) and the requests, over one channel.
    code = main(["edge", "run", "--server", cloud.endpoints.grpc_target, "--split", "dinov2-cls", "--codec", "raw",
                 "--samples", "1", "--wait", "5", "--deadline", "10"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "requests 1  ok 1  errors 0" in out


def test_non_loopback_goes_through_the_proxy_and_the_error_says_so(dead_proxy: str) -> None:
    # 10.1.2.3 is never contacted: the channel tries the (dead) proxy, whose address the reason names.
    async def wait() -> str:
        async with EdgeClient("10.1.2.3:50051", EdgeSettings(allow_plaintext=True), warn=False) as client:
            with pytest.raises(TimeoutError) as err:
                await client.wait_ready(0.5)
        return str(err.value)

    message = asyncio.run(wait())
    assert message.startswith("server 10.1.2.3:50051 not ready after")
    assert ": UNAVAILABLE: " in message and DEAD_PROXY in message
    assert f"the channel may go through the proxy {dead_proxy} of grpc_proxy" in message
    assert "list 10.1.2.3 in no_proxy" in message and "\n" not in message


def test_edge_run_cli_one_line_error_gives_the_reason(dead_proxy: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["edge", "run", "--server", "10.1.2.3:50051", "--insecure", "--split", "dinov2-cls", "--codec", "raw",
                 "--samples", "1", "--wait", "0.5"])
    assert code != 0
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("splitfc: error:")]
    assert len(errors) == 1
    assert ": UNAVAILABLE: " in errors[0] and f"proxy {dead_proxy} of grpc_proxy" in errors[0]


def test_unreachable_loopback_server_names_the_refused_address(dead_proxy: str) -> None:
    # Loopback, nobody listening: the reason is the server's own refused port, not the proxy's; no proxy note.
    async def wait() -> str:
        async with EdgeClient("127.0.0.1:1", EdgeSettings()) as client:
            with pytest.raises(TimeoutError) as err:
                await client.wait_ready(0.5)
        return str(err.value)

    message = asyncio.run(wait())
    assert ": UNAVAILABLE: " in message and "127.0.0.1:1" in message.split("UNAVAILABLE", 1)[1]
    assert DEAD_PROXY not in message and "proxy" not in message


def test_proxy_note(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, *(n.upper() for n in PROXY_VARIABLES)):
        monkeypatch.delenv(name, raising=False)
    assert proxy_note("10.1.2.3:1") == ""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # gRPC core reads the lower-case names only
    assert proxy_note("10.1.2.3:1") == ""
    monkeypatch.setenv("http_proxy", "http://user:secret@proxy.example:3128")
    note = proxy_note("cloud.example.com:443")
    assert "proxy http://proxy.example:3128 of http_proxy" in note and "secret" not in note and "user" not in note
    assert "list cloud.example.com in no_proxy" in note
    monkeypatch.setenv("grpc_proxy", "first:1")
    assert "proxy first:1 of grpc_proxy" in proxy_note("cloud.example.com:443")
    assert proxy_note("127.0.0.1:1") == "" and proxy_note("unix:/tmp/s") == ""
    assert LOOPBACK_CHANNEL_OPTIONS == (("grpc.enable_http_proxy", 0),)
