"""A client generated only from protos/*.proto (no splitfc import) calls the cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _serving import ServerThread, cloud_settings

from splitfc.common.models import get_split_model
from splitfc.common.wire import top_k
from splitfc.protogen import PROTO_ROOT, proto_files

CLIENT = textwrap.dedent(
    """
    import hashlib, json, sys, zlib

    import grpc
    import numpy as np
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    import splitfc
    from splitfc.v1 import bitstream_pb2 as bs
    from splitfc.v1 import service_pb2 as svc
    from splitfc.v1 import service_pb2_grpc as svc_grpc

    # Only the code generated from the .proto files: the real splitfc package is not reachable.
    assert splitfc.__file__.startswith(sys.argv[2]), splitfc.__file__
    try:
        import splitfc.common  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("splitfc.common must not be importable here")

    channel = grpc.insecure_channel(sys.argv[1])
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    stub = svc_grpc.SplitInferenceStub(channel)
    info = stub.GetInfo(svc.GetInfoRequest(), timeout=30)
    shape = list(next(s for s in info.splits if s.split == "dinov2-cls").feature_shape)
    features = np.random.default_rng(5).standard_normal(shape).astype("<f4")
    payload = features.tobytes()
    bitstream = bs.FeatureBitstream(
        format_version=info.bitstream_format_version,
        split="dinov2-cls",
        codec=bs.CodecParams(codec="raw", rate=0, extra={"store_dtype": "float32"}),
        tensors=[bs.TensorInfo(name="features", shape=shape, dtype=bs.DTYPE_FLOAT32)],
        payload=payload,
        payload_crc32=zlib.crc32(payload),
    )
    # the integrity digest as bitstream.proto defines it: BLAKE2b-64 of the header (the message without
    # payload, CRC and digest, serialized deterministically) followed by BLAKE2b-64 of raw's stored bytes
    header = bs.FeatureBitstream()
    header.CopyFrom(bitstream)
    header.ClearField("payload")
    header.ClearField("payload_crc32")
    content = hashlib.blake2b(payload, digest_size=8).digest()
    bitstream.decoded_digest = hashlib.blake2b(
        header.SerializeToString(deterministic=True) + content, digest_size=8
    ).digest()
    resp = stub.Infer(svc.InferRequest(request_id="proto-only", bitstream=bitstream.SerializeToString()), timeout=60)
    c = resp.result.classification
    print(json.dumps({
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
        "request_id": resp.request_id, "shape": shape, "label": c.label,
        "top5_ids": list(c.top5_ids), "top5_probs": list(c.top5_probs), "bpfp": resp.rate.bpfp,
        "tail_ms": resp.timing.tail_ms,
    }))
    """
)


@pytest.fixture(scope="module")
def cloud() -> Iterator[ServerThread]:
    with ServerThread(cloud_settings(splits="dinov2-cls")) as server:
        yield server


def generate(out: Path) -> None:
    """protoc (grpc_tools) on protos/ into ``out``, plus the two package __init__ files."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
        f"--grpc_python_out={out}", *map(str, proto_files()),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    for pkg in (out / "splitfc", out / "splitfc" / "v1"):
        (pkg / "__init__.py").write_text("")


def test_client_generated_from_protos_calls_infer(cloud: ServerThread, tmp_path: Path) -> None:
    generate(tmp_path)
    assert (tmp_path / "splitfc" / "v1" / "service_pb2_grpc.py").is_file()
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    # -S: no site processing, so splitfc's editable-install hook is not loaded; the dependencies
    # (grpcio, protobuf, numpy) come from site-packages put on the path by hand.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), sysconfig.get_paths()["purelib"]])
    proc = subprocess.run(
        [sys.executable, "-S", str(script), cloud.endpoints.grpc_target, str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["health"] == "SERVING"
    assert out["request_id"] == "proto-only"
    assert out["bpfp"] == 32.0
    features = np.random.default_rng(5).standard_normal(out["shape"]).astype(np.float32)
    ref = get_split_model("dinov2-cls", "tiny").tail(features)
    ids, probs = top_k(ref.probs)
    assert out["label"] == ref.label
    assert out["top5_ids"] == ids
    np.testing.assert_allclose(out["top5_probs"], probs, rtol=1e-5)
    assert out["tail_ms"] > 0
