"""FLAT's CG-SENSE (its defaults) against BART's ``ecalib`` + ``pics -l2`` on the same files.

    python scripts/compare_bart.py OUT DATA [DATA ...] [--colin27 ch2.nii.gz] [--accelerations 4 8]

DATA are fastMRI multicoil files or folders (``--slices N``: only the N central slices of each) (e.g. ``python scripts/heldout_proxy.py P`` writes
``P/small`` and ``P/large``); ``--colin27 FILE`` also builds brain volumes from Colin27 slabs that
the demo data set does not use (``--brain-set heldout`` or ``confirm``, flat/data/heldout.py),
simulated exactly like the demo data, into ``OUT/brain``. For every acceleration (fastMRI's equispaced_fraction mask, centre 0.08 at 4x and
0.04 at 8x, seeded per file as ``flat recon`` does):

- FLAT: ``flat recon - DATA OUT/flat_R<R> --method cg-sense`` with nothing else (the defaults);
- BART: per slice ``bart ecalib -m1`` (one set of maps) and ``bart pics -S -l2 -r <lambda>`` for
  every lambda of ``--lambdas``; the table reports BART at the lambda with the best mean PSNR over
  all files of that acceleration (an oracle choice, in BART's favour).

PSNR/SSIM are fastMRI's per-volume metrics (data range: the file's ``max``), averaged over volumes.
BART's default 6 x 6 kernel does not fit an ACS block of fewer than 6 columns (fastMRI's 8x on 128
columns has 5): below 8 columns BART gets ``-k 6:<w>:1`` with w = min(6, ACS - 2) (three patch
positions across the block).
Needs the ``bart`` command (Debian/Ubuntu: ``apt-get install bart``); not a test dependency.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flat.data.heldout import BRAIN_SLABS, write_brain_set

SETTINGS = {4: 0.08, 8: 0.04}  # acceleration -> fastMRI's centre fraction


def write_cfl(base: str, arr: np.ndarray) -> None:
    """BART's format: a text header of dims and complex64 data in column-major order."""
    Path(base + ".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in arr.shape) + "\n")
    np.asarray(arr, dtype=np.complex64).ravel(order="F").tofile(base + ".cfl")


def read_cfl(base: str) -> np.ndarray:
    dims = [int(d) for d in Path(base + ".hdr").read_text().splitlines()[1].split()]
    return np.fromfile(base + ".cfl", dtype=np.complex64).reshape(dims, order="F")


def _input_file(f: Path, folder: Path, slices: int) -> Path:
    """The file as both methods see it: a link to it, or a copy of its ``slices`` central slices
    (same header and attrs; the target's ``max`` recomputed, as fastMRI files carry it)."""
    import h5py

    dst = folder / Path(f).name
    if dst.exists():
        return dst
    if slices <= 0:
        dst.symlink_to(Path(f).resolve())
        return dst
    from flat.data.demo import write_fastmri_file

    with h5py.File(f, "r") as h:
        S = h["kspace"].shape[0]
        a = max(0, (S - slices) // 2)
        sel = slice(a, min(S, a + slices))
        k, t = h["kspace"][sel], h["reconstruction_rss"][sel]
        header = bytes(h["ismrmrd_header"][()])
        attrs = {key: v for key, v in h.attrs.items() if key not in ("max", "norm")}
    return write_fastmri_file(dst, k, t, header, attrs)


def run_flat(data: Path, out: Path, acc: int, cf: float) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "flat", "recon", "-", str(data), str(out), "--method", "cg-sense",
           "--accelerations", str(acc), "--center-fractions", str(cf), "--no-progress"]
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def bart_volume(masked: np.ndarray, nl: int, lambdas, tmp: str) -> tuple[dict, float]:
    """BART recon of one volume (S, C, H, W) for every lambda: {lambda: |x| (S, H, W)}, seconds."""
    S, C, H, W = masked.shape
    out = {lam: np.zeros((S, H, W), np.float32) for lam in lambdas}
    ecal = ["bart", "ecalib", "-m1"]
    if nl < 8:
        ecal += ["-k", f"6:{min(6, max(1, nl - 2))}:1"]
    t0 = time.perf_counter()
    for s in range(S):
        write_cfl(f"{tmp}/k", masked[s].transpose(1, 2, 0)[:, :, None, :])
        subprocess.run(ecal + [f"{tmp}/k", f"{tmp}/s"], check=True, capture_output=True)
        for lam in lambdas:
            subprocess.run(["bart", "pics", "-S", "-l2", "-r", str(lam), f"{tmp}/k", f"{tmp}/s", f"{tmp}/x"],
                           check=True, capture_output=True)
            out[lam][s] = np.abs(read_cfl(f"{tmp}/x")).reshape(H, W)
    return out, (time.perf_counter() - t0) / len(lambdas)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="output folder (recons, brain files, results.json)")
    ap.add_argument("data", type=Path, nargs="*", help="fastMRI files or folders")
    ap.add_argument("--colin27", type=Path, default=None, help="Colin27 NIfTI (ch2.nii.gz): build held-out brain files")
    ap.add_argument("--brain-set", choices=sorted(BRAIN_SLABS), default="heldout",
                    help="which Colin27 slabs --colin27 builds (default heldout)")
    ap.add_argument("--brain-seed", type=int, default=7, help="seed of the simulated coils, phase and noise")
    ap.add_argument("--accelerations", type=int, nargs="+", default=[4, 8], choices=sorted(SETTINGS))
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--slices", type=int, default=0,
                    help="use only the N central slices of each volume (0 = all; BART runs slice by slice)")
    args = ap.parse_args()
    if shutil.which("bart") is None:
        print("compare_bart: the 'bart' command is not installed (apt-get install bart)", file=sys.stderr)
        return 1

    from flat.data.fastmri import list_h5_files, read_volume
    from flat.data.masks import create_mask_for_mask_type
    from flat.data.transforms import center_crop
    from flat.metrics import volume_metrics
    from flat.recon import prepare_volume

    args.out.mkdir(parents=True, exist_ok=True)
    groups = {p.name: list_h5_files(p) for p in args.data}
    if args.colin27 is not None:
        groups["brain"] = write_brain_set(args.colin27, args.out / "brain", args.brain_set, seed=args.brain_seed)
    if not groups:
        ap.error("give DATA and/or --colin27")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "bart": subprocess.run(
        ["bart", "version"], capture_output=True, text=True).stdout.strip(), "rows": []}
    for acc in args.accelerations:
        cf = SETTINGS[acc]
        mask_func = create_mask_for_mask_type("equispaced_fraction", [cf], [acc])
        per_file = []
        for group, files in groups.items():
            src = args.out / "inputs" / group
            src.mkdir(parents=True, exist_ok=True)
            files = [_input_file(f, src, args.slices) for f in files]  # one folder per group
            flat_dir = args.out / f"flat_R{acc}" / group
            flat_s = run_flat(src, flat_dir, acc, cf)
            with tempfile.TemporaryDirectory() as tmp:
                for f in files:
                    kspace, file_mask, target, info = read_volume(f)
                    masked, mask, nl = prepare_volume(kspace, file_mask, info, mask_func)
                    maxval = float(info.attrs.get("max", target.max()))
                    bart, bart_s = bart_volume(masked.numpy(), nl, args.lambdas, tmp)
                    import h5py

                    with h5py.File(flat_dir / Path(f).name, "r") as h:
                        ours = np.asarray(h["reconstruction"])
                    row = {"group": group, "file": Path(f).name, "R": acc, "acs": nl,
                           "flat": volume_metrics(target, ours, maxval),
                           "bart": {str(lam): volume_metrics(target, center_crop(x, target.shape[-2:]), maxval)
                                    for lam, x in bart.items()},
                           "bart_s_per_lambda": bart_s}
                    per_file.append(row)
                    print(f"R={acc} {group}/{row['file']}: flat {row['flat']['PSNR']:.2f} dB; BART "
                          + " ".join(f"{lam:g}:{m['PSNR']:.2f}" for lam, m in zip(args.lambdas, row["bart"].values())),
                          flush=True)
            results.setdefault("flat_seconds", {})[f"R{acc}/{group}"] = flat_s
        best = max(args.lambdas, key=lambda lam: np.mean([r["bart"][str(lam)]["PSNR"] for r in per_file]))
        for group in groups:
            rows = [r for r in per_file if r["group"] == group]
            # BART also at the lambda best for this group alone (an even stronger oracle)
            own = max(args.lambdas, key=lambda lam: np.mean([r["bart"][str(lam)]["PSNR"] for r in rows]))
            entry = {"R": acc, "group": group, "volumes": len(rows), "bart_lambda": best, "bart_group_lambda": own}
            for key in ("PSNR", "SSIM"):
                entry[f"flat_{key}"] = float(np.mean([r["flat"][key] for r in rows]))
                entry[f"bart_{key}"] = float(np.mean([r["bart"][str(best)][key] for r in rows]))
                entry[f"bart_group_{key}"] = float(np.mean([r["bart"][str(own)][key] for r in rows]))
            results["rows"].append(entry)
        results.setdefault("files", []).extend(per_file)
    with open(args.out / "results.json", "w") as f:
        json.dump(results, f, indent=2, default=float)
    print("\n| R | files | volumes | BART ecalib + pics -l2 (best λ) | BART, this group's best λ "
          "| FLAT cg-sense (defaults) | difference | vs the group's best |")
    print("|---|---|---|---|---|---|---|---|")
    for e in results["rows"]:
        print(f"| {e['R']}x | {e['group']} | {e['volumes']} | {e['bart_PSNR']:.2f} dB (λ = {e['bart_lambda']:g}) "
              f"| {e['bart_group_PSNR']:.2f} dB (λ = {e['bart_group_lambda']:g}) "
              f"| {e['flat_PSNR']:.2f} dB | {e['flat_PSNR'] - e['bart_PSNR']:+.2f} dB "
              f"| {e['flat_PSNR'] - e['bart_group_PSNR']:+.2f} dB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
