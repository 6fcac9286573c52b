"""fastMRI's image-quality metrics (``fastmri/evaluate.py``), on numpy volumes ``(S, H, W)``.

- ``nmse = ||gt - pred||^2 / ||gt||^2`` over the whole volume;
- ``psnr``: scikit-image's ``peak_signal_noise_ratio`` over the volume, ``data_range = maxval``;
- ``ssim``: scikit-image's ``structural_similarity`` per slice (7x7 uniform window, its defaults),
  ``data_range = maxval``, averaged over slices.

``maxval`` defaults to ``gt.max()`` as in fastMRI; :func:`evaluate_folders` uses the cropped target
volume's maximum by default, as fastMRI's ``evaluate.py`` does (or the file's ``max`` attribute).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from flat.data.fastmri import DataError, _open, list_h5_files
from flat.data.transforms import center_crop

METRICS = ("NMSE", "PSNR", "SSIM")


def _check(gt: np.ndarray, pred: np.ndarray, ndim: Optional[int] = None) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} does not match pred shape {pred.shape}")
    if ndim is not None and gt.ndim != ndim:
        raise ValueError(f"expected a volume of {ndim} dims (S, H, W), got shape {gt.shape}")


def mse(gt: np.ndarray, pred: np.ndarray) -> float:
    _check(gt, pred)
    return float(np.mean((gt - pred) ** 2))


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mean squared error of the whole volume."""
    _check(gt, pred)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def psnr(gt: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None) -> float:
    """Peak signal-to-noise ratio (dB) of the whole volume with ``data_range = maxval``."""
    _check(gt, pred)
    if maxval is None:
        maxval = gt.max()
    return float(peak_signal_noise_ratio(gt, pred, data_range=maxval))


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None) -> float:
    """Mean over slices of scikit-image's SSIM with ``data_range = maxval``."""
    _check(gt, pred, ndim=3)
    maxval = gt.max() if maxval is None else maxval
    total = np.array([0.0])
    for s in range(gt.shape[0]):
        total = total + structural_similarity(gt[s], pred[s], data_range=maxval)
    return float((total / gt.shape[0])[0])


def volume_metrics(gt: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None) -> dict:
    """``{"NMSE", "PSNR", "SSIM"}`` of one volume."""
    return {"NMSE": nmse(gt, pred), "PSNR": psnr(gt, pred, maxval), "SSIM": ssim(gt, pred, maxval)}


def crop_for_eval(target: np.ndarray, recon: np.ndarray):
    """fastMRI's evaluation crop: both volumes centre-cropped to ``(w, w)``, w the target width.

    A target taller than wide (fastMRI's own files are square) is cropped that way; a target
    wider than tall -- where fastMRI would fail -- is kept whole and the prediction cropped to it.
    """
    th, tw = target.shape[-2:]
    size = (tw, tw) if th >= tw else (th, tw)
    if recon.shape[-2] < size[0] or recon.shape[-1] < size[1]:
        raise ValueError(
            f"prediction of shape {recon.shape} is smaller than the target crop {size}"
        )
    return center_crop(target, size), center_crop(recon, size)


def evaluate_folders(
    predictions: Union[str, os.PathLike],
    targets: Union[str, os.PathLike],
    *,
    data_range: str = "volume",
    progress: bool = False,
) -> dict:
    """Metrics of every target volume against the prediction file of the same name.

    ``predictions``: a folder of submission files (dataset ``reconstruction``) or one file;
    ``targets``: a folder of fastMRI files (``reconstruction_rss``, attr ``max``) or one file.
    ``data_range``: ``"attr"`` uses each target's ``max`` attribute (falls back to the cropped
    target's maximum when absent), ``"volume"`` the cropped target's maximum (fastMRI's script).

    Returns ``{"volumes": {fname: {"NMSE", "PSNR", "SSIM", "slices"}}, "mean": {...},
    "num_volumes": n}``. Raises ``ValueError`` naming the file on a missing prediction, dataset or
    a shape mismatch.
    """
    if data_range not in ("attr", "volume"):
        raise ValueError(f"data_range must be 'attr' or 'volume', got {data_range!r}")
    pred_root, tgt_root = Path(predictions), Path(targets)
    if not pred_root.exists():
        raise DataError(f"{pred_root}: no such file or folder (predictions)")
    if not tgt_root.exists():
        raise DataError(f"{tgt_root}: no such file or folder (targets)")
    tgt_files = list_h5_files(tgt_root)
    if pred_root.is_file():
        if len(tgt_files) != 1:
            raise DataError(f"{pred_root}: a single prediction file needs a single target file")
        pairs = [(pred_root, tgt_files[0])]
    else:
        pairs = []
        for t in tgt_files:
            p = pred_root / t.name
            if not p.is_file():
                raise DataError(f"{p}: no prediction for target {t.name}")
            pairs.append((p, t))

    it = pairs
    if progress:
        it = tqdm(pairs, desc="eval", unit="vol", leave=False)
    volumes = {}
    for p, t in it:
        with _open(t) as hf:
            if "reconstruction_rss" not in hf:
                raise DataError(f"{t}: missing dataset 'reconstruction_rss'")
            try:
                target = np.asarray(hf["reconstruction_rss"][()])  # dtype as stored, as fastMRI
            except OSError as exc:
                raise DataError(f"{t}: cannot read 'reconstruction_rss' (truncated?): {exc}") from None
            attr_max = hf.attrs.get("max")
        with _open(p) as hf:
            if "reconstruction" not in hf:
                raise DataError(f"{p}: missing dataset 'reconstruction'")
            try:
                recon = np.asarray(hf["reconstruction"][()])
            except OSError as exc:
                raise DataError(f"{p}: cannot read 'reconstruction' (truncated?): {exc}") from None
        if target.ndim != 3 or recon.ndim != 3 or recon.shape[0] != target.shape[0]:
            raise DataError(
                f"{p}: reconstruction shape {recon.shape} does not match target {target.shape} "
                "(need (S, H, W) with the same number of slices)"
            )
        try:
            tc, rc = crop_for_eval(target, recon)
        except ValueError as exc:
            raise DataError(f"{p}: {exc}") from None
        maxval = float(attr_max) if (data_range == "attr" and attr_max is not None) else float(tc.max())
        m = volume_metrics(tc, rc, maxval)
        m["slices"] = int(target.shape[0])
        volumes[t.name] = m
    mean = {k: float(np.mean([v[k] for v in volumes.values()])) for k in METRICS}
    return {"volumes": volumes, "mean": mean, "num_volumes": len(volumes), "data_range": data_range}


def format_table(result: dict) -> str:
    """A plain-text table of per-volume and mean metrics."""
    names = list(result["volumes"]) + ["mean"]
    width = max([len(n) for n in names] + [6])
    lines = [f"{'volume':<{width}}  {'NMSE':>9}  {'PSNR':>7}  {'SSIM':>7}"]
    for n, m in list(result["volumes"].items()) + [("mean", result["mean"])]:
        if n == "mean":
            lines.append("-" * len(lines[0]))
        psnr_s = f"{m['PSNR']:7.2f}" if math.isfinite(m["PSNR"]) else f"{m['PSNR']:>7}"
        lines.append(f"{n:<{width}}  {m['NMSE']:9.5f}  {psnr_s}  {m['SSIM']:7.4f}")
    return "\n".join(lines)
