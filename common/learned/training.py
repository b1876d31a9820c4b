"""Rate-distortion training of the feature hyperprior (paper Eq. 1).

Loss = BPFP + λ · MSE, where BPFP is the likelihood-estimated bits per feature
point of ``y`` and ``z`` and MSE is measured in the feature domain (the
normalised frame error times the truncation-range width, squared), the domain
of the paper's Table 3. The entropy bottleneck's quantiles are trained by the
auxiliary loss with their own Adam optimizer, as in CompressAI's example.

Every step draws its crops and noise from generators seeded by (seed, step),
so a run resumed from its state file continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splitfc.common.errors import SplitfcError
from splitfc.common.learned.checkpoint import (
    HyperpriorConfig,
    export_model,
    load_state,
    save_checkpoint,
    save_state,
    state_path,
)
from splitfc.common.learned.data import Frame
from splitfc.common.learned.model import FeatureHyperprior, frame_tensor


@dataclass
class TrainOptions:
    """Hyper-parameters of one training run (one split, one λ)."""

    split: str
    lmbda: float
    steps: int = 2000
    patch: int = 64
    batch: int = 8
    lr: float = 1e-3
    aux_lr: float = 1e-2
    N: int = 32
    M: int = 32
    seed: int = 0
    weights_dtype: str = "float16"
    save_every: int = 500
    quality: int | None = None
    tile: int = 1024
    init: Path | None = None
    """Start from this checkpoint's weights (same split, N and M) instead of a random init."""
    command: str = ""


def rd_terms(model: FeatureHyperprior, x: torch.Tensor, width: torch.Tensor,
             points: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(BPFP, feature-domain MSE) of a forward pass; BPFP divides by ``points`` (default: all pixels)."""
    out = model(x)
    bits = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values())
    bpfp = bits / float(points if points is not None else x.numel())
    mse = (((out["x_hat"] - x) * width) ** 2).mean()
    return bpfp, mse


def _prepad(frame: Frame, patch: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = frame.x.shape
    ph, pw = max(0, patch - h), max(0, patch - w)
    if ph or pw:
        return np.pad(frame.x, ((0, ph), (0, pw)), mode="edge"), np.pad(frame.width, ((0, ph), (0, pw)), mode="edge")
    return frame.x, frame.width


class CropSampler:
    """Random ``patch`` x ``patch`` crops of the frames, frames drawn in proportion to their area."""

    def __init__(self, frames: list[Frame], patch: int) -> None:
        if not frames:
            raise SplitfcError("no training frames")
        self.patch = patch
        self.frames = [_prepad(f, patch) for f in frames]
        area = np.asarray([f[0].size for f in self.frames], dtype=np.float64)
        self.p = area / area.sum()

    def batch(self, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ws = [], []
        for i in rng.choice(len(self.frames), size=size, p=self.p):
            x, w = self.frames[i]
            top = int(rng.integers(0, x.shape[0] - self.patch + 1))
            left = int(rng.integers(0, x.shape[1] - self.patch + 1))
            xs.append(x[top:top + self.patch, left:left + self.patch])
            ws.append(w[top:top + self.patch, left:left + self.patch])
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ws)[:, None])


@torch.no_grad()
def evaluate_forward(model: FeatureHyperprior, frames: list[Frame]) -> dict[str, float]:
    """Validation: mean likelihood-estimated BPFP and feature-domain MSE over whole frames."""
    was_training = model.training
    model.eval()
    bpfps, mses = [], []
    for f in frames:
        h, w = f.x.shape
        x = frame_tensor(f.x)
        out = model(x)
        bits = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values())
        bpfps.append(float(bits) / (h * w))
        err = (out["x_hat"][0, 0, :h, :w].clamp(0, 1) - torch.from_numpy(f.x)) * torch.from_numpy(f.width)
        mses.append(float((err**2).mean()))
    model.train(was_training)
    return {"bpfp": float(np.mean(bpfps)), "mse": float(np.mean(mses))}


def _optimizers(model: FeatureHyperprior, opts: TrainOptions) -> dict[str, torch.optim.Optimizer]:
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    return {"main": torch.optim.Adam(main, lr=opts.lr), "aux": torch.optim.Adam(aux, lr=opts.aux_lr)}


def train_codec(
    opts: TrainOptions,
    train_frames: list[Frame],
    val_frames: list[Frame],
    output: Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> HyperpriorConfig:
    """Train one checkpoint and write ``output`` (+ .json, + .state.safetensors); return its config."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    state_file = state_path(output)
    torch.manual_seed(opts.seed)
    model = FeatureHyperprior(opts.N, opts.M)
    optimizers = _optimizers(model, opts)
    identity = {"split": opts.split, "lambda": opts.lmbda, "N": opts.N, "M": opts.M, "patch": opts.patch,
                "batch": opts.batch, "seed": opts.seed}
    start = 0
    if opts.init is not None:
        _init_from(model, opts)
    if resume and state_file.exists():
        meta = load_state(state_file, model, optimizers)
        if meta.get("identity") != identity:
            raise SplitfcError(f"cannot resume {state_file}: it was written for {meta.get('identity')}, not {identity}")
        start = int(meta["step"])
        log(f"resuming {output.name} from step {start}")
    sampler = CropSampler(train_frames, opts.patch)
    model.train()
    from tqdm import tqdm

    bar = tqdm(range(start, opts.steps), initial=start, total=opts.steps, disable=not progress,
               desc=f"{opts.split} λ={opts.lmbda:g}", file=sys.stderr, dynamic_ncols=True)
    avg_b = avg_m = None
    for step in bar:
        rng = np.random.default_rng([opts.seed, step])
        torch.manual_seed(opts.seed * 1_000_003 + step)
        x, w = sampler.batch(opts.batch, rng)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        bpfp, mse = rd_terms(model, x, w)
        loss = bpfp + opts.lmbda * mse
        if not math.isfinite(float(loss.detach())):
            raise SplitfcError(f"training diverged at step {step} (loss {float(loss)}); lower --lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizers["main"].param_groups for p in g["params"]], 1.0)
        optimizers["main"].step()
        aux = model.aux_loss()
        aux.backward()
        optimizers["aux"].step()
        b, m = float(bpfp.detach()), float(mse.detach())
        avg_b = b if avg_b is None else 0.98 * avg_b + 0.02 * b
        avg_m = m if avg_m is None else 0.98 * avg_m + 0.02 * m
        bar.set_postfix(bpfp=f"{avg_b:.3f}", mse=f"{avg_m:.3g}", aux=f"{float(aux.detach()):.1f}", refresh=False)
        done = step + 1
        if done % opts.save_every == 0 or done == opts.steps:
            save_state(state_file, model, optimizers, {"step": done, "identity": identity})
    bar.close()
    if start >= opts.steps:
        save_state(state_file, model, optimizers, {"step": start, "identity": identity})
    exported = export_model(model, opts.weights_dtype)
    metrics = evaluate_forward(exported, val_frames) if val_frames else {}
    if metrics:
        log(f"validation ({len(val_frames)} frames): BPFP {metrics['bpfp']:.4f}  MSE {metrics['mse']:.6g}")
    cfg = HyperpriorConfig(
        split=opts.split, lmbda=opts.lmbda, N=opts.N, M=opts.M, tile=opts.tile, quality=opts.quality,
        weights_dtype=opts.weights_dtype, steps=opts.steps, patch=opts.patch, batch=opts.batch, lr=opts.lr,
        seed=opts.seed, command=opts.command, validation=metrics,
    )
    return save_checkpoint(exported, cfg, output)


def _init_from(model: FeatureHyperprior, opts: TrainOptions) -> None:
    from splitfc.common.learned.checkpoint import load_checkpoint

    assert opts.init is not None
    source, cfg = load_checkpoint(opts.init, expect_split=opts.split)
    if (cfg.N, cfg.M) != (opts.N, opts.M):
        raise SplitfcError(f"--init {opts.init} has N={cfg.N} M={cfg.M}, this run N={opts.N} M={opts.M}")
    weights = {k: v for k, v in source.state_dict().items() if k.rsplit(".", 1)[-1] not in _CDF_LEAVES}
    torch.nn.Module.load_state_dict(model, weights, strict=False)


_CDF_LEAVES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def untrained_checkpoint(split: str, output: Path, N: int = 32, M: int = 32, seed: int = 0) -> HyperpriorConfig:
    """The same architecture with its initial weights (the baseline 'training works' is compared with)."""
    torch.manual_seed(seed)
    model = export_model(FeatureHyperprior(N, M), "float32")
    return save_checkpoint(model, HyperpriorConfig(split=split, lmbda=0.0, N=N, M=M, weights_dtype="float32",
                                                   command="untrained"), output)


__all__ = ["CropSampler", "TrainOptions", "evaluate_forward", "rd_terms", "train_codec",
           "untrained_checkpoint"]
