"""The benchmark's cache key covers every input of a result; times are taken without the memory sampler.

For each kind of input (coding-path source, settings, the ffmpeg binary, VTM's
programs, a hyperprior checkpoint) a test changes it and checks that exactly
the points depending on it are recomputed and the others reused.
"""

from __future__ import annotations

import importlib
import json
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from splitfc.common import bitstream
from splitfc.common.bench import codec_micro, runner
from splitfc.common.bench.memory import PeakMemory
from splitfc.common.bench.runner import BenchConfig, point_key_for, run_bench

# ----------------------------------------------------------------------------- set-up



@pytest.fixture
def reread_settings() -> Iterator[Callable[[], None]]:
    """Call after changing SPLITFC_* variables: the settings are read again (as in a new process)."""
    from splitfc.common import settings

    def clear() -> None:
        for read in (settings.codec_settings, settings.model_settings, settings.hyperprior_settings):
            read.cache_clear()

    clear()
    yield clear
    clear()


def _config(tmp_path: Path, codecs: list[str], **kw: Any) -> BenchConfig:
    folder = tmp_path / "feats" / "dinov2-cls"
    if not folder.exists():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(7)
        for i in range(2):
            np.save(folder / f"s{i}.npy", (rng.standard_t(3, size=(16, 24)) * 2).astype(np.float32))
    base: dict[str, Any] = dict(splits=["dinov2-cls"], codecs=codecs, output=tmp_path / "out",
                                features_dir=tmp_path / "feats", samples=2, qps=[42], qualities=[1],
                                plots=False, progress=False)
    base.update(kw)
    return BenchConfig(**base)


def _run(config: BenchConfig) -> tuple[int, int, list[tuple[str, int]]]:
    """(computed, cached, sorted (codec, rate) of the computed points); nothing may fail."""
    computed: list[tuple[str, int]] = []
    config.on_point = lambda rec: computed.append((rec["codec"], rec["rate"]))
    summary = run_bench(config)
    assert summary.failed == []
    return summary.computed, summary.cached, sorted(computed)


# ----------------------------------------------------------------------------- source of the coding path


def test_changed_coding_source_recomputes_the_codec_points(tmp_path: Path, fake_task: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import splitfc.common.preprocess as preprocess

    config = _config(tmp_path, ["raw"])
    assert _run(config)[:2] == (4, 0)  # 2 Original + 2 raw points
    # The key follows the bytes of preprocess.py, wherever they are read from.
    copy = tmp_path / "src" / "preprocess.py"
    copy.parent.mkdir()
    copy.write_bytes(Path(preprocess.__file__).read_bytes())
    monkeypatch.setattr(preprocess, "__file__", str(copy))
    assert _run(config)[:2] == (0, 4)
    copy.write_bytes(copy.read_bytes() + b"\n# a change to pre-processing\n")
    assert not _tail_runs("splitfc.common.preprocess")
    assert _run(config) == (2, 2, [("raw", 0), ("raw", 0)])  # the Original points do not code


_CODING_MODULES = [
    "splitfc.common.preprocess", "splitfc.common.bitstream", "splitfc.common.integrity", "splitfc.common.codecs",
    "splitfc.common.codecs.base", "splitfc.common.codecs._ffmpeg", "splitfc.common.codecs._external",
    "splitfc.common.codecs.hevc", "splitfc.common.learned.engine", "splitfc.common.learned.checkpoint",
    "splitfc.common.learned.model", "splitfc.common.learned.payload", "splitfc.v1.bitstream_pb2",
    "splitfc.common.splits.dinov2",  # reached only through importlib calls (specs -> the splits registry)
]
# Modules the tails run (the models import specs, errors and settings too).
_TAIL_MODULES = ["splitfc.common.models", "splitfc.common.models.dinov2", "splitfc.common.models._common",
                 "splitfc.common.bench.task", "splitfc.common.specs", "splitfc.common.errors",
                 "splitfc.common.settings", "splitfc.common.tasks.cls"]


def _tail_runs(name: str) -> bool:
    """Whether the tail path imports module ``name`` too (then the Original point depends on it)."""
    from splitfc.common.bench.identity import TAIL_ROOTS, module_closure

    return name in module_closure(TAIL_ROOTS)


def _keys() -> dict[str, str]:
    return {codec: point_key_for("dinov2-cls", codec, 42 if codec != "hyperprior" else 1, "s0", "f" * 64, "tiny")
            for codec in ("original", "raw", "hevc", "hyperprior")}


@pytest.mark.parametrize("name", _CODING_MODULES + _TAIL_MODULES)
def test_every_module_of_the_paths_is_in_the_key(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(name)
    before = _keys()
    copy = tmp_path / Path(module.__file__).name
    copy.write_bytes(Path(module.__file__).read_bytes() + b"\n# changed\n")
    monkeypatch.setattr(module, "__file__", str(copy))
    after = _keys()
    changed = {codec for codec in before if before[codec] != after[codec]}
    assert {"raw", "hevc", "hyperprior"} <= changed  # every codec point runs both paths
    # The Original point codes nothing: it depends on a module only through the tail path.
    assert ("original" in changed) == (name in _TAIL_MODULES or _tail_runs(name))
    if name in _TAIL_MODULES:
        assert _tail_runs(name)


# ----------------------------------------------------------------------------- settings


def test_changed_codec_setting_recomputes_the_codec_points(tmp_path: Path, fake_task: None,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           reread_settings: Callable[[], None]) -> None:
    pytest.importorskip("imageio_ffmpeg")
    config = _config(tmp_path, ["raw", "hevc"])
    assert _run(config)[:2] == (6, 0)
    monkeypatch.setenv("SPLITFC_CODEC_TIMEOUT_S", "123")  # a limit, not an input: nothing to redo
    reread_settings()
    assert _run(config)[:2] == (0, 6)
    monkeypatch.setenv("SPLITFC_X265_PRESET", "superfast")
    reread_settings()
    computed, cached, points = _run(config)
    assert (computed, cached) == (4, 2)  # every codec point (settings are shared), no Original point
    assert points == [("hevc", 42), ("hevc", 42), ("raw", 0), ("raw", 0)]


def test_changed_model_setting_recomputes_every_point(tmp_path: Path, fake_task: None,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      reread_settings: Callable[[], None]) -> None:
    config = _config(tmp_path, ["raw"])
    assert _run(config)[:2] == (4, 0)
    monkeypatch.setenv("SPLITFC_TORCH_THREADS", "1")  # speed only
    reread_settings()
    assert _run(config)[:2] == (0, 4)
    monkeypatch.setenv("SPLITFC_SD3_STEPS", "2")  # changes what the tails compute
    reread_settings()
    assert _run(config)[:2] == (4, 0)


# ----------------------------------------------------------------------------- external programs


def _wrapper(path: Path, target: Path, note: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n{note}exec "{target}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_changed_ffmpeg_binary_recomputes_its_codecs(tmp_path: Path, fake_task: None,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     reread_settings: Callable[[], None]) -> None:
    pytest.importorskip("imageio_ffmpeg")
    from splitfc.common.codecs._external import ffmpeg_path

    real = ffmpeg_path().resolve()
    monkeypatch.setenv("SPLITFC_FFMPEG", str(_wrapper(tmp_path / "a" / "ffmpeg", real)))
    reread_settings()
    config = _config(tmp_path, ["raw", "hevc"])
    assert _run(config)[:2] == (6, 0)
    # The same program elsewhere is the same input.
    other = _wrapper(tmp_path / "b" / "ffmpeg", real)
    monkeypatch.setenv("SPLITFC_FFMPEG", str(other))
    reread_settings()
    assert _run(config)[:2] == (0, 6)
    # Another build at the same path (an upgrade in place): the ffmpeg codecs are redone, nothing else.
    _wrapper(other, real, note="# another build\n")
    assert _run(config) == (2, 4, [("hevc", 42), ("hevc", 42)])


def test_changed_vtm_programs_or_config_change_the_vtm_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             reread_settings: Callable[[], None]) -> None:
    """VTM is not installed here: stand-in files, keys only."""
    from splitfc.common.codecs.vtm import CONFIG, DECODER, ENCODER

    folder = tmp_path / "vtm"
    folder.mkdir()
    for name in (ENCODER, DECODER, CONFIG):
        (folder / name).write_text(f"{name} 23.3\n")
    monkeypatch.setenv("SPLITFC_VTM_DIR", str(folder))
    reread_settings()

    def key(codec: str) -> str:
        return point_key_for("dinov2-cls", codec, 32, "s0", "f" * 64, "tiny")

    vtm, vvenc, hevc = key("vtm"), key("vvenc"), key("hevc")
    (folder / CONFIG).write_text(f"{CONFIG} 23.3 with another GOP\n")
    assert key("vtm") != vtm
    vtm = key("vtm")
    (folder / ENCODER).write_text(f"{ENCODER} 23.4\n")
    assert key("vtm") != vtm
    assert (key("vvenc"), key("hevc")) == (vvenc, hevc)  # vvenc decodes with ffmpeg by default
    monkeypatch.setenv("SPLITFC_VVC_DECODER", "vtm")
    reread_settings()
    vvenc = key("vvenc")
    (folder / DECODER).write_text(f"{DECODER} 23.4\n")
    assert key("vvenc") != vvenc


# ----------------------------------------------------------------------------- checkpoints


def test_changed_checkpoint_file_recomputes_its_quality(tmp_path: Path, fake_task: None,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        reread_settings: Callable[[], None]) -> None:
    from splitfc.common.codecs.hyperprior import SHIPPED_DIR

    shutil.copytree(SHIPPED_DIR / "dinov2-cls", tmp_path / "ckpt" / "dinov2-cls")
    monkeypatch.setenv("SPLITFC_HYPERPRIOR_DIR", str(tmp_path / "ckpt"))
    reread_settings()
    config = _config(tmp_path, ["hyperprior"], qualities=[1, 2])
    assert _run(config)[:2] == (6, 0)
    # Quality 1's JSON config changes (the weights and their hash do not): quality 1 is redone.
    cfg_file = tmp_path / "ckpt" / "dinov2-cls" / "q1.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["command"] = cfg.get("command", "") + " (re-exported)"
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    assert _run(config) == (2, 4, [("hyperprior", 1), ("hyperprior", 1)])


def test_changed_coding_tables_change_the_hyperprior_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitfc.common.learned import checkpoint

    if getattr(checkpoint, "GAUSSIAN_TABLES", None) is None:
        pytest.skip("this checkpoint loader reads no shared table file")
    before = _keys()
    copy = tmp_path / "tables.safetensors"
    copy.write_bytes(Path(checkpoint.GAUSSIAN_TABLES).read_bytes() + b"\0")
    monkeypatch.setattr(checkpoint, "GAUSSIAN_TABLES", copy)
    after = _keys()
    assert {codec for codec in before if before[codec] != after[codec]} == {"hyperprior"}


# ----------------------------------------------------------------------------- timing without the sampler


class _VirtualClock:
    """Coding calls take 1 s while the memory sampler runs and 10 ms otherwise."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sampling = False
        self.calls: list[tuple[str, bool]] = []

    def perf_counter(self) -> float:
        return self.now

    @contextmanager
    def measure_peak(self, interval: float = 0.005) -> Iterator[PeakMemory]:
        self.sampling = True
        try:
            yield PeakMemory(peak_rss_mb=111.0, peak_alloc_mb=3.0)
        finally:
            self.sampling = False

    def slowed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            self.now += 1.0 if self.sampling else 0.010
            self.calls.append((fn.__name__, self.sampling))
            return out

        return wrapped


def test_bench_times_are_taken_without_the_memory_sampler(tmp_path: Path, fake_task: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _VirtualClock()
    monkeypatch.setattr(runner, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(runner, "measure_peak", clock.measure_peak)
    monkeypatch.setattr(bitstream, "encode_features", clock.slowed(bitstream.encode_features))
    monkeypatch.setattr(bitstream, "decode_features", clock.slowed(bitstream.decode_features))
    config = _config(tmp_path, ["raw"])
    records: list[dict[str, Any]] = []
    config.on_point = records.append
    run_bench(config)
    coded = [r for r in records if r["codec"] == "raw"]
    assert len(coded) == 2
    for rec in coded:
        assert rec["encode_ms"] == pytest.approx(10.0) and rec["decode_ms"] == pytest.approx(10.0)
        assert (rec["peak_rss_mb"], rec["peak_alloc_mb"]) == (111.0, 3.0)  # from the sampled pass
    # each point: one sampled encode + decode (memory), one unsampled (times)
    assert sorted(clock.calls) == sorted([("encode_features", True), ("decode_features", True),
                                          ("encode_features", False), ("decode_features", False)] * 2)


def test_bench_codecs_times_are_taken_without_the_memory_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _VirtualClock()
    monkeypatch.setattr(codec_micro, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(codec_micro, "measure_peak", clock.measure_peak)
    monkeypatch.setattr(codec_micro, "encode_features", clock.slowed(codec_micro.encode_features))
    monkeypatch.setattr(codec_micro, "decode_features", clock.slowed(codec_micro.decode_features))
    features = codec_micro.synthetic_features("dinov2-cls")
    point = codec_micro.measure(features, "dinov2-cls", "raw", 0, repeats=3)
    assert point.encode_ms == pytest.approx(10.0) and point.decode_ms == pytest.approx(10.0)
    assert (point.peak_rss_mb, point.peak_alloc_mb) == (111.0, 3.0)
    assert clock.calls.count(("encode_features", True)) == 1
    assert clock.calls.count(("encode_features", False)) == 3


def test_bench_codecs_digest_time_is_of_the_content_the_decoder_verifies() -> None:
    features = codec_micro.synthetic_features("dinov2-cls")
    msg = bitstream.encode_features(features, "dinov2-cls", "raw", 0)
    with codec_micro.verified_content() as seen:
        bitstream.decode_features(msg)
    assert [len(c) for c in seen] == [features.nbytes]  # raw verifies its stored bytes
    from splitfc.common import integrity

    assert integrity.bind_digest(integrity.content_digest(seen[0]), bitstream.header_bytes(msg)) == msg.decoded_digest
    point = codec_micro.measure(features, "dinov2-cls", "raw", 0)
    assert point.digest_ms is not None and point.digest_ms > 0
