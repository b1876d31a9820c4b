"""Dynamic batching of the tail (cloud/batching.py, SplitModel.tail_batch): batched answers equal
unbatched ones bit for bit, batches form under load, deadlines and failures stay per request."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
from _serving import raw_bitstream

from splitfc.cloud.engine import InferenceEngine
from splitfc.cloud.metrics import CloudMetrics
from splitfc.cloud.settings import CloudSettings
from splitfc.common.models import get_split_model
from splitfc.common.models.base import SplitModel, TaskOutput

FIELDS = ("label", "probs", "choices", "mask", "depth", "image")


def _random_features(model: SplitModel, n: int, seed: int, tokens: list[int] | None = None) -> list[np.ndarray]:
    """``n`` feature tensors of the model's shape (``tokens`` fills a variable token count)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = tuple((tokens[i] if tokens else 16) if s is None else s for s in model.expected_shape())
        out.append(rng.normal(0.0, 1.0, shape).astype(np.float32))
    return out


def _assert_identical(batched: TaskOutput, single: TaskOutput) -> None:
    assert batched.task == single.task
    for name in FIELDS:
        a, b = getattr(batched, name), getattr(single, name)
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, name
            assert a.tobytes() == b.tobytes(), f"{name} differs by up to {np.abs(a - b).max()}"
        else:
            assert a == b, name


@pytest.mark.parametrize(
    ("split", "sizes"),
    [
        ("dinov2-cls", (2, 5, 17)),
        ("dinov2-seg", (2, 9)),  # 9 x 2 views: past oneDNN's 16-image switch for 1x1 convolutions
        ("dinov2-dpt", (2, 9)),
        ("llama3-csr", (2, 7)),
        ("sd3-tti", (2,)),  # the base class's loop
    ],
)
def test_batched_tail_equals_unbatched_bit_for_bit(split: str, sizes: tuple[int, ...]) -> None:
    import torch

    torch.set_num_threads(1)
    model = get_split_model(split, "tiny")
    n = max(sizes)
    tokens = [5 + 7 * i for i in range(n)] if split == "llama3-csr" else None  # mixed CSR token counts
    features = _random_features(model, n, seed=len(split), tokens=tokens)
    singles = [model.tail(f) for f in features]
    for size in sizes:
        outs = model.tail_batch(features[:size])
        assert len(outs) == size
        for batched, single in zip(outs, singles, strict=False):
            _assert_identical(batched, single)


def test_csr_takes_mixed_token_counts_in_one_call() -> None:
    assert get_split_model("llama3-csr", "tiny").tail_batch_mixed_shapes
    assert not get_split_model("dinov2-cls", "tiny").tail_batch_mixed_shapes


class _Recording(SplitModel):
    """A real model that records the size of every tail batch (and can fail on chosen inputs)."""

    def __init__(self, inner: SplitModel, fail_on: float | None = None) -> None:
        self.inner, self.spec, self.preset = inner, inner.spec, inner.preset
        self.tail_batch_mixed_shapes = inner.tail_batch_mixed_shapes
        self.sizes: list[int] = []
        self.firsts: list[float] = []
        """First element of every feature tensor that reached ``tail_batch``."""
        self.fail_on = fail_on

    def head(self, inputs: Any) -> np.ndarray:
        return self.inner.head(inputs)

    def tail(self, features: np.ndarray) -> TaskOutput:
        if self.fail_on is not None and float(features.flat[0]) == self.fail_on:
            raise RuntimeError("this request's tail fails")
        return self.inner.tail(features)

    def tail_batch(self, features: list[np.ndarray]) -> list[TaskOutput]:
        self.sizes.append(len(features))
        self.firsts.extend(float(f.flat[0]) for f in features)
        if self.fail_on is not None and any(float(f.flat[0]) == self.fail_on for f in features):
            raise RuntimeError("a request of this batch fails")
        return self.inner.tail_batch(features)

    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        return self.inner.forward_unsplit(inputs)

    def expected_shape(self) -> tuple[int | None, ...]:
        return self.inner.expected_shape()


def _engine(model: SplitModel, **kw: Any) -> InferenceEngine:
    settings = CloudSettings(splits=model.spec.id, log_requests=False, **kw)
    return InferenceEngine(settings, CloudMetrics(), logging.getLogger("test-batching"), lambda s, p: model)


def _run_all(engine: InferenceEngine, data: list[bytes], deadline_s: float | None = None) -> list[Any]:
    async def scenario() -> list[Any]:
        engine.bind_loop(asyncio.get_running_loop())
        engine.load_models()
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        return await asyncio.gather(*(
            engine.run("t", f"r{i}", d, time.perf_counter(), deadline) for i, d in enumerate(data)
        ))

    try:
        return asyncio.run(scenario())
    finally:
        engine.shutdown()


@pytest.mark.parametrize("split", ["dinov2-cls", "llama3-csr"])
def test_served_batches_form_and_answer_as_unbatched(split: str) -> None:
    """One worker, 10 requests at once: the tails run in batches of at most 4 (CSR's of mixed token
    counts together), every answer byte-identical to the unbatched engine's."""
    data = [raw_bitstream(split, i)[0] for i in range(10)]
    recorder = _Recording(get_split_model(split, "tiny"))
    batched = _engine(recorder, max_concurrency=1, max_batch_size=4, max_batch_delay_ms=5000)
    plain = _engine(get_split_model(split, "tiny"), max_concurrency=1, max_batch_size=1)
    assert plain.batcher is None
    got, want = _run_all(batched, data), _run_all(plain, data)
    assert sum(recorder.sizes) == 10 and max(recorder.sizes) > 1 and max(recorder.sizes) <= 4, recorder.sizes
    for (outcome, failure), (ref, ref_failure) in zip(got, want, strict=True):
        assert failure is None and ref_failure is None
        assert outcome.result.SerializeToString(deterministic=True) == ref.result.SerializeToString(deterministic=True)
        assert outcome.timings_ms.keys() == ref.timings_ms.keys()
    text = batched.metrics.registry.get_sample_value
    counted = {size: text("splitfc_cloud_tail_batches_total", {"split": split, "size": str(size)}) or 0
               for size in range(1, 5)}
    assert sum(size * n for size, n in counted.items()) == 10


def test_a_request_whose_deadline_passes_while_waiting_for_its_batch_is_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Request "early" is decoded and waits for company while "slow" is still decoding; its deadline
    passes: DEADLINE_EXCEEDED, and its features never reach the tail."""
    import splitfc.cloud.engine as engine_module

    split = "dinov2-cls"
    early, _ = raw_bitstream(split, 0)
    slow, _ = raw_bitstream(split, 1)
    slow_payload = engine_module.parse_bitstream(slow).payload
    go = threading.Event()
    real = engine_module.decode_features

    def decode(msg: Any, *args: Any, **kwargs: Any) -> Any:
        if msg.payload == slow_payload:
            go.wait(30)
        return real(msg, *args, **kwargs)

    monkeypatch.setattr(engine_module, "decode_features", decode)
    recorder = _Recording(get_split_model(split, "tiny"))
    # decodes in the pool (a decode held up on the event loop would hold up everything)
    engine = _engine(recorder, max_concurrency=2, max_batch_size=8, max_batch_delay_ms=60_000,
                     inline_decode_max_bytes=0)
    early_mark = float(real(engine_module.parse_bitstream(early)).flat[0])

    async def scenario() -> tuple[Any, Any]:
        engine.bind_loop(asyncio.get_running_loop())
        engine.load_models()
        waiting = asyncio.create_task(engine.run("t", "slow", slow, time.perf_counter()))
        await asyncio.sleep(0.05)
        late = await engine.run("t", "early", early, time.perf_counter(), time.monotonic() + 0.3)
        go.set()
        return late, await waiting

    try:
        (outcome, failure), (ok, no) = asyncio.run(scenario())
    finally:
        go.set()
        engine.shutdown()
    assert outcome is None and failure.status.name == "DEADLINE_EXCEEDED"
    assert "waiting for its batch" in failure.message and "not run" in failure.message
    assert no is None and ok.request_id == "slow"
    assert recorder.sizes == [1] and early_mark not in recorder.firsts


@pytest.mark.parametrize("inline", [True, False])
def test_cheap_decodes_and_tails_run_on_the_loop_and_answer_the_same(inline: bool) -> None:
    """Tiny Cls (raw, 33 KB): decoded on the event loop, and once its first batch has measured the tail
    as cheap, its batches run there too; with the inline settings at 0 everything goes to the pool. The
    answers equal the unbatched engine's byte for byte either way."""
    split = "dinov2-cls"
    data = [raw_bitstream(split, i)[0] for i in range(6)]
    # (a threshold far above any tail: which path runs must not depend on how busy the machine is)
    kw: dict[str, Any] = {"inline_decode_max_bytes": 256 * 1024, "inline_tail_max_ms": 1000.0} if inline else {
        "inline_decode_max_bytes": 0, "inline_tail_max_ms": 0}
    engine = _engine(get_split_model(split, "tiny"), max_concurrency=1, max_batch_size=4, **kw)
    plain = _engine(get_split_model(split, "tiny"), max_concurrency=1, max_batch_size=1)
    pooled: list[str] = []
    submit = engine._executor.submit

    def counting(fn: Any, *args: Any) -> Any:
        pooled.append(getattr(fn, "__name__", str(fn)))
        return submit(fn, *args)

    engine._executor.submit = counting  # type: ignore[method-assign]

    async def scenario() -> list[Any]:
        engine.bind_loop(asyncio.get_running_loop())
        engine.load_models()
        return [await engine.run("t", f"r{i}", d, time.perf_counter()) for i, d in enumerate(data)]

    try:
        got = asyncio.run(scenario())
    finally:
        engine.shutdown()
    want = _run_all(plain, data)
    for (outcome, failure), (ref, _) in zip(got, want, strict=True):
        assert failure is None
        assert outcome.result.SerializeToString(deterministic=True) == ref.result.SerializeToString(deterministic=True)
    if inline:
        assert pooled == ["run_batch"], pooled  # only the first batch (its cost unknown yet) in a thread
        assert engine.batcher is not None and engine.batcher.tail_cost[(split, "tiny")] > 0
    else:
        assert pooled.count("_decode_outcome") == 6 and pooled.count("run_batch") == 6, pooled


def test_a_failing_batch_is_rerun_per_request_so_only_the_bad_one_fails() -> None:
    split = "dinov2-cls"
    data = [raw_bitstream(split, i)[0] for i in (0, 1, 2, 4)]  # (3 is 2's image: chelsea is the cat)
    from splitfc.common.bitstream import decode_features, parse_bitstream

    bad = float(decode_features(parse_bitstream(data[2])).flat[0])
    recorder = _Recording(get_split_model(split, "tiny"), fail_on=bad)
    engine = _engine(recorder, max_concurrency=1, max_batch_size=4, max_batch_delay_ms=5000)
    results = _run_all(engine, data)
    assert max(recorder.sizes) > 1
    statuses = [None if failure is None else failure.status.name for _, failure in results]
    assert statuses == [None, None, "INTERNAL", None]
    assert "this request's tail fails" in results[2][1].message


def test_batching_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = CloudSettings()
    assert defaults.max_batch_size > 1 and defaults.max_batch_delay_ms > 0
    monkeypatch.setenv("SPLITFC_CLOUD_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("SPLITFC_CLOUD_MAX_BATCH_DELAY_MS", "0.5")
    s = CloudSettings()
    assert (s.max_batch_size, s.max_batch_delay_ms) == (3, 0.5)
    for name, value in (("SPLITFC_CLOUD_MAX_BATCH_SIZE", "0"), ("SPLITFC_CLOUD_MAX_BATCH_DELAY_MS", "-1")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=name.removeprefix("SPLITFC_CLOUD_").lower()):
            CloudSettings()
        monkeypatch.delenv(name)


# -- splitfc bench-serving ---------------------------------------------------------------------------

def test_batch_stats_are_the_batches_between_two_reads() -> None:
    from splitfc.cli.bench_serving import batch_stats

    stats = batch_stats({1: 5, 3: 2, 8: 4}, {1: 4, 8: 1})
    assert stats == {"batch_sizes": {"1": 1, "3": 2, "8": 3}, "batch_mean": (1 + 6 + 24) / 6, "batch_max": 8}
    assert batch_stats({1: 2}, {1: 2}) == {"batch_sizes": {}, "batch_mean": None, "batch_max": None}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batching", "sometimes"], "--batching takes on and/or off"),
        (["--batching", "on", "--max-batch-size", "1"], "max batch size >= 2"),
        (["--max-batch-delay-ms", "-2"], "--max-batch-delay-ms must be >= 0"),
    ],
)
def test_bench_serving_refuses_bad_batching_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    from splitfc.cli import main

    assert main(["bench-serving", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bench_serving_reports_both_modes_with_their_batch_sizes(tmp_path: Any) -> None:
    import json

    from splitfc.cli import main

    out = tmp_path / "serving.json"
    assert main(["bench-serving", "--split", "dinov2-cls", "--concurrency", "1,6", "--requests", "12",
                 "--repeat", "1", "--samples", "2", "--workers", "1", "--in-process-server",
                 "--max-batch-size", "4", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["batching"], r["client_mode"], r["concurrency"]): r for r in result["served"]}
    assert set(rows) == {(m, c, n) for m in ("on", "off") for c in ("unary", "stream") for n in (1, 6)}
    assert result["batching"]["on"]["max_batch_size"] == 4 and result["batching"]["off"]["max_batch_size"] == 1
    for (mode, client, _level), row in rows.items():
        assert row["ok"] == 12 and row["vs_in_process"] > 0
        assert row["latency_ms_p50"] <= row["latency_ms_p99"]
        # the load generator ran in a process of its own; the server (a thread here) in this one
        # server CPU comes from /proc in clock ticks (10 ms): 12 tiny requests may read as 0.0
        assert row["client_cpu_s"] > 0 and row["server_cpu_s"] is not None and row["server_cpu_s"] >= 0
        if mode == "off":
            assert row["batch_sizes"] == {} and row["batch_mean"] is None and "vs_batching_off" not in row
        else:  # every request of the run (12, 4 warm-up calls, 4 more on a stream) went through one batch
            sizes = {int(k): v for k, v in row["batch_sizes"].items()}
            assert sum(k * v for k, v in sizes.items()) == (20 if client == "stream" else 16)
            assert row["batch_max"] <= 4 and row["vs_batching_off"] > 0


def test_a_tail_over_the_inline_cost_per_request_runs_in_the_pool_even_alone() -> None:
    """`inline_tail_max_ms` bounds the tail's CPU *per request* (as documented): a split measured at 2 ms per
    request with a 1 ms bound goes to a worker thread even as a batch of one (it would hold the event loop)."""
    split = "dinov2-cls"
    data = raw_bitstream(split, 0)[0]
    engine = _engine(get_split_model(split, "tiny"), max_concurrency=1, max_batch_size=4,
                     inline_decode_max_bytes=0, inline_tail_max_ms=1.0)
    pooled: list[str] = []
    submit = engine._executor.submit

    def counting(fn: Any, *args: Any) -> Any:
        pooled.append(getattr(fn, "__name__", str(fn)))
        return submit(fn, *args)

    engine._executor.submit = counting  # type: ignore[method-assign]

    async def scenario() -> Any:
        engine.bind_loop(asyncio.get_running_loop())
        engine.load_models()
        assert engine.batcher is not None
        engine.batcher.tail_cost[(split, "tiny")] = 0.002
        return await engine.run("t", "r0", data, time.perf_counter())

    try:
        outcome, failure = asyncio.run(scenario())
    finally:
        engine.shutdown()
    assert failure is None and outcome is not None
    assert pooled.count("run_batch") == 1, pooled
