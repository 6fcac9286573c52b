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

from flat.io import atomic_path
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
    """:func:`flat.metrics.evaluate_folders`, after checking that ``json_file`` (where the caller
    will write the result) is not a folder -- before any volume is read."""
    if json_file is not None and Path(json_file).is_dir():
        raise ValueError(f"--json {json_file}: is a folder, expected a file name")
    return evaluate_folders(predictions, targets, data_range=data_range, progress=progress)


def write_json(result: dict, path: str | os.PathLike) -> None:
    """The result as strict JSON (infinities as null), written whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(result), indent=2, sort_keys=True) + "\n")
