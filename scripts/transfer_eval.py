"""Demo checkpoints on data they never saw: zero-filled, CG-SENSE, vanilla and FLAT, with the spread
over training seeds and the PSNR of every cascade.

    python scripts/transfer_eval.py OUT --runs RUN [RUN ...] --colin27 ATLAS.nii[.gz] \
        [--sizes 128x8 256x8 256x16] [--data NAME=FOLDER ...]

RUN is a ``flat demo --out`` folder (``flat.pt`` and ``unrolled.pt``); several RUNs (demos with
different ``--seed``) give the spread. ``--colin27`` builds brain volumes of anatomy the demo never
uses (flat/data/heldout.py, both slab sets: 7 volumes) at every ``--sizes`` MATRIXxCOILS; ``--data``
adds any folders of fastMRI files (e.g. ``python scripts/heldout_proxy.py P`` gives ``P/small``
and ``P/large``). Every method sees the same masks: the demo's (equispaced_fraction, 4x, centre
0.08), seeded per file as ``flat recon`` seeds them. CG-SENSE runs with ``flat recon``'s defaults
(ESPIRiT maps, docs/classical.md). Metrics are fastMRI's, per volume, averaged over volumes.
Writes ``OUT/transfer.json`` and ``OUT/transfer.md``; data written once is reused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _size(text: str) -> tuple[int, int]:
    try:
        m, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MATRIXxCOILS such as 256x8, got {text!r}") from None
    return m, c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="flat demo output folders")
    ap.add_argument("--colin27", type=Path, help="the Colin27 atlas NIfTI: held-out brain volumes")
    ap.add_argument("--sizes", type=_size, nargs="+", default=[(128, 8), (256, 8)])
    ap.add_argument("--data", nargs="*", default=[], metavar="NAME=FOLDER", help="more held-out folders")
    ap.add_argument("--brain-seed", type=int, default=5, help="seed of the held-out volumes' coils, phase, noise")
    args = ap.parse_args()

    import torch

    from flat.config import get_preset
    from flat.data.fastmri import list_h5_files
    from flat.data.heldout import write_brain_set
    from flat.demo import evaluate_methods
    from flat.inference import load_model

    for run in args.runs:
        for name in ("flat.pt", "unrolled.pt"):
            if not (run / name).is_file():
                print(f"transfer_eval: --runs {run}: no {name} (a flat demo --out folder?)", file=sys.stderr)
                return 2
    sets: dict[str, list[Path]] = {}
    if args.colin27 is not None:
        for m, c in args.sizes:
            folder = args.out / "data" / f"brain_{m}x{c}"
            files = sorted(folder.glob("*.h5")) if folder.is_dir() else []
            if not files:
                files = [p for slabs in ("heldout", "confirm")
                         for p in write_brain_set(args.colin27, folder, slabs, sizes=[(m, c)], seed=args.brain_seed)]
            sets[f"brain {m}² / {c} coils"] = files
    for item in args.data:
        name, _, folder = item.partition("=")
        if not folder:
            ap.error(f"--data: expected NAME=FOLDER, got {item!r}")
        sets[name] = list_h5_files(Path(folder))
    if not sets:
        ap.error("give --colin27 and/or --data")

    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = {}
    for i, run in enumerate(args.runs):
        models[f"vanilla/{i}"] = load_model(run / "unrolled.pt")
        models[f"FLAT/{i}"] = load_model(run / "flat.pt")
    data_cfg = get_preset("demo").data
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": [str(r) for r in args.runs],
               "sets": {}}
    lines = ["| data | volumes | zero-filled | CG-SENSE | vanilla | FLAT | FLAT per cascade (PSNR) |",
             "|---|---|---|---|---|---|---|"]
    for name, files in sets.items():
        t0 = time.perf_counter()
        r = evaluate_methods(files, models, data_cfg)
        entry = {"volumes": r["volumes"], "methods": r["methods"], "cascade": r["cascade"],
                 "seconds": time.perf_counter() - t0}
        results["sets"][name] = entry

        def cell(kind):
            ps = [m["PSNR"] for k, m in r["methods"].items() if k.split("/")[0] == kind]
            ss = [m["SSIM"] for k, m in r["methods"].items() if k.split("/")[0] == kind]
            spread = f" ± {np.std(ps):.2f}" if len(ps) > 1 else ""
            return f"{np.mean(ps):.2f}{spread} / {np.mean(ss):.3f}"

        curve = np.mean([c for k, c in r["cascade"].items() if k.startswith("FLAT/")], axis=0)
        lines.append(f"| {name} | {r['volumes']} | {cell('zero-filled')} | {cell('CG-SENSE')} | {cell('vanilla')} "
                     f"| {cell('FLAT')} | {', '.join(f'{v:.2f}' for v in curve)} |")
        print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transfer.json").write_text(json.dumps(results, indent=2, default=float))
    table = "\n".join(lines) + ("\n\nPSNR (dB) / SSIM, means over volumes; ± is the standard deviation over "
                                f"{len(args.runs)} training seeds.\n" if len(args.runs) > 1 else "\n")
    (args.out / "transfer.md").write_text(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
