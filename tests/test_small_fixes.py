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

