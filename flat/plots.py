"""Figures of the demo: a reconstruction panel and the PSNR of every cascade (the trajectory).

Matplotlib with the non-interactive Agg backend; each PNG is written atomically.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    from flat.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def recon_panel(path: str | os.PathLike, target, recons: Mapping[str, object],
                scores: Mapping[str, str] | None = None, title: str | None = None,
                error_scale: float = 5.0) -> None:
    """Row 1: target and each reconstruction (h, w) on one grey scale; row 2: |error| × ``error_scale``.

    ``recons``: name -> (h, w) array; ``scores``: name -> caption (e.g. "31.2 dB").
    """
    import numpy as np

    plt = _figure()
    target = np.asarray(target, dtype=np.float32)
    vmax = float(np.percentile(target, 99.5)) or 1.0
    n = len(recons) + 1
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6))
    axes[0, 0].imshow(target, cmap="gray", vmin=0, vmax=vmax)
    axes[0, 0].set_title("target (fully sampled)", fontsize=9)
    axes[1, 0].axis("off")
    axes[1, 0].text(0.5, 0.5, f"|error| x {error_scale:g}", ha="center", va="center", fontsize=9,
                    transform=axes[1, 0].transAxes)
    for j, (name, img) in enumerate(recons.items(), start=1):
        img = np.asarray(img, dtype=np.float32)
        cap = f"{name}\n{scores[name]}" if scores and name in scores else name
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(cap, fontsize=9)
        axes[1, j].imshow(np.abs(img - target) * error_scale, cmap="gray", vmin=0, vmax=vmax)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def psnr_per_cascade(path: str | os.PathLike, curves: Mapping[str, Sequence[float]],
                     baselines: Mapping[str, float] | None = None, title: str | None = None) -> None:
    """PSNR (dB) of x_0 … x_K for each model (x_0 = Aᴴy), with baselines as horizontal lines."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    markers = iter("osd^v<>")
    for name, ys in curves.items():
        ax.plot(range(len(ys)), list(ys), marker=next(markers), label=name)
    styles = iter([":", "--", "-."])
    for name, y in (baselines or {}).items():
        ax.axhline(y, color="gray", linestyle=next(styles, "--"), linewidth=1, label=name)
    ax.set_xlabel("cascade k (state x_k; k = 0 is the zero-filled SENSE image)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
