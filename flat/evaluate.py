"""``flat eval PREDICTIONS TARGETS [--json FILE]``: fastMRI's NMSE / PSNR / SSIM per volume and mean.

PREDICTIONS: a folder of submission files (dataset ``reconstruction``, one file per volume, named
like the target) or one file. TARGETS: fastMRI files with ``reconstruction_rss`` and attr ``max``
(folder or one file). Both volumes are centre-cropped as fastMRI's ``evaluate.py`` does, and the
data range is the cropped target volume's maximum, as there (``--data-range attr``: the target's
``max`` attribute instead; the two agree on fastMRI's own files). Definitions: :mod:`flat.metrics`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", metavar="PREDICTIONS", type=Path,
                        help="folder (or file) of reconstructions (dataset 'reconstruction')")
    parser.add_argument("targets", metavar="TARGETS", type=Path,
                        help="folder (or file) of fastMRI files with 'reconstruction_rss'")
    parser.add_argument("--json", metavar="FILE", type=Path, default=None,
                        help="also write the per-volume and mean metrics as JSON")
    parser.add_argument("--data-range", choices=("attr", "volume"), default="volume",
                        help="SSIM/PSNR data range: the cropped target's max (default, as fastMRI's evaluate.py) or its 'max' attr")


def _finite(obj):
    # strict JSON has no Infinity (PSNR of a perfect reconstruction): write null instead
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run(args: argparse.Namespace) -> int:
    from flat.io import atomic_path
    from flat.metrics import evaluate_folders, format_table

    if args.json is not None and args.json.is_dir():
        raise ValueError(f"--json {args.json}: is a folder, expected a file name")
    result = evaluate_folders(args.predictions, args.targets, data_range=args.data_range,
                              progress=sys.stderr.isatty())
    print(format_table(result))
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(_finite(result), indent=2, sort_keys=True) + "\n")
    return 0
