"""The gRPC settings both sides share are one definition: they cannot drift apart."""

from __future__ import annotations

from splitfc.cloud.settings import CloudSettings
from splitfc.common.transport import GrpcChannelSettings
from splitfc.edge.settings import EdgeSettings


def test_both_sides_share_channel_fields_and_defaults() -> None:
    cloud, edge = CloudSettings(), EdgeSettings()
    assert isinstance(cloud, GrpcChannelSettings) and isinstance(edge, GrpcChannelSettings)
    assert cloud.channel_options() == edge.channel_options()
    shared = dict(cloud.channel_options())
    assert dict(cloud.grpc_options()).items() >= shared.items()
    assert dict(edge.grpc_options()).items() >= shared.items()
    assert edge.keepalive_time_ms >= cloud.min_ping_interval_ms  # else the server answers GOAWAY


def test_each_side_reads_its_own_env_prefix(monkeypatch) -> None:
    monkeypatch.setenv("SPLITFC_CLOUD_MAX_MESSAGE_BYTES", "1234567")
    monkeypatch.setenv("SPLITFC_EDGE_MAX_MESSAGE_BYTES", "7654321")
    assert CloudSettings().max_message_bytes == 1234567
    assert EdgeSettings().max_message_bytes == 7654321
    assert dict(EdgeSettings().grpc_options())["grpc.max_send_message_length"] == 7654321
