"""No pickle from untrusted files: malicious checkpoints are refused and never unpickled; a source scan."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from splitfc.common.codecs.hyperprior import SHIPPED_DIR, HyperpriorCodec, checkpoint_path
from splitfc.common.errors import SplitfcError
from splitfc.common.learned.checkpoint import CheckpointError, config_path
from splitfc.common.models._common import load_head_file

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("cloud", "edge", "common", "splitfc")


class Tripwire:
    """Unpickling this creates a file: proof that a loader ran pickle's code path."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.target,))


def test_dinov2_head_loader_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    tripwire = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": Tripwire(tripwire)}, tmp_path / "head.pth")
    with pytest.raises(SplitfcError, match="cannot read head file"):
        load_head_file(tmp_path, "head.pth")
    assert not tripwire.exists()
    # The same loader reads a plain tensor checkpoint (weights_only=True is not blanket refusal).
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pth")
    assert torch.equal(load_head_file(tmp_path, "ok.pth")["w"], torch.ones(2))


def test_hyperprior_codec_refuses_a_pickle_checkpoint_even_with_a_matching_hash(tmp_path: Path) -> None:
    src = checkpoint_path("dinov2-cls", 2, SHIPPED_DIR)
    dst = checkpoint_path("dinov2-cls", 2, tmp_path)
    dst.parent.mkdir(parents=True)
    tripwire = tmp_path / "ran"
    blob = pickle.dumps({"weights": Tripwire(tripwire)})
    dst.write_bytes(blob)
    cfg = json.loads(config_path(src).read_text())
    cfg["checkpoint_id"] = hashlib.sha256(blob).hexdigest()
    config_path(dst).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        HyperpriorCodec(directory=tmp_path).model_for("dinov2-cls", 2)
    assert not tripwire.exists()
    shutil.rmtree(dst.parent)


def _calls(pattern: str) -> list[tuple[str, str]]:
    hits = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line in path.read_text().splitlines():
                if re.search(pattern, line) and not line.lstrip().startswith(("#", '"""')):
                    hits.append((str(path.relative_to(ROOT)), line.strip()))
    return hits


def test_source_has_no_unsafe_deserialization() -> None:
    torch_loads = _calls(r"torch\.load\(")
    assert torch_loads, "the scan found nothing: wrong folders?"
    assert all("weights_only=True" in line for _, line in torch_loads), torch_loads
    assert _calls(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load|cloudpickle") == []
    assert _calls(r"allow_pickle\s*=\s*True") == []
    np_loads = _calls(r"\bnp\.load\(")
    assert all("allow_pickle=False" in line or "mmap_mode" in line for _, line in np_loads), np_loads
