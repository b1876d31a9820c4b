"""Checkpoints: weights in safetensors, configuration in JSON; nothing is unpickled.

A checkpoint ``q3.safetensors`` has a sibling ``q3.json`` (`HyperpriorConfig`).
The JSON names the split the model was trained for, its λ, N and M, the
command that trained it and ``checkpoint_id`` = sha256 of the safetensors
file. Loading checks the hash, the tensor names and shapes, so a corrupt or
foreign file is refused with a `CheckpointError`. The safetensors file also
holds the entropy models' quantized CDF tables (built by ``update(force=True)``
when the checkpoint is written), so every process codes with the same tables.
The Gaussian-conditional CDF tables do not depend on the checkpoint: they are
one shipped file (`GAUSSIAN_TABLES`, sha256 checked), never rebuilt from
float maths at load time.

Training state (full-precision weights and Adam moments) lives in a separate
``<name>.state.safetensors`` so that an interrupted run can resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from compressai.entropy_models import GaussianConditional
from compressai.models.base import get_scale_table
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from splitfc.common.errors import SplitfcError
from splitfc.common.learned.model import FeatureHyperprior

CONFIG_FORMAT = "splitfc-hyperprior"
CONFIG_VERSION = 1
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class CheckpointError(SplitfcError, ValueError):
    """A checkpoint that is missing, corrupt, not safetensors, or for another split."""


@dataclass
class HyperpriorConfig:
    """The JSON side of a checkpoint."""

    split: str
    lmbda: float
    N: int = 32
    M: int = 32
    tile: int = 1024
    quality: int | None = None
    weights_dtype: str = "float16"
    steps: int = 0
    patch: int = 128
    batch: int = 8
    lr: float = 1e-3
    seed: int = 0
    mse_domain: str = "feature"
    command: str = ""
    checkpoint_id: str = ""
    validation: dict[str, float] = field(default_factory=dict)
    format: str = CONFIG_FORMAT
    version: int = CONFIG_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["lambda"] = d.pop("lmbda")
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> HyperpriorConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"checkpoint config {where} is not valid JSON: {exc}") from None
        if not isinstance(d, dict) or d.get("format") != CONFIG_FORMAT:
            raise CheckpointError(f"{where} is not a splitfc hyperprior checkpoint config")
        if d.get("version") != CONFIG_VERSION:
            raise CheckpointError(
                f"checkpoint config {where} has version {d.get('version')}, expected {CONFIG_VERSION}"
            )
        d["lmbda"] = d.pop("lambda", None)
        known = {f.name for f in fields(cls)}
        try:
            cfg = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:
            raise CheckpointError(f"checkpoint config {where} is incomplete: {exc}") from None
        cfg._check(where)
        return cfg

    def _check(self, where: str) -> None:
        ok = (
            isinstance(self.split, str) and isinstance(self.lmbda, int | float)
            and all(isinstance(v, int) and 1 <= v <= 1024 for v in (self.N, self.M))
            and isinstance(self.tile, int) and self.tile % 64 == 0 and 64 <= self.tile <= 16384
            and self.weights_dtype in WEIGHT_DTYPES
            and isinstance(self.checkpoint_id, str) and len(self.checkpoint_id) == 64
        )
        if not ok:
            raise CheckpointError(f"checkpoint config {where} has invalid fields")


def config_path(weights: Path) -> Path:
    """``q3.safetensors`` -> ``q3.json``."""
    return Path(weights).with_suffix(".json")


def state_path(weights: Path) -> Path:
    """``q3.safetensors`` -> ``q3.state.safetensors`` (resumable training state)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".state.safetensors")


def export_model(model: FeatureHyperprior, dtype: str) -> FeatureHyperprior:
    """A copy of ``model`` with weights rounded to ``dtype`` and CDF tables rebuilt for them."""
    out = FeatureHyperprior(model.N, model.M)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = {name for name, _ in model.named_parameters()}
    for name in params:
        state[name] = state[name].to(WEIGHT_DTYPES[dtype]).to(torch.float32)
    # CDF buffers of an un-updated model are empty; drop them and rebuild below.
    state = {k: v for k, v in state.items() if not _is_cdf_buffer(k)}
    torch.nn.Module.load_state_dict(out, state, strict=False)
    with torch.no_grad():
        out.update(force=True)
    return out.eval()


def _is_cdf_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("_quantized_cdf", "_offset", "_cdf_length")


_GC_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def _is_gc_table(name: str) -> bool:
    prefix, _, leaf = name.rpartition(".")
    return prefix == "gaussian_conditional" and leaf in _GC_TABLES


GAUSSIAN_TABLES = (Path(__file__).resolve().parents[1] / "codecs" / "checkpoints" / "hyperprior" / "_tables"
                   / "gaussian_conditional.safetensors")
"""The Gaussian-conditional CDF tables, shipped once for every checkpoint."""
GAUSSIAN_TABLES_SHA256 = "500a07407a543d4f7137685cbfa5999294fbd138a4a5cdb5fd39901b997ded83"
GAUSSIAN_TABLES_FORMAT = "splitfc-hyperprior-gaussian-tables"


def build_gaussian_tables() -> dict[str, torch.Tensor]:
    """The tables as CompressAI builds them (float exp/erfc, then its integer CDF quantizer).

    Used once to write `GAUSSIAN_TABLES` (see docs/hyperprior.md); never at load time, because the float maths
    may round differently with another maths library and the decoder must use the encoder's tables.
    """
    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(), force=True)
    return {k: getattr(gc, k).clone().contiguous() for k in _GC_TABLES}


def gaussian_tables_blob(tables: dict[str, torch.Tensor]) -> bytes:
    """The bytes of the tables file (safetensors with one metadata key, so the bytes are reproducible)."""
    return st_save(tables, metadata={"format": GAUSSIAN_TABLES_FORMAT})


@lru_cache(maxsize=1)
def _gaussian_tables() -> dict[str, torch.Tensor]:
    """The shipped Gaussian-conditional tables, checked against their sha256 (fixed constants, not learned)."""
    try:
        blob = GAUSSIAN_TABLES.read_bytes()
    except OSError as exc:
        raise CheckpointError(
            f"cannot read the Gaussian-conditional tables {GAUSSIAN_TABLES}: {exc.strerror}"
        ) from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != GAUSSIAN_TABLES_SHA256:
        raise CheckpointError(
            f"Gaussian-conditional tables {GAUSSIAN_TABLES} are corrupt: sha256 {digest[:12]}... is not "
            f"{GAUSSIAN_TABLES_SHA256[:12]}..."
        )
    tables = _load_tensors(blob, str(GAUSSIAN_TABLES))
    if set(tables) != set(_GC_TABLES):
        raise CheckpointError(f"{GAUSSIAN_TABLES} does not hold the tables {_GC_TABLES}")
    return {f"gaussian_conditional.{k}": v for k, v in tables.items()}


def save_checkpoint(model: FeatureHyperprior, cfg: HyperpriorConfig, weights: Path) -> HyperpriorConfig:
    """Write ``weights`` (.safetensors) and its JSON config; return the config with its id set.

    ``model`` must come from `export_model` (rounded weights, CDF tables built).
    """
    params = {name for name, _ in model.named_parameters()}
    tensors = {
        k: (v.to(WEIGHT_DTYPES[cfg.weights_dtype]) if k in params else v).contiguous()
        for k, v in model.state_dict().items()
        if not _is_gc_table(k)
    }
    blob = st_save(tensors, metadata={"format": CONFIG_FORMAT, "split": cfg.split})
    cfg.checkpoint_id = hashlib.sha256(blob).hexdigest()
    weights = Path(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(blob)
    config_path(weights).write_text(cfg.to_json())
    return cfg


def load_checkpoint(weights: Path, expect_split: str | None = None) -> tuple[FeatureHyperprior, HyperpriorConfig]:
    """Load a checkpoint safely; ``expect_split`` refuses one trained for another split."""
    weights = Path(weights)
    cfg_file = config_path(weights)
    try:
        blob = weights.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no hyperprior checkpoint at {weights}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {weights}: {exc.strerror}") from None
    try:
        cfg_text = cfg_file.read_text()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {weights} has no config {cfg_file.name} beside it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint config {cfg_file}: {exc}") from None
    cfg = HyperpriorConfig.from_json(cfg_text, str(cfg_file))
    if expect_split is not None and cfg.split != expect_split:
        raise CheckpointError(
            f"checkpoint {weights} was trained for split {cfg.split}, not {expect_split}"
        )
    digest = hashlib.sha256(blob).hexdigest()
    if digest != cfg.checkpoint_id:
        raise CheckpointError(
            f"checkpoint {weights} is corrupt: sha256 {digest[:12]}... does not match its config "
            f"({cfg.checkpoint_id[:12]}...)"
        )
    tensors = _load_tensors(blob, str(weights))
    model = FeatureHyperprior(cfg.N, cfg.M)
    params = {name for name, _ in model.named_parameters()}
    expected = {k for k in model.state_dict() if not _is_gc_table(k)}
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        extra = sorted(set(tensors) - expected)[:3]
        raise CheckpointError(
            f"checkpoint {weights} does not match N={cfg.N} M={cfg.M} (missing {missing}, extra {extra})"
        )
    state = {k: (v.to(torch.float32) if k in params else v) for k, v in tensors.items()}
    state.update(_gaussian_tables())
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {weights} does not fit the architecture: {str(exc)[:200]}") from None
    model.eval().prepare_coding()  # the integer h_s, float64 g_s and index thresholds, derived once here
    return model, cfg


def _load_tensors(blob: bytes, where: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where} is not a safetensors file: {exc}") from None


def save_state(path: Path, model: FeatureHyperprior, optimizers: dict[str, torch.optim.Optimizer],
               meta: dict[str, Any]) -> None:
    """Write resumable training state: full-precision weights and Adam moments (safetensors)."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()
                                        if not _is_cdf_buffer(k)}
    names = {id(p): n for n, p in model.named_parameters()}
    for opt_name, opt in optimizers.items():
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state.get(p)
                if not st:
                    continue
                base = f"opt.{opt_name}.{names[id(p)]}"
                tensors[f"{base}.exp_avg"] = st["exp_avg"].contiguous()
                tensors[f"{base}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
                tensors[f"{base}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(st_save(tensors, metadata={"meta": json.dumps(meta, sort_keys=True)}))
    tmp.replace(path)


def load_state(path: Path, model: FeatureHyperprior, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore what `save_state` wrote into ``model`` and ``optimizers``; return its metadata."""
    from safetensors import safe_open

    path = Path(path)
    blob = path.read_bytes()
    tensors = _load_tensors(blob, str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    except (SafetensorError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"training state {path} is unreadable: {exc}") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        torch.nn.Module.load_state_dict(model, model_state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"training state {path} does not fit the model: {str(exc)[:200]}") from None
    params = dict(model.named_parameters())
    for opt_name, opt in optimizers.items():
        for group in opt.param_groups:
            for p in group["params"]:
                name = next(n for n, q in params.items() if q is p)
                base = f"opt.{opt_name}.{name}"
                if f"{base}.exp_avg" in tensors:
                    opt.state[p] = {
                        "step": tensors[f"{base}.step"].reshape(()).clone(),
                        "exp_avg": tensors[f"{base}.exp_avg"].clone(),
                        "exp_avg_sq": tensors[f"{base}.exp_avg_sq"].clone(),
                    }
    return meta
