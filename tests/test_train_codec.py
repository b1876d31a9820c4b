"""``splitfc train-codec``: a few training steps, checkpoint contents, exact resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from splitfc.cli import main
from splitfc.common.codecs.hyperprior import HyperpriorCodec, checkpoint_path
from splitfc.common.learned.checkpoint import load_checkpoint, state_path
from splitfc.common.learned.data import synthetic_features
from splitfc.common.specs import get_split

SPLIT = "dinov2-dpt"


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(7)
    spec = get_split(SPLIT)
    for i in range(5):
        np.save(d / f"s{i}.npy", synthetic_features(spec, rng))
    return d


def _train(features: Path, out: Path, steps: int, *extra: str, lmbda: str = "2") -> int:
    return main(["train-codec", "--split", SPLIT, "--lambda", lmbda, "--features", str(features),
                 "--steps", str(steps), "--save-every", "2", "--N", "8", "--M", "8", "--batch", "2",
                 "--no-progress", "--quality", "3", "-o", str(out), *extra])


def test_a_few_steps_write_a_loadable_safe_checkpoint(features: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = checkpoint_path(SPLIT, 3, tmp_path)
    assert _train(features, out, 4) == 0
    err = capsys.readouterr().err
    assert "validation (1 frames): BPFP" in err and "MSE" in err
    cfg = json.loads(out.with_suffix(".json").read_text())
    assert cfg["split"] == SPLIT and cfg["lambda"] == 2.0 and cfg["steps"] == 4 and cfg["N"] == 8
    assert cfg["checkpoint_id"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert cfg["command"].startswith(f"splitfc train-codec --split {SPLIT} --lambda 2 ")
    assert set(cfg["validation"]) == {"bpfp", "mse"}
    model, loaded = load_checkpoint(out, expect_split=SPLIT)
    assert loaded.checkpoint_id == cfg["checkpoint_id"] and model.N == 8
    # the codec codes with it
    x = synthetic_features(get_split(SPLIT), np.random.default_rng(1))
    codec = HyperpriorCodec(directory=tmp_path)
    enc = codec.encode(x, get_split(SPLIT), 3)
    y = codec.decode(enc, get_split(SPLIT), x.shape, np.dtype(np.float32), 3)
    assert y.shape == x.shape


def test_resume_continues_exactly_where_it_stopped(features: Path, tmp_path: Path) -> None:
    straight = tmp_path / "a" / "q.safetensors"
    assert _train(features, straight, 6) == 0
    resumed = tmp_path / "b" / "q.safetensors"
    assert _train(features, resumed, 3) == 0
    assert _train(features, resumed, 6, "--resume") == 0
    a, b = load_file(str(state_path(straight))), load_file(str(state_path(resumed)))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    # Same tensors and metadata (safetensors writes its metadata keys in a per-process hash order,
    # so the files' bytes may differ in the header).
    from safetensors import safe_open

    with safe_open(str(straight), "pt") as fa, safe_open(str(resumed), "pt") as fb:
        assert fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
        assert all(np.array_equal(fa.get_tensor(k).numpy(), fb.get_tensor(k).numpy()) for k in fa.keys())  # noqa: SIM118


def test_resume_refuses_state_of_another_run(features: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.safetensors"
    assert _train(features, out, 2) == 0
    assert _train(features, out, 4, "--resume", lmbda="5") == 2
    assert "cannot resume" in capsys.readouterr().err


def test_bad_arguments_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path / "missing", tmp_path / "q.safetensors", 2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("splitfc: error: feature directory")
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "bad.npy", np.zeros((3, 3), dtype=np.float32))
    assert _train(tmp_path / "f", tmp_path / "q.safetensors", 2) == 2
    assert "expects a 4-d tensor" in capsys.readouterr().err
