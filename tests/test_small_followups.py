"""Small-preset follow-ups: corrupt converted weights, stale conversion folders, a converted-models
"folder" that is a file, the demo behind a proxy, FID on too few images."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from splitfc.common.settings import model_settings


@pytest.fixture
def converted_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "converted"
    monkeypatch.setenv("SPLITFC_CONVERTED_DIR", str(folder))
    model_settings.cache_clear()
    yield folder
    monkeypatch.delenv("SPLITFC_CONVERTED_DIR")
    model_settings.cache_clear()


def _entry(hub_id: str = "test-owner/test-model") -> object:
    from splitfc.common.models.pretrained import ConverterEntry

    def convert(out: Path) -> None:
        (out / "config.json").write_text("{}")

    return ConverterEntry(hub_id, convert, (), "a test converter")


# ---------------------------------------------------------------- corrupt converted safetensors


def _tiny_dinov2_folder(folder: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                          image_size=28, patch_size=14)
    Dinov2Model(config).save_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_converted_weights_are_one_line_naming_the_folder(tmp_path: Path, damage: str) -> None:
    from transformers import Dinov2Model

    from splitfc.common.errors import SplitfcError
    from splitfc.common.models._common import load_pretrained
    from splitfc.common.models.pretrained import COMPLETE_MARK

    folder = tmp_path / "facebook--dinov2-small"
    _tiny_dinov2_folder(folder)
    (folder / COMPLETE_MARK).write_text("test\n")
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(SplitfcError) as err:
        load_pretrained(Dinov2Model, "facebook/dinov2-small", folder)
    message = str(err.value)
    assert "\n" not in message and str(folder) in message
    assert "truncated or damaged" in message and f"delete {folder} to reconvert" in message


def test_corrupt_weights_in_a_users_folder_say_replace(tmp_path: Path) -> None:
    from transformers import Dinov2Model

    from splitfc.common.models._common import CorruptCheckpointError, load_pretrained

    folder = tmp_path / "mine"
    _tiny_dinov2_folder(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptCheckpointError, match="replace the weights in"):
        load_pretrained(Dinov2Model, "facebook/dinov2-small", folder)


# ---------------------------------------------------------------- stale temporary folders


_HOLD = """
import sys, time
from filelock import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_next_conversion_removes_stale_temporaries_but_not_a_live_ones(converted_dir: Path) -> None:
    from splitfc.common.models.pretrained import COMPLETE_MARK, convert_once

    converted_dir.mkdir(parents=True)
    stale_same = converted_dir / "test-owner--test-model.tmp-abc123"
    stale_other = converted_dir / "other--model.tmp-def456"
    live = converted_dir / "busy--model.tmp-ghi789"
    for folder in (stale_same, stale_other, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    # A conversion of busy--model running in another process holds its lock.
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(converted_dir / "busy--model.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        target = convert_once(_entry())
        assert time.monotonic() - start < 30, "must not wait for another conversion's lock"
        assert (target / COMPLETE_MARK).is_file()
        assert not stale_same.exists() and not stale_other.exists()
        assert (live / "model.safetensors").is_file(), "a live conversion's folder was removed"
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in converted_dir.iterdir() if ".tmp-" in p.name) == [live.name]


def test_stale_temporary_removal_skips_locks_held_in_this_process(tmp_path: Path) -> None:
    from filelock import FileLock

    from splitfc.common.models.pretrained import remove_stale_temporaries

    live, stale = tmp_path / "a--b.tmp-1", tmp_path / "c--d.tmp-2"
    live.mkdir()
    stale.mkdir()
    with FileLock(str(tmp_path / "a--b.lock")):
        removed = remove_stale_temporaries(tmp_path)
    assert removed == [stale] and live.is_dir() and not stale.exists()


# ---------------------------------------------------------------- SPLITFC_CONVERTED_DIR is a file


def test_converted_dir_that_is_a_file_is_one_clear_line(converted_dir: Path) -> None:
    from splitfc.common.errors import SplitfcError
    from splitfc.common.models.pretrained import convert_once

    converted_dir.write_text("not a folder")
    with pytest.raises(SplitfcError) as err:
        convert_once(_entry())
    message = str(err.value)
    assert not isinstance(err.value, FileExistsError)
    assert "\n" not in message and "SPLITFC_CONVERTED_DIR" in message and f"{converted_dir} is a file" in message


def test_converted_dir_below_a_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitfc.common.models.pretrained import ConvertedDirError, convert_once

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    monkeypatch.setenv("SPLITFC_CONVERTED_DIR", str(blocker / "deeper" / "converted"))
    model_settings.cache_clear()
    try:
        with pytest.raises(ConvertedDirError, match=f"{blocker} is a file"):
            convert_once(_entry())
    finally:
        monkeypatch.delenv("SPLITFC_CONVERTED_DIR")
        model_settings.cache_clear()


# ---------------------------------------------------------------- the demo behind a proxy


def test_demo_loopback_ignores_a_proxy_in_the_environment(tmp_path: Path) -> None:
    # A proxy that refuses every connection; no NO_PROXY: loopback gRPC must not go through it.
    import os

    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "grpc_proxy")}
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", grpc_proxy="http://127.0.0.1:9",
               OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "splitfc", "demo", "--preset", "tiny", "--samples", "1", "--codec", "raw",
         "--splits", "dinov2-cls", "--concurrency", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    row = next(line for line in res.stdout.splitlines() if line.startswith("dinov2-cls"))
    assert row.split()[-2:] == ["1", "0"]  # ok 1, err 0


def test_demo_channel_options_turn_the_proxy_off() -> None:
    # The demo's edge talks to 127.0.0.1: the edge's own loopback rule turns the proxy off (edge.security).
    from splitfc.edge.security import channel_options
    from splitfc.edge.settings import EdgeSettings

    assert ("grpc.enable_http_proxy", 0) in channel_options("127.0.0.1:50051", EdgeSettings())


def test_failed_samples_reason_printed_once_per_reason() -> None:
    from splitfc.cli.demo import failure_note

    fail = {"status": "UNAVAILABLE", "error": "failed to connect to all addresses"}
    report = {"requests": [fail, fail, {"status": "OK", "error": ""}, fail,
                           {"status": "DEADLINE_EXCEEDED", "error": ""}]}
    lines = failure_note("dinov2-cls", report).splitlines()
    assert lines == [
        "splitfc demo: dinov2-cls: 3 of 5 samples failed: UNAVAILABLE: failed to connect to all addresses",
        "splitfc demo: dinov2-cls: 1 of 5 samples failed: DEADLINE_EXCEEDED: no detail",
    ]
    assert failure_note("dinov2-cls", {"requests": [{"status": "OK", "error": ""}]}) is None


# ---------------------------------------------------------------- FID on few images


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_fid_on_few_images_warns_unreliable(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from splitfc.common import fid as fid_module

    # The network is not what is tested: stand-in 16-d features, one row per image.
    monkeypatch.setattr(fid_module, "fid_unavailable_reason", lambda weights=None: None)
    monkeypatch.setattr(fid_module, "inception_features",
                        lambda images, weights=None: np.stack([im[:4, :4, 0].ravel() for im in images]).astype(float))
    with pytest.warns(UserWarning, match=r"FID on 4 and 4 images is unreliable"):
        value = fid_module.fid(_images(4, 0), _images(4, 1))
    assert value > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid_module.fid(_images(12, 0), _images(10, 1))  # enough images: no warning
        assert fid_module.fid(_images(3, 0), _images(3, 0)) == 0.0  # identical sets: exact, no warning
