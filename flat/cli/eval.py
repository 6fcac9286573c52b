"""``flat eval PREDICTIONS TARGETS [--json FILE]``: fastMRI's NMSE / PSNR / SSIM per volume and mean.

PREDICTIONS: a folder of submission files (dataset ``reconstruction``, one file per volume, named
like the target) or one file. TARGETS: fastMRI files with ``reconstruction_rss`` and attr ``max``
(folder or one file). Library: :mod:`flat.evaluate`, definitions: :mod:`flat.metrics`.
"""
from __future__ import annotations

import argparse
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


def run(args: argparse.Namespace) -> int:
    from flat.evaluate import evaluate, write_json  # the library, on use: keeps the parser light
    from flat.metrics import format_table

    result = evaluate(args.predictions, args.targets, json_file=args.json, data_range=args.data_range,
                      progress=sys.stderr.isatty())
    print(format_table(result))
    if args.json is not None:
        write_json(result, args.json)
    return 0
