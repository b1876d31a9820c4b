"""``splitfc fit-codec``: fit the ``native`` codec's channel transform (KLT / PCA) of a split.

Features come from the split model's head on at most 100 of the preset's TRAINING samples (the set
disjoint from the held-back samples that ``splitfc bench`` scores; `splitfc.common.models.preset_samples`
with ``train=True``, as ``splitfc feature-ranges`` uses), or from ``--features DIR`` (``splitfc extract
--train``). The artefact is `splitfc.common.codecs.native_transform`'s; ``--held-back N`` also measures the
energy compaction and coding gain on N held-back samples.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import PRESET_HELP

ORDER = 41
CODECS = ("native",)
COMPACTION_KS = (1, 2, 4, 8, 16, 32, 64, 128)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-codec",
        help="fit the native codec's channel transform (mean + PCA) on a split's training features",
    )
    p.add_argument("--codec", default="native", help="codec to fit (only: native)")
    p.add_argument("--split", required=True, help="split id, e.g. dinov2-cls")
    p.add_argument("--preset", default="tiny", help=f"{PRESET_HELP} (default tiny)")
    p.add_argument("--samples", type=int, default=100, metavar="N",
                   help="training samples run through the head, 1-100 (default 100; ignored with --features)")
    p.add_argument("--features", type=Path, metavar="DIR",
                   help="fit on this folder of .npy TRAINING features instead (splitfc extract --train)")
    p.add_argument("--held-back", type=int, default=0, metavar="N",
                   help="also measure energy compaction and coding gain on N held-back samples (default 0)")
    p.add_argument("-o", "--output", type=Path, metavar="PATH",
                   help="folder to write <split>.c<C>.<id>.safetensors into, or a .safetensors file "
                        "(default: SPLITFC_NATIVE_TRANSFORM_DIR, else ./native-transforms)")
    p.add_argument("--measure", metavar="TRANSFORM",
                   help="fit nothing: measure this transform (id or artefact path, e.g. fitted on another split) "
                        "on --held-back N held-back samples of --split (paper Table 6)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the fit and measurements as JSON")
    p.set_defaults(func=cmd_fit_codec)


def _check_args(args: argparse.Namespace) -> None:
    if args.codec not in CODECS:
        raise SplitfcError(f"fit-codec fits only {', '.join(CODECS)}, got codec {args.codec!r}")
    if not 1 <= args.samples <= 100:
        raise SplitfcError(f"--samples must be 1-100 (issue 15: at most 100 training samples), got {args.samples}")
    if args.held_back < 0:
        raise SplitfcError(f"--held-back must be >= 0, got {args.held_back}")
    if args.output is not None and args.output.exists() and not args.output.is_dir() \
            and args.output.suffix != ".safetensors":
        raise SplitfcError(f"-o must be a folder or a .safetensors file, got {args.output}")


def _command_line(args: argparse.Namespace) -> str:
    parts = ["splitfc", "fit-codec", "--codec", args.codec, "--split", args.split, "--preset", args.preset]
    parts += ["--features", str(args.features)] if args.features is not None else ["--samples", str(args.samples)]
    return shlex.join(parts)


def cmd_fit_codec(args: argparse.Namespace) -> int:
    from splitfc.common.models import check_preset
    from splitfc.common.specs import get_split

    _check_args(args)
    check_preset(args.preset)
    spec = get_split(args.split)
    if args.measure is not None:
        rows = _measure_only(args, spec)
    else:
        rows = _fit(args, spec)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _fit(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    import numpy as np

    from splitfc.common.codecs import native_transform as nt
    from splitfc.common.settings import native_transform_settings

    moments: nt.ChannelMoments | None = None
    count = 0
    for features in _training_features(args, spec):
        obs = nt.feature_observations(features, spec)
        if moments is None:
            moments = nt.ChannelMoments(obs.shape[1])
        moments.add(obs)
        count += 1
    assert moments is not None  # at least one sample or file (checked where they are listed)
    mean, basis, variances = nt.fit_channel_transform(moments)
    source = (f"{count} feature files in {args.features}" if args.features is not None
              else f"{count} {args.preset} training samples")
    meta = {"preset": args.preset, "samples": count, "observations": moments.count, "source": source,
            "command": _command_line(args)}
    output = args.output
    if output is None:
        output = native_transform_settings().native_transform_dir or Path("native-transforms")
    if output.suffix == ".safetensors":
        transform = nt.save_native_transform(output.parent, spec.id, mean, basis, variances, meta, output=output)
    else:
        transform = nt.save_native_transform(output, spec.id, mean, basis, variances, meta)
    rows: dict[str, Any] = {
        "split": spec.id, "preset": args.preset, "transform_id": transform.hex_id, "path": str(transform.path),
        "channels": transform.channels, "samples": count, "observations": moments.count, "source": source,
        "bytes": transform.path.stat().st_size if transform.path else None,
        "training": _measures(variances, np.diag(moments.mean_covariance()[1])),
    }
    print(f"{spec.id} ({args.preset}): native transform {transform.hex_id} ({transform.channels} channels, "
          f"{source}, {moments.count} observations)")
    print(f"wrote {transform.path} ({rows['bytes']} bytes)")
    print(_format("training", rows["training"]))
    if args.held_back:
        rows["held_back"] = _held_back(args, spec, transform)
    searched = [d.resolve() for d in nt.transform_dirs()]
    if transform.path is not None and transform.path.parent.resolve() not in searched:
        print(f"the native codec finds it with SPLITFC_NATIVE_TRANSFORM_DIR={transform.path.parent} "
              f"(SPLITFC_NATIVE_TRANSFORM={transform.path} forces it on every {transform.channels}-channel split)",
              file=sys.stderr)
    return rows


def _measure_only(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """``--measure TRANSFORM``: no fit; that transform's compaction on this split's held-back samples
    (paper Table 6: fitted on one split, applied to another)."""
    from splitfc.common.codecs import native_transform as nt

    if not args.held_back:
        raise SplitfcError("--measure needs --held-back N (the held-back samples it is measured on)")
    value = args.measure.strip()
    if nt.HEX_ID.match(value):
        transform = nt.get_native_transform(bytes.fromhex(value), honour_override=False)
    else:
        transform = nt.load_native_transform(Path(value).expanduser())
    print(f"{spec.id} ({args.preset}): measuring native transform {transform.hex_id} (fitted on "
          f"{transform.split_id}, {transform.channels} channels)")
    return {"split": spec.id, "preset": args.preset, "transform_id": transform.hex_id,
            "fitted_on": transform.split_id, "channels": transform.channels,
            "held_back": _held_back(args, spec, transform)}


def _held_back(args: argparse.Namespace, spec: Any, transform: Any) -> dict[str, Any]:
    """Compaction and coding gain of ``transform``'s components on ``--held-back`` held-back samples
    (variances about the held-back mean, components in the fitted order)."""
    import numpy as np

    from splitfc.common.codecs.native_transform import ChannelMoments, feature_observations

    held = ChannelMoments(transform.channels)
    count = 0
    for features in _head_features(args, spec, args.held_back, train=False):
        obs = feature_observations(features, spec)
        if obs.shape[1] != transform.channels:
            raise SplitfcError(f"transform {transform.hex_id} has {transform.channels} channels, split {spec.id} "
                               f"({args.preset}) features have {obs.shape[1]}")
        held.add(obs)
        count += 1
    _, cov = held.mean_covariance()
    components = np.einsum("ij,jk,ik->i", transform.basis, cov, transform.basis)
    rows = {"samples": count, "observations": held.count, **_measures(components, np.diag(cov))}
    print(_format(f"held-back ({count} samples)", rows))
    return rows


def _measures(components: Any, channel_variances: Any) -> dict[str, Any]:
    """Energy compaction (fraction of variance in the first K components, in the fitted order) and coding
    gains (arithmetic / geometric mean of variances) of the components and of the untransformed channels."""
    from splitfc.common.codecs.native_transform import coding_gain, energy_compaction

    ks = tuple(k for k in COMPACTION_KS if k <= len(components))
    return {
        "compaction": {str(k): v for k, v in energy_compaction(components, ks).items()},
        "coding_gain": coding_gain(components),
        "channel_coding_gain": coding_gain(channel_variances),
    }


def _format(label: str, m: dict[str, Any]) -> str:
    top = "  ".join(f"K={k}: {v:.3f}" for k, v in m["compaction"].items())
    return (f"{label}: variance in the top K components: {top}; coding gain {m['coding_gain']:.2f} "
            f"(channels without the transform: {m['channel_coding_gain']:.2f})")


def _training_features(args: argparse.Namespace, spec: Any):
    """The training feature tensors, one at a time."""
    if args.features is not None:
        from splitfc.common.learned.data import feature_files, load_features

        files = feature_files(args.features)[:100]
        for f in files:
            x = load_features(f)
            spec.check_shape(x.shape)
            yield x
        return
    yield from _head_features(args, spec, args.samples, train=True)


def _head_features(args: argparse.Namespace, spec: Any, n: int, train: bool):
    from splitfc.common.models import get_split_model, preset_samples

    model = get_split_model(spec.id, args.preset)
    samples = preset_samples(spec.id, n, args.preset, train=train)
    if not samples:
        raise SplitfcError(f"split {spec.id} ({args.preset}) has no {'training' if train else 'held-back'} samples")
    for s in samples:
        yield model.head(s.inputs)
