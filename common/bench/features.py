"""Where the benchmark's features come from: extracted here, or read from a folder.

Two folder layouts are read:

* ``splitfc extract`` output: ``DIR/<split-id>/*.npy`` (a ``manifest.json`` beside
  them is optional), e.g. ``DIR/dinov2-cls/0000.npy``, or ``DIR`` itself when its
  ``manifest.json`` names the split;
* the paper's dataset (LaMoFC / FCM-LM): ``DIR/<model>/<task>/feature_test/*.npy``,
  e.g. ``DIR/dinov2/cls/feature_test/*.npy``, ``DIR/llama3/csr/feature_test``.

Samples are the ``.npy`` files sorted by name; the first ``n`` are used.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.bench.cache import atomic_write_bytes, file_sha256, safe_name
from splitfc.common.bench.identity import models_identity
from splitfc.common.errors import SplitfcError
from splitfc.common.specs import get_split

MANIFEST = "manifest.json"
"""Same name and ``files`` entries as ``splitfc extract`` writes."""


@dataclass(frozen=True)
class FeatureFile:
    """One sample's feature tensor on disk."""

    split: str
    sample: str
    path: Path
    sha256: str


def find_feature_dir(root: Path, split_id: str) -> Path | None:
    """The folder of a split's ``.npy`` files under ``root`` in either layout, or None."""
    spec = get_split(split_id)
    for candidate in (root / split_id, root / spec.family / spec.task / "feature_test"):
        if candidate.is_dir() and any(candidate.glob("*.npy")):
            return candidate
    if _manifest(root).get("split") == split_id and any(root.glob("*.npy")):
        return root
    return None


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_feature_dir(root: Path, split_id: str, n: int) -> list[FeatureFile]:
    """The first ``n`` feature files of a split under ``root``; errors name both layouts."""
    if not root.is_dir():
        raise SplitfcError(f"features folder not found: {root}")
    folder = find_feature_dir(root, split_id)
    if folder is None:
        spec = get_split(split_id)
        raise SplitfcError(
            f"no .npy features for {split_id} under {root} "
            f"(looked in {split_id}/ and {spec.family}/{spec.task}/feature_test/)"
        )
    files = sorted(folder.glob("*.npy"))[:n]
    return [FeatureFile(split_id, p.stem, p, file_sha256(p)) for p in files]


def extract_features(out_dir: Path, split_id: str, preset: str, n: int) -> list[FeatureFile]:
    """Run the split model's head on ``n`` samples of ``preset`` (`task.samples`); write ``<sample>.npy``
    + manifest.json (each file's entry keeps the sample's ground-truth ``target`` where it has one).

    Files already there from an earlier run of the same (split, preset) are reused
    unchanged, so a resumed benchmark sees the same feature hashes.
    """
    from splitfc.common.bench import task

    folder = out_dir / split_id
    manifest = _manifest(folder)
    known: dict[str, dict[str, Any]] = {}
    models = models_identity()
    if (manifest.get("preset"), manifest.get("split"), manifest.get("models")) == (preset, split_id, models):
        known = {f["file"]: f for f in manifest.get("files", []) if isinstance(f, dict) and "file" in f}
    if preset not in ("tiny", "small"):
        raise SplitfcError(
            f"the {preset} preset has no built-in samples here: extract features with the real data and pass "
            f"--features DIR"
        )
    samples = task.samples(split_id, n, preset)
    model = None
    result: list[FeatureFile] = []
    files: list[dict[str, Any]] = []
    for sample in samples:
        name = safe_name(str(sample.id))
        path = folder / f"{name}.npy"
        entry = known.get(path.name)
        if not (path.exists() and entry is not None and entry.get("id") == str(sample.id)):
            if model is None:
                model = task.split_model(split_id, preset)
            features = np.ascontiguousarray(model.head(sample.inputs))
            buf = io.BytesIO()
            np.save(buf, features, allow_pickle=False)
            atomic_write_bytes(path, buf.getvalue())
            entry = {"file": path.name, "id": str(sample.id), "shape": list(features.shape)}
            if isinstance(sample.target, int | np.integer):
                entry["target"] = int(sample.target)
        files.append(entry)
        result.append(FeatureFile(split_id, name, path, file_sha256(path)))
    source = "built-in samples" if preset == "tiny" else f"{preset} preset samples (held back)"
    manifest = {"split": split_id, "preset": preset, "source": source, "models": models, "files": files}
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=2).encode())
    return result


def feature_targets(folder: Path) -> dict[str, int]:
    """Ground-truth class/answer indices by sample name from a features folder's manifest (``{}`` if none)."""
    targets: dict[str, int] = {}
    for entry in _manifest(folder).get("files", []):
        if isinstance(entry, dict) and isinstance(entry.get("target"), int) and isinstance(entry.get("file"), str):
            targets[Path(entry["file"]).stem] = entry["target"]
    return targets
