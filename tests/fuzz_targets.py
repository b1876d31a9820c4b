"""Fuzz targets over everything that parses bytes from the network (hypothesis-driven).

Each target feeds generated or mutated inputs to one parser and accepts only two outcomes: a
clean result or a `SplitfcError` with a bounded message. Anything else (another exception, an input
running past ``HANG_SECONDS``, a decoded tensor larger than the element limit) fails. Seeds are real
bitstreams of the tiny models, mutated three ways: bytes of the whole message, payload bytes with
the CRC fixed up (so the codec's decoder itself sees them), and header fields with the CRC intact.
``rpc_calls`` sends sequences of such messages (and garbage) through a real cloud on loopback, by
every method, and accepts only a status the service means to give: a call that ends UNKNOWN,
INTERNAL or past its deadline (a hang) fails.

``python tests/fuzz_targets.py --budget 100000 --json results/fuzz.json`` (``make fuzz``) runs
them all with the budget split by `WEIGHTS` and prints how many inputs each target tried.
``tests/test_fuzz.py`` runs the same targets with a small budget in the default test run.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from splitfc.cloud.settings import default_max_elements
from splitfc.common.bitstream import decode_features, encode_features, parse_bitstream, validate_bitstream
from splitfc.common.errors import SplitfcError
from splitfc.common.specs import SPLITS
from splitfc.v1 import bitstream_pb2 as bpb
from splitfc.v1 import service_pb2 as svc

HANG_SECONDS = 20.0
"""An input that takes longer than this is a hang (external decoders have their own timeout first)."""
SEED_CODECS = (("raw", 0), ("hevc", 32), ("vvenc", 32), ("hyperprior", 2), ("native", 32))
WEIGHTS = {
    "parse_random_bytes": 0.29,
    "request_messages": 0.10,
    "rpc_calls": 0.02,
    "validate_structured": 0.20,
    "raw_mutated": 0.25,
    "native_mutated": 0.04,
    "hyperprior_mutated": 0.08,
    "hevc_mutated": 0.01,
    "vvenc_mutated": 0.01,
}
"""Share of the budget per target (the in-process parsers get most; external decoders and RPCs few)."""
MAX_ERROR_CHARS = 1000
"""Longest error message a rejected input may produce (the cloud sends it as a gRPC status)."""
RPC_CODES = frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND", "FAILED_PRECONDITION"})
"""How a fuzzed call may end; UNKNOWN, INTERNAL or DEADLINE_EXCEEDED (a hang) are failures."""


class Hang(Exception):
    """An input ran past ``HANG_SECONDS``."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `Hang` in the main thread when the block runs longer than ``seconds``."""

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise Hang(f"input ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def element_limit(split: str) -> int:
    """What the cloud would allow: the split's default element limit (1 Mi for an unknown split)."""
    return default_max_elements(split) if split in SPLITS else 1 << 20


def decode_outcome(data: bytes) -> str:
    """Parse + validate + decode like the cloud does; "decoded" or "rejected" (a SplitfcError)."""
    try:
        msg = parse_bitstream(data)
        limit = element_limit(msg.split)
        out = decode_features(msg, limit)
    except SplitfcError as exc:
        assert len(str(exc)) <= MAX_ERROR_CHARS, f"unbounded error message ({len(str(exc))} chars)"
        return "rejected"
    assert isinstance(out, np.ndarray) and out.size <= limit, "decoded more than the element limit"
    assert tuple(out.shape) == tuple(msg.tensors[0].shape)
    return "decoded"


@cache
def seed_bitstreams(codec: str) -> tuple[bytes, ...]:
    """Real serialized bitstreams of ``codec`` for a few tiny-model splits (empty if unavailable)."""
    from splitfc.common.codecs import CODECS
    from splitfc.common.models import get_split_model, tiny_samples

    cls = CODECS.get(codec)
    if cls is None or cls.unavailable_reason() is not None:
        return ()
    rate = dict(SEED_CODECS)[codec]
    out = []
    splits = ("dinov2-cls", "llama3-csr") if codec == "raw" else ("dinov2-cls",)
    for split in splits:
        features = get_split_model(split, "tiny").head(tiny_samples(split, 1)[0].inputs)
        try:
            out.append(encode_features(features, split, codec, rate).SerializeToString())
        except SplitfcError:
            continue  # e.g. no hyperprior checkpoint for this split
    if codec == "native":  # also bitstreams of its token-transform path (tokens correlated along the axis)
        rng = np.random.default_rng(0)
        tokens = np.cumsum(rng.standard_normal((65, 128)), axis=0).astype(np.float32)
        out.append(encode_features(tokens, "dinov2-cls", codec, rate).SerializeToString())
        view = rng.standard_normal((65, 128)).astype(np.float32)  # and of its mirrored-views path (Seg)
        flipped = view[np.r_[0, 1 + (np.arange(64) // 8) * 8 + 7 - np.arange(64) % 8]]
        out.append(encode_features(np.stack([view, flipped]), "dinov2-seg", codec, rate).SerializeToString())
        out.append(_native_empty_token_layout(view))
    return tuple(out)


def _native_empty_token_layout(features: np.ndarray) -> bytes:
    """A valid native bitstream with no coded component (K = 0) on the token-transform layout: the encoder
    codes such a tensor in the plain layout, so the header's token-block byte and its 9 band offsets are set
    by hand (the reconstruction is the same zeros, so the digest still holds)."""
    from splitfc.common.codecs import native as nat

    msg = encode_features(np.zeros_like(features), "dinov2-cls", "native", 32)
    fields = list(nat.HEADER.unpack_from(msg.payload))
    assert fields[4] == 0 and len(msg.payload) == nat.HEADER.size  # K = 0: the header alone
    fields[-1] = nat.TOKEN_BLOCK
    msg.payload = nat.HEADER.pack(*fields) + bytes(nat.TOKEN_BLOCK + 1)
    msg.payload_crc32 = zlib.crc32(msg.payload)
    return msg.SerializeToString()


# -- mutations ------------------------------------------------------------------------------------
_ops = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
              st.integers(0, 1 << 20), st.integers(0, 255)),
    min_size=1, max_size=8,
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, value in ops:
        if not buf and op != "insert":
            continue
        i = pos % (len(buf) + (1 if op == "insert" else 0))
        if op == "flip":
            buf[i] ^= 1 << (value % 8)
        elif op == "set":
            buf[i] = value
        elif op == "insert":
            buf[i:i] = bytes([value])
        elif op == "delete":
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


def with_fixed_crc(msg: bpb.FeatureBitstream) -> bytes:
    msg.payload_crc32 = zlib.crc32(msg.payload)
    return msg.SerializeToString()


@st.composite
def mutated_bitstream(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed bitstream mutated in the whole message, in its payload (CRC fixed) or in its header."""
    data = draw(st.sampled_from(seeds))
    mode = draw(st.sampled_from(["message", "payload", "payload", "header"]))
    if mode == "message":
        return mutate(data, draw(_ops))
    msg = parse_bitstream(data)
    if mode == "payload":
        msg.payload = mutate(msg.payload, draw(_ops))
        return with_fixed_crc(msg)
    field = draw(st.sampled_from(["shape", "frame", "ranges", "bit_depth", "extra", "rate", "dtype", "split"]))
    if field == "shape":
        dims = draw(st.lists(st.integers(0, 1 << 31), min_size=0, max_size=5))
        del msg.tensors[0].shape[:]
        msg.tensors[0].shape.extend(dims)
    elif field == "frame" and msg.HasField("preprocessing"):
        msg.preprocessing.frame_height = draw(st.integers(0, 1 << 16))
        msg.preprocessing.frame_width = draw(st.integers(0, 1 << 16))
    elif field == "ranges" and msg.HasField("preprocessing"):
        del msg.preprocessing.ranges[:]
        for low, high in draw(st.lists(st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)), max_size=4)):
            msg.preprocessing.ranges.add(low=low, high=high)
    elif field == "bit_depth" and msg.HasField("preprocessing"):
        msg.preprocessing.bit_depth = draw(st.integers(0, 64))
    elif field == "extra":
        key = draw(st.sampled_from(["store_dtype", "compression", "checkpoint", "checkpoint_split", "tile", "x"]))
        msg.codec.extra[key] = draw(st.text(max_size=40))
    elif field == "rate":
        msg.codec.rate = draw(st.integers(-(1 << 31), (1 << 31) - 1))
    elif field == "dtype":
        msg.tensors[0].dtype = draw(st.integers(0, 20))
    else:
        msg.split = draw(st.sampled_from([*SPLITS, "", "nope"]))
    return with_fixed_crc(msg)


@st.composite
def structured_bitstream(draw: st.DrawFn) -> bytes:
    """A bitstream built field by field: any split/codec/shape/header with a correct CRC."""
    from splitfc.common.codecs import CODECS

    msg = bpb.FeatureBitstream(
        format_version=draw(st.sampled_from([1, 1, 1, 0, 2])),
        split=draw(st.sampled_from([*SPLITS, "x"])),
    )
    msg.codec.codec = draw(st.sampled_from(["raw", "raw", *CODECS, "zzz"]))
    msg.codec.rate = draw(st.integers(0, 64))
    t = msg.tensors.add()
    t.shape.extend(draw(st.lists(st.integers(0, 4096), max_size=4)))
    t.dtype = draw(st.integers(0, 4))
    if draw(st.booleans()):
        pre = msg.preprocessing
        pre.bit_depth = draw(st.integers(0, 17))
        pre.packing = draw(st.sampled_from(["", "tile", "spatial", "channel", "token"]))
        pre.frame_height = draw(st.integers(0, 2048))
        pre.frame_width = draw(st.integers(0, 2048))
        for _ in range(draw(st.integers(0, 3))):
            pre.ranges.add(low=draw(st.floats(-10, 10)), high=draw(st.floats(-10, 10)))
    msg.payload = draw(st.binary(max_size=4096))
    if draw(st.booleans()):
        msg.codec.extra["store_dtype"] = draw(st.sampled_from(["float32", "float16", "bfloat16", "int8"]))
    return with_fixed_crc(msg)


# -- targets --------------------------------------------------------------------------------------
def _parse_random(data: bytes) -> str:
    try:
        msg = parse_bitstream(data)
    except SplitfcError:
        return "rejected"
    try:
        validate_bitstream(msg, element_limit(msg.split))
    except SplitfcError:
        return "parsed"
    return "valid"


def _request_messages(data: bytes) -> str:
    """The service's request parsing (`splitfc.cloud.servicer.parse_request`, never raising), then the
    carried bitstream; bytes that are no InferRequest are tried as a BitstreamChunk."""
    from google.protobuf.message import DecodeError

    from splitfc.cloud.servicer import parse_request

    _, payload, failure = parse_request(data)
    if failure is not None:
        assert failure.reason == "envelope" and failure.status.name == "INVALID_ARGUMENT"
        try:
            svc.BitstreamChunk.FromString(data)
        except DecodeError:
            return "rejected"
        return "chunk"
    if payload.data is None:
        return "empty"
    bitstream = payload.data
    return decode_outcome(bitstream if isinstance(bitstream, bytes) else bitstream.SerializeToString())


FUZZ_MESSAGE_BYTES = 1 << 20
"""The fuzz cloud's gRPC message limit (`rpc_calls` sends some messages over it)."""


@cache
def fuzz_cloud() -> tuple[Any, Any, Any, Any]:
    """A cloud on loopback for `rpc_calls` (started once, stopped at exit): (Infer, InferChunked, InferStream,
    its `ServerThread`)."""
    import atexit

    from _serving import ServerThread, cloud_settings, raw_calls

    import splitfc.cloud.servicer as servicer

    servicer.CANCEL_GRACE_S = 0.02  # short uploads here are never cancelled ones: don't wait for it
    server = ServerThread(cloud_settings(splits="dinov2-cls,llama3-csr", max_message_bytes=FUZZ_MESSAGE_BYTES,
                                         max_bitstream_bytes=4 << 20, upload_idle_seconds=5))
    server.start()
    atexit.register(server.stop)
    return (*raw_calls(server.endpoints.grpc_target, 4 << 20), server)


def _counted(server: Any) -> dict[str, float]:
    """splitfc_cloud_requests_total by status, summed over splits and codecs."""
    out: dict[str, float] = {}
    for family in server.server.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "splitfc_cloud_requests_total":
                status = sample.labels["status"]
                out[status] = out.get(status, 0.0) + sample.value
    return out


def _rpc_call(call: tuple[str, list[bytes]]) -> str:
    """One call of ``method`` with ``messages``; its final status code (lower case), which must be one the
    service means to give, and every InferStream answer a result or such an error. An Infer or InferChunked
    call must be counted once by the cloud, with the status the client saw."""
    import grpc

    infer, chunked, stream, server = fuzz_cloud()
    method, messages = call
    before = _counted(server)
    try:
        if method == "Infer":
            infer(messages[0], timeout=HANG_SECONDS)
        elif method == "InferChunked":
            chunked(iter(messages), timeout=HANG_SECONDS)
        else:
            for resp in stream(iter(messages), timeout=HANG_SECONDS):
                assert resp.HasField("result") or resp.error.code_name in RPC_CODES, resp.error
                assert len(resp.error.message) <= MAX_ERROR_CHARS
        code, details = "OK", ""
    except grpc.RpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    assert code in RPC_CODES, f"{method} ended {code}: {details[:300]}"
    assert len(details) <= MAX_ERROR_CHARS
    if method != "InferStream":  # (a stream counts each request it reads)
        end = time.monotonic() + 2.0  # an over-limit message is answered by gRPC, counted a moment later
        while sum(_counted(server).values()) == sum(before.values()) and time.monotonic() < end:
            time.sleep(0.005)
        after = _counted(server)
        delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
        assert delta == {code: 1.0}, f"{method}: the client saw {code}, the cloud counted {delta}: {details[:200]}"
    return code.lower()


@st.composite
def rpc_calls(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """A method and the messages sent on it: requests carrying seed or mutated bitstreams, chunks (real
    chunkings of a seed, or any fields), or garbage bytes."""
    from splitfc.edge.client import chunk_messages

    seeds = seed_bitstreams("raw")
    method = draw(st.sampled_from(["Infer", "InferChunked", "InferStream"]))
    request_id = st.one_of(st.just(""), st.text(max_size=8), st.text(min_size=120, max_size=140))
    request = st.builds(lambda rid, bs: svc.InferRequest(request_id=rid, bitstream=bs).SerializeToString(),
                        request_id, st.one_of(st.sampled_from(seeds), mutated_bitstream(seeds)))
    chunk = st.builds(lambda rid, total, data: svc.BitstreamChunk(request_id=rid, total_bytes=total,
                                                                  data=data).SerializeToString(),
                      request_id, st.integers(0, (1 << 64) - 1), st.binary(max_size=1024))
    garbage = st.binary(max_size=64)
    if draw(st.integers(0, 15)) == 0:  # one message over the gRPC limit (refused by gRPC core)
        big = bytes(FUZZ_MESSAGE_BYTES + 16)
        over = (svc.InferRequest(request_id="big", bitstream=big) if method != "InferChunked"
                else svc.BitstreamChunk(request_id="big", total_bytes=len(big), data=big)).SerializeToString()
        return method, [over]
    if method == "InferChunked" and draw(st.booleans()):
        chunks = [c.SerializeToString() for c in chunk_messages("f", draw(st.sampled_from(seeds)), 4096)]
        return method, mutate_list(chunks, draw(st.lists(st.tuples(st.sampled_from(["drop", "dup", "garbage"]),
                                                                   st.integers(0, 64)), max_size=2)))
    parts = st.one_of(request, garbage) if method != "InferChunked" else st.one_of(chunk, garbage)
    return method, draw(st.lists(parts, min_size=1, max_size=1 if method == "Infer" else 4))


def mutate_list(items: list[bytes], ops: list[tuple[str, int]]) -> list[bytes]:
    out = list(items)
    for op, pos in ops:
        i = pos % len(out)
        if op == "drop" and len(out) > 1:
            del out[i]
        elif op == "dup":
            out.insert(i, out[i])
        elif op == "garbage":
            out[i] = b"\xff\xff\xff"
    return out


def targets() -> dict[str, tuple[st.SearchStrategy[bytes], Callable[[bytes], str]]]:
    """name -> (input strategy, check). Codec targets whose codec is unavailable are left out."""
    out: dict[str, tuple[st.SearchStrategy[bytes], Callable[[bytes], str]]] = {
        "parse_random_bytes": (st.binary(max_size=2048), _parse_random),
        "request_messages": (st.one_of(st.binary(max_size=512), _request_strategy()), _request_messages),
        "rpc_calls": (rpc_calls(), _rpc_call),  # type: ignore[dict-item]
        "validate_structured": (structured_bitstream(), decode_outcome),
    }
    for codec in ("raw", "hyperprior", "hevc", "vvenc", "native"):
        seeds = seed_bitstreams(codec)
        if seeds:
            out[f"{codec}_mutated"] = (mutated_bitstream(seeds), decode_outcome)
    return out


def _request_strategy() -> st.SearchStrategy[bytes]:
    seeds = seed_bitstreams("raw")
    return st.builds(
        lambda rid, bs: svc.InferRequest(request_id=rid, bitstream=bs).SerializeToString(),
        st.text(max_size=20), mutated_bitstream(seeds),
    )


def run_target(name: str, examples: int, seed: int = 0) -> dict[str, Any]:
    """Run one target for ``examples`` inputs; return counts per outcome and the time taken."""
    strategy, check = targets()[name]
    outcomes: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink], print_blob=True)
    @given(strategy)
    def fuzz(data: bytes) -> None:
        with time_limit(HANG_SECONDS):
            outcomes[check(data)] += 1

    t0 = time.perf_counter()
    fuzz._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    fuzz()
    return {"inputs": sum(outcomes.values()), "outcomes": dict(outcomes), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fuzz the bitstream parser, every codec's decoder and request parsing.")
    p.add_argument("--budget", type=int, default=100_000, help="inputs in total (split by WEIGHTS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the counts here")
    args = p.parse_args(argv)
    available = targets()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report: dict[str, Any] = {"budget": args.budget, "targets": {}}
    t0 = time.perf_counter()
    for name, weight in WEIGHTS.items():
        if name not in available:
            print(f"{name:<22} skipped (codec unavailable)", flush=True)
            continue
        n = max(1, round(args.budget * weight))
        res = run_target(name, n, args.seed)
        report["targets"][name] = res
        print(f"{name:<22} {res['inputs']:>7} inputs  {res['seconds']:7.1f} s  {res['outcomes']}", flush=True)
    total = sum(t["inputs"] for t in report["targets"].values())
    report.update(
        inputs=total, crashes=0, hangs=0, seconds=time.perf_counter() - t0,
        max_rss_mib_start=rss0 / 1024, max_rss_mib_end=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print(f"total {total} inputs, 0 crashes, 0 hangs, {report['seconds']:.0f} s, "
          f"max RSS {report['max_rss_mib_start']:.0f} -> {report['max_rss_mib_end']:.0f} MiB")
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
