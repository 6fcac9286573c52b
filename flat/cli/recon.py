"""``flat recon CHECKPOINT DATA OUT``: reconstruct fastMRI files into submission files
(:func:`flat.recon.recon_files`; zero-filled, CG-SENSE or a trained FLAT model)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flat.config import MASK_TYPES  # the config schema: standard library only, cheap to import

METHODS = ("flat", "zero-filled", "cg-sense", "varnet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="trained model (.pt) for --method flat, a fastMRI VarNet state dict for "
                        "--method varnet; '-' for zero-filled / cg-sense")
    parser.add_argument("data", metavar="DATA", type=Path,
                        help="fastMRI multicoil .h5 file or folder (fully sampled, or undersampled with a 'mask')")
    parser.add_argument("out", metavar="OUT", type=Path, help="output folder for the submission files")
    parser.add_argument("--method", choices=METHODS, default="flat", help="reconstruction method (default: flat)")
    parser.add_argument("--mask-type", choices=MASK_TYPES, default="equispaced_fraction",
                        help="fastMRI mask for fully sampled input (default: equispaced_fraction)")
    parser.add_argument("--accelerations", type=int, nargs="+", default=[4], metavar="R",
                        help="acceleration(s) (default: 4)")
    parser.add_argument("--center-fractions", type=float, nargs="+", default=[0.08], metavar="F",
                        help="fully sampled centre fraction(s), one per acceleration (default: 0.08)")
    parser.add_argument("--backend", default=None,
                        help="flat.ops backend: reference, triton, cupy or auto (default: FLAT_BACKEND or auto)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per batch (default: 8)")
    # CG-SENSE defaults = flat.recon.CG_ITERS / CG_LAM / CG_TOL (chosen on the demo's validation
    # volumes, docs/classical.md), repeated so that building the parser imports no torch
    parser.add_argument("--maps", default="espirit", metavar="espirit|acs|FILE",
                        help="coil maps: espirit (default), acs, or an HDF5 file with dataset sens_maps "
                        "(S, C, H, W) complex64 (a folder of them, named like the inputs, for several "
                        "volumes); files are used by cg-sense and flat")
    parser.add_argument("--cg-iters", type=int, default=50, help="CG-SENSE iterations, at most (default: 50)")
    parser.add_argument("--tikhonov", "--cg-lam", dest="cg_lam", type=float, default=1e-3,
                        help="CG-SENSE Tikhonov weight, relative to A^H A (default: 0.001)")
    parser.add_argument("--cg-tol", type=float, default=1e-6,
                        help="CG-SENSE stops early when the residual falls below this fraction of the "
                        "initial one (default: 1e-6)")
    parser.add_argument("--device", default="cpu",
                        help="where the model, the data-consistency ops and the baselines run: cpu or "
                        "cuda[:N] (default: cpu)")
    parser.add_argument("--compile", action="store_true",
                        help="--method flat: run the model's K-cascade through torch.compile (docs/gpu.md)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="--method flat on --device cuda: capture the K-cascade once per batch shape "
                        "as a CUDA graph and replay it (docs/gpu.md)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo volumes whose output already exists (default: skip those complete from "
                        "the same settings, so a rerun after a kill finishes the rest)")
    parser.add_argument("--zero-nonfinite", action="store_true",
                        help="zero NaN/Inf k-space samples (saying how many) instead of refusing the file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from flat.recon import recon_files  # the library, on use: keeps the parser light

    written = recon_files(
        args.checkpoint, args.data, args.out, method=args.method, mask_type=args.mask_type,
        accelerations=args.accelerations, center_fractions=args.center_fractions, backend=args.backend,
        batch_size=args.batch_size, cg_iters=args.cg_iters, cg_lam=args.cg_lam, device=args.device,
        maps=args.maps, cg_tol=args.cg_tol, compile=args.compile, cuda_graphs=args.cuda_graphs,
        progress=not args.no_progress, overwrite=args.overwrite, zero_nonfinite=args.zero_nonfinite,
    )
    print(f"flat recon: wrote {len(written)} file(s) to {args.out}", file=sys.stderr)
    return 0
