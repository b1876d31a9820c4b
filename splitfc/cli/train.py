"""Learned-codec commands: ``train-codec``, ``eval-codec`` and ``generalize`` (paper Table 6)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import PRESET_HELP

ORDER = 40


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-codec", help="train a hyperprior checkpoint on extracted features (loss BPFP + λ·MSE)")
    p.add_argument("--split", required=True, help="split id the features belong to, e.g. dinov2-cls")
    p.add_argument("--lambda", dest="lmbda", type=float, required=True, help="λ of BPFP + λ·MSE (feature-domain MSE)")
    p.add_argument("--features", type=Path, required=True, help="folder of <id>.npy features (splitfc extract --train)")
    p.add_argument("--val-features", type=Path, help="validation folder (default: every 8th training file held out)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--patch", type=int, default=64, help="random crop size in frame pixels (default 64)")
    p.add_argument("--batch", type=int, default=8, help="crops per step (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--N", type=int, default=32, help="hyperprior channels N (default 32)")
    p.add_argument("--M", type=int, default=32, help="hyperprior channels M (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, choices=range(1, 6), help="quality index this λ serves (recorded)")
    p.add_argument("--init", type=Path, help="start from this checkpoint of the same split (e.g. the next quality up)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored weight dtype")
    p.add_argument("--save-every", type=int, default=250, help="write resumable state every N steps")
    p.add_argument("--resume", action="store_true", help="continue from CKPT's .state.safetensors if present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", type=Path, required=True, help="checkpoint path (.safetensors; .json beside)")
    p.set_defaults(func=cmd_train_codec)

    for name, helptext in (
        ("eval-codec", "code a split's features with its hyperprior checkpoints: BPFP, MSE, task metric, time"),
        ("generalize", "code a split's features with checkpoints trained on another split (paper Table 6)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--split", required=True, help="split of the features to code")
        if name == "generalize":
            p.add_argument("--trained-on", required=True, help="split whose checkpoints code them")
        p.add_argument("--features", type=Path, required=True, help="folder of <id>.npy features (splitfc extract)")
        p.add_argument("--qualities", default="1,2,3,4,5", help="comma-separated quality indexes")
        p.add_argument("--checkpoints", type=Path, help="checkpoint folder (default: SPLITFC_HYPERPRIOR_DIR/shipped)")
        p.add_argument("--limit", type=int, help="code at most this many feature files")
        p.add_argument("--no-task", action="store_true", help="skip the task metric")
        p.add_argument("--preset", default="tiny",
                       help=f"{PRESET_HELP}; scores the task (default tiny)")
        p.add_argument("--json", type=Path, help="also write the rows as JSON here")
        p.set_defaults(func=cmd_eval)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["splitfc", "train-codec", "--split", args.split, "--lambda", f"{args.lmbda:g}",
             "--features", str(args.features), "--steps", str(args.steps), "--patch", str(args.patch),
             "--batch", str(args.batch), "--lr", f"{args.lr:g}", "--N", str(args.N), "--M", str(args.M),
             "--seed", str(args.seed), "--dtype", args.dtype]
    if args.val_features:
        parts += ["--val-features", str(args.val_features)]
    if args.quality:
        parts += ["--quality", str(args.quality)]
    if args.init:
        parts += ["--init", str(args.init)]
    return shlex.join([*parts, "-o", str(args.output)])


def cmd_train_codec(args: argparse.Namespace) -> int:
    from splitfc.common.learned.data import feature_files, load_frames
    from splitfc.common.learned.training import TrainOptions, train_codec
    from splitfc.common.specs import get_split

    spec = get_split(args.split)
    if args.steps <= 0 or args.patch < 64 or args.patch % 64 or args.batch <= 0 or args.save_every <= 0:
        raise SplitfcError("--steps, --batch and --save-every must be positive, --patch a multiple of 64")
    if not args.lmbda >= 0:
        raise SplitfcError("--lambda must be >= 0")
    if args.output.suffix != ".safetensors":
        raise SplitfcError(f"checkpoint path must end in .safetensors, got {args.output}")
    files = feature_files(args.features)
    if args.val_features:
        train_files, val_files = files, feature_files(args.val_features)
    elif len(files) >= 2:
        val_files = files[::8]
        train_files = [f for f in files if f not in val_files]
    else:
        train_files, val_files = files, []
    print(f"{spec.id}: {len(train_files)} training / {len(val_files)} validation feature files", file=sys.stderr)
    opts = TrainOptions(
        split=spec.id, lmbda=args.lmbda, steps=args.steps, patch=args.patch, batch=args.batch, lr=args.lr,
        N=args.N, M=args.M, seed=args.seed, weights_dtype=args.dtype, save_every=args.save_every,
        quality=args.quality, init=args.init, command=_command_line(args),
    )
    cfg = train_codec(opts, load_frames(train_files, spec), load_frames(val_files, spec), args.output,
                      resume=args.resume, progress=not args.no_progress)
    print(f"{args.output}: checkpoint {cfg.checkpoint_id[:12]} ({spec.id}, λ={cfg.lmbda:g}, {cfg.steps} steps)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from splitfc.common.learned.evaluate import evaluate_checkpoints, format_table
    from splitfc.common.models import check_preset

    check_preset(args.preset)
    try:
        qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
    except ValueError:
        raise SplitfcError(f"--qualities must be comma-separated integers, got {args.qualities!r}") from None
    rows = evaluate_checkpoints(
        split=args.split, trained_on=getattr(args, "trained_on", None) or args.split, features=args.features,
        qualities=qualities, directory=args.checkpoints, limit=args.limit, task=not args.no_task,
        preset=args.preset,
    )
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0
