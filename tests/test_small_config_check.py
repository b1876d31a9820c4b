"""A ``small`` model folder of another architecture is refused before loading (outside review of issue 14:
a SmolLM2 folder given as DINOv2-small loaded with random weights and produced 576-channel features)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitfc.common.errors import SplitfcError

LLAMA_CONFIG = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
                "architectures": ["LlamaForCausalLM"]}
DINOV2_CONFIG = {"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                 "patch_size": 14}


def _folder(tmp_path: Path, name: str, config: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_llama_folder_is_not_dinov2_small(tmp_path: Path) -> None:
    from splitfc.common.models.dinov2 import small_backbone

    with pytest.raises(SplitfcError, match=r"is not facebook/dinov2-small: config has model_type 'llama'"):
        small_backbone(source=_folder(tmp_path, "smollm2", LLAMA_CONFIG))


def test_dinov2_base_folder_is_not_dinov2_small(tmp_path: Path) -> None:
    from splitfc.common.models.dinov2 import small_backbone

    base = dict(DINOV2_CONFIG, hidden_size=768)
    with pytest.raises(SplitfcError, match=r"hidden_size 768 \(needs 384\)"):
        small_backbone(source=_folder(tmp_path, "dinov2-base", base))


def test_dinov2_folder_is_not_smollm2(tmp_path: Path) -> None:
    from splitfc.common.models.llama3 import build

    wrong = r"is not HuggingFaceTB/SmolLM2-135M-Instruct: config has model_type 'dinov2'"
    with pytest.raises(SplitfcError, match=wrong):
        build("llama3-csr", "small", source=_folder(tmp_path, "dinov2", DINOV2_CONFIG))


def test_matching_config_passes_the_check(tmp_path: Path) -> None:
    from splitfc.common.models._common import check_config

    check_config(_folder(tmp_path, "ok", DINOV2_CONFIG), "facebook/dinov2-small", model_type="dinov2",
                 hidden_size=384)
    with pytest.raises(SplitfcError, match="cannot read"):
        check_config(tmp_path / "missing", "facebook/dinov2-small", model_type="dinov2")
