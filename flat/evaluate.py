"""Evaluate a folder of reconstructions: fastMRI's NMSE / PSNR / SSIM per volume and mean
(``flat eval``).

PREDICTIONS: a folder of submission files (dataset ``reconstruction``, one file per volume, named
like the target) or one file. TARGETS: fastMRI files with ``reconstruction_rss`` and attr ``max``
(folder or one file). Both volumes are centre-cropped as fastMRI's ``evaluate.py`` does, and the
data range is the cropped target volume's maximum, as there (``data_range="attr"``: the target's
``max`` attribute instead; the two agree on fastMRI's own files). Definitions: :mod:`flat.metrics`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from flat.data.fastmri import DataError, _open, list_h5_files, nonfinite_slices
from flat.io import atomic_path, check_writable_file
from flat.metrics import evaluate_folders


def _finite(obj):
    # strict JSON has no Infinity (PSNR of a perfect reconstruction): write null instead
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def evaluate(predictions: str | os.PathLike, targets: str | os.PathLike, *,
             json_file: str | os.PathLike | None = None, data_range: str = "volume",
             progress: bool = False) -> dict:
    """:func:`flat.metrics.evaluate_folders`, after checking, before any metric is computed, that
    ``json_file`` (where the caller will write the result) can be written and that every
    prediction and target is finite (a NaN would turn every metric into ``nan``)."""
    if json_file is not None:
        check_writable_file(json_file, "--json")
    for path, name in _files(Path(predictions), Path(targets)):
        with _open(path) as hf:
            shape = hf[name].shape if name in hf else None
        if shape is not None and (len(shape) != 3 or min(shape) < 1):
            raise DataError(f"{path}: '{name}' has shape {shape}; expected (S, H, W), all >= 1")
        bad = nonfinite_slices(path, name)
        if bad:
            s, n = next(iter(bad.items()))
            raise DataError(f"{path}: slice {s} of '{name}' holds {n} non-finite value(s) (NaN/Inf)"
                            f"{f' ({len(bad)} slices in all)' if len(bad) > 1 else ''}; expected finite "
                            f"{'predictions' if name == 'reconstruction' else 'targets'}")
    return evaluate_folders(predictions, targets, data_range=data_range, progress=progress)


def _files(pred: Path, tgt: Path) -> list[tuple[Path, str]]:
    """The (file, dataset) pairs :func:`flat.metrics.evaluate_folders` will read; missing ones are
    left for it to report."""
    if not pred.exists() or not tgt.exists():
        return []
    targets = list_h5_files(tgt)
    preds = [pred] if pred.is_file() else [pred / t.name for t in targets if (pred / t.name).is_file()]
    return [(t, "reconstruction_rss") for t in targets] + [(p, "reconstruction") for p in preds]


def write_json(result: dict, path: str | os.PathLike) -> None:
    """The result as strict JSON (infinities as null), written whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(result), indent=2, sort_keys=True) + "\n")
