"""Plots (matplotlib, Agg): rate-accuracy per split and rate-accuracy-drop per codec.

``rate_accuracy.{png,svg}``: one panel per split, every codec's metric vs BPFP
(log axis), the Original metric as a dashed line. ``rate_accuracy_drop.{png,svg}``:
one panel per codec (paper Fig. 5), AD vs BPFP with one line per split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ORIGINAL = "original"


def _label(split: str) -> str:
    from splitfc.common.tasks import task_of

    return task_of(split).label


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _log_x(ax: Any) -> None:
    """Log BPFP axis with plain-number labels (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    wide = lo > 0 and hi / lo > 200  # more than about two decades: decades only
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def plot_rate_accuracy(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    splits = results["config"]["splits"]
    codecs = results["config"]["codecs"]
    rows, cols = _grid(len(splits))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, split in zip(axes.flat, splits, strict=False):
        pts = [p for p in results["points"] if p["split"] == split]
        name = results["metrics"][split]["name"]
        for codec in codecs:
            curve = sorted((p for p in pts if p["codec"] == codec and p["metric"] is not None and p["bpfp"] > 0),
                           key=lambda p: p["bpfp"])
            if curve:
                ax.plot([p["bpfp"] for p in curve], [p["metric"] for p in curve], marker="o", label=codec)
        orig = next((p for p in pts if p["codec"] == ORIGINAL and p["metric"] is not None), None)
        # The Original PSNR is a cap (identical images), not a level worth a line.
        if orig is not None and math.isfinite(orig["metric"]) and name != "PSNR":
            ax.axhline(orig["metric"], color="grey", linestyle="--", linewidth=1, label="original")
        _log_x(ax)
        ax.set_title(f"{_label(split)} ({split})")
        ax.set_xlabel("BPFP")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(splits):]:
        ax.axis("off")
    fig.suptitle(f"Rate-accuracy ({results['config']['preset']} preset)")
    fig.tight_layout()
    paths = _save(fig, out_dir, "rate_accuracy")
    plt.close(fig)
    return paths


def plot_rate_accuracy_drop(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    splits = results["config"]["splits"]
    codecs = [c for c in results["config"]["codecs"]
              if any(p["codec"] == c and p.get("accuracy_drop") is not None for p in results["points"])]
    if not codecs:
        return []
    fig, axes = plt.subplots(1, len(codecs), figsize=(4.2 * len(codecs), 3.3), squeeze=False)
    for ax, codec in zip(axes.flat, codecs, strict=True):
        for split in splits:
            curve = sorted((p for p in results["points"] if p["split"] == split and p["codec"] == codec
                            and p.get("accuracy_drop") is not None and p["bpfp"] > 0), key=lambda p: p["bpfp"])
            if curve:
                ax.plot([p["bpfp"] for p in curve], [p["accuracy_drop"] for p in curve], marker="o",
                        label=_label(split))
        _log_x(ax)
        ax.set_title(codec)
        ax.set_xlabel("BPFP")
        ax.set_ylabel("accuracy drop (%)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Rate-accuracy-drop (Dpt via 1/RMSE)")
    fig.tight_layout()
    paths = _save(fig, out_dir, "rate_accuracy_drop")
    plt.close(fig)
    return paths


def plot_all(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write both figures as PNG and SVG; return the paths."""
    return plot_rate_accuracy(results, out_dir) + plot_rate_accuracy_drop(results, out_dir)
