"""Two measurements behind docs/native_transform.md that ``splitfc fit-codec`` does not make (issue 15).

``layers``: small dinov2-dpt, the shipped transform (one for the 4 layers pooled) against one fitted per
layer on the same 100 training samples: held-back coding gain per layer (20 held-back samples).
``textile``: small dinov2-seg / dinov2-dpt fitted on the small Cls training photos (textile images)
instead of their own built-in training images, and an oracle fitted on the held-back features themselves.

    SPLITFC_TORCH_THREADS=1 .venv/bin/python deploy/native-transform-experiments.py layers
    SPLITFC_TORCH_THREADS=1 .venv/bin/python deploy/native-transform-experiments.py textile
"""

from __future__ import annotations

import argparse

import numpy as np

from splitfc.common.codecs import native_transform as nt
from splitfc.common.models import get_split_model, preset_samples
from splitfc.common.specs import get_split

KS = (1, 4, 16, 64, 128)


def components(basis: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Variances of the components ``basis @ x`` under covariance ``cov``."""
    return np.einsum("ij,jk,ik->i", basis, cov, basis)


def layers(train_n: int, held_n: int) -> None:
    model = get_split_model("dinov2-dpt", "small")
    pooled = nt.find_native_transform("dinov2-dpt", 384, honour_override=False)
    assert pooled is not None, "no shipped small dinov2-dpt transform"
    train = [nt.ChannelMoments(384) for _ in range(4)]
    held = [nt.ChannelMoments(384) for _ in range(4)]
    for moments, train_flag, n in ((train, True, train_n), (held, False, held_n)):
        for s in preset_samples("dinov2-dpt", n, "small", train=train_flag):
            f = model.head(s.inputs)  # views x layers x tokens x channels
            for layer in range(4):
                moments[layer].add(f[:, layer].reshape(-1, 384))
    for layer in range(4):
        _, basis, _ = nt.fit_channel_transform(train[layer])
        _, cov = held[layer].mean_covariance()
        print(f"layer {layer}: held-back variance {np.trace(cov):.1f}; coding gain: per-layer fit "
              f"{nt.coding_gain(components(basis, cov)):.2f}, pooled (shipped) "
              f"{nt.coding_gain(components(pooled.basis, cov)):.2f}, channels {nt.coding_gain(np.diag(cov)):.2f}")


def textile(train_n: int, held_n: int) -> None:
    for split in ("dinov2-seg", "dinov2-dpt"):
        spec = get_split(split)
        model = get_split_model(split, "small")
        fit = nt.ChannelMoments(384)
        for s in preset_samples("dinov2-cls", train_n, "small", train=True):
            fit.add(nt.feature_observations(model.head(s.inputs), spec))
        held = nt.ChannelMoments(384)
        for s in preset_samples(split, held_n, "small", train=False):
            held.add(nt.feature_observations(model.head(s.inputs), spec))
        _, basis, _ = nt.fit_channel_transform(fit)
        _, cov = held.mean_covariance()
        comp = components(basis, cov)
        _, _, oracle = nt.fit_channel_transform(held)
        fmt = lambda v: {k: round(x, 3) for k, x in nt.energy_compaction(v, KS).items()}  # noqa: E731
        print(f"{split}: fitted on {train_n} Cls training photos, on held-back: {fmt(comp)} coding gain "
              f"{nt.coding_gain(comp):.2f} (channels {nt.coding_gain(np.diag(cov)):.2f}); oracle (fitted on the "
              f"held-back): {fmt(oracle)} coding gain {nt.coding_gain(oracle):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("layers", "textile"))
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--held-back", type=int, default=20)
    args = parser.parse_args()
    (layers if args.what == "layers" else textile)(args.train, args.held_back)


if __name__ == "__main__":
    main()
