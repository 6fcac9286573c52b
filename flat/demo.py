"""``flat demo [--out DIR]``: the whole story on a CPU in minutes.

1. builds the demo data set (real Colin27 anatomy, simulated coils and phase; not scanner data),
2. trains a small FLAT model and its vanilla unrolled baseline (same network; the vanilla way),
3. reconstructs the held-back test volumes with zero-filled, CG-SENSE, vanilla and FLAT,
4. prints a table (PSNR/SSIM/NMSE as fastMRI computes them, seconds) and writes
   ``DIR/flat.pt``, ``DIR/unrolled.pt``, ``DIR/results.json``, ``DIR/recon_panel.png`` and
   ``DIR/psnr_per_cascade.png``.

Training runs live in ``DIR/runs/{flat,unrolled}`` and resume if the demo is interrupted.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from flat.cli.demo import DEFAULT_STEPS, DEFAULT_TIME_LIMIT_S
from flat.config import apply_overrides, get_preset
from flat.data.demo import write_demo_dataset
from flat.data.fastmri import list_h5_files, read_volume
from flat.data.masks import create_mask_for_mask_type
from flat.data.transforms import center_crop
from flat.inference import load_model, reconstruct_trajectory
from flat.io import atomic_path
from flat.metrics import psnr, volume_metrics
from flat.plots import psnr_per_cascade, recon_panel
from flat.recon import prepare_volume, reconstruct_volume
from flat.train import MODEL_FILE, train


def _split_files(data: str | os.PathLike) -> dict:
    root = Path(data)
    out = {}
    for split in ("train", "val", "test"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"--data: {root} has no {split}/ folder (expected train/, val/, test/)")
        out[split] = [str(p) for p in list_h5_files(root / split)]
    return out


def evaluate_methods(test_files, models: dict, data_cfg, *, backend=None, progress=False) -> dict:
    """Reconstruct every test volume with zero-filled, CG-SENSE and each model.

    Returns ``{"methods": {name: {"PSNR","SSIM","NMSE","seconds"}}, "cascade": {name: [PSNR of x_k]},
    "example": {...}}`` with metrics averaged over volumes (fastMRI's per-volume metrics).
    """
    mask_func = create_mask_for_mask_type(data_cfg.mask_type, list(data_cfg.center_fractions),
                                          list(data_cfg.accelerations))
    names = ["zero-filled", "CG-SENSE", *models]
    rows = {n: [] for n in names}
    secs = {n: 0.0 for n in names}
    cascade = {n: [] for n in models}
    example = None
    warm = False
    for path in test_files:
        kspace, file_mask, target, info = read_volume(path)
        masked, mask, nlf = prepare_volume(kspace, file_mask, info, mask_func)
        crop = tuple(target.shape[-2:])
        maxval = float(info.attrs.get("max", target.max()))
        recons = {}
        if not warm:  # first calls pay one-off costs (op registration, allocator); keep them out of the timings
            for name in names:
                if name in models:
                    reconstruct_trajectory(models[name], masked[:1], mask, nlf, backend=backend)
                else:
                    reconstruct_volume("zero-filled" if name == "zero-filled" else "cg-sense", masked[:1], mask,
                                       nlf, crop, backend=backend)
            warm = True
        for name in names:
            t0 = time.perf_counter()
            if name in models:
                traj = reconstruct_trajectory(models[name], masked, mask, nlf, backend=backend)
                recon = center_crop(traj[-1], crop).numpy()
                cascade[name].append([psnr(target, center_crop(t, crop).numpy(), maxval) for t in traj])
            else:
                method = "zero-filled" if name == "zero-filled" else "cg-sense"
                recon = reconstruct_volume(method, masked, mask, nlf, crop, backend=backend)
            secs[name] += time.perf_counter() - t0
            rows[name].append(volume_metrics(target, recon, maxval))
            recons[name] = recon
        if example is None:  # the middle slice of the first volume for the panel
            s = target.shape[0] // 2
            example = {"target": target[s], "recons": {n: r[s] for n, r in recons.items()},
                       "name": f"{Path(path).name} slice {s}", "maxval": maxval}
    methods = {}
    for n in names:
        methods[n] = {k: float(np.mean([r[k] for r in rows[n]])) for k in ("PSNR", "SSIM", "NMSE")}
        methods[n]["seconds"] = secs[n]
    curves = {n: [float(x) for x in np.mean(np.array(c), axis=0)] for n, c in cascade.items()}
    return {"methods": methods, "cascade": curves, "example": example, "volumes": len(test_files)}


def _train_job(cfg, train_files, val_files, run_dir, progress=False) -> dict:
    """One training run (also in a worker process): the summary, without the model object."""
    r = train(cfg, train_files, val_files, run_dir, progress=progress, echo=False)
    return {"elapsed_s": r["elapsed_s"], "global_step": r["global_step"], "history": r["history"]}


def format_table(res: dict) -> str:
    lines = [f"Test set: {res['volumes']} volume(s), {res['acceleration']}",
             *([res["data_note"]] if res.get("data_note") else []),
             f"{'method':<18}{'PSNR (dB)':>10}{'SSIM':>9}{'NMSE':>9}{'seconds':>10}",
             "-" * 56]
    for name, m in res["methods"].items():
        lines.append(f"{name:<18}{m['PSNR']:>10.2f}{m['SSIM']:>9.4f}{m['NMSE']:>9.4f}{m['seconds']:>10.2f}")
    for name, c in res["cascade"].items():
        lines.append(f"PSNR per cascade, {name}: " + " ".join(f"{p:.2f}" for p in c))
    lines.append("training: " + ", ".join(f"{n} {s:.0f} s ({k} steps)" for n, (s, k) in res["train"].items()))
    return "\n".join(lines)


def run_demo(out: str | os.PathLike = "demo_out", *, data: str | None = None, steps: int = DEFAULT_STEPS,
             time_limit_s: float = DEFAULT_TIME_LIMIT_S, preset: str = "demo", overrides: list[str] | None = None, seed: int = 0,
             progress: bool = True, echo: bool = True) -> dict:
    if steps < 1:
        raise ValueError(f"--steps: must be >= 1, got {steps}")
    if not time_limit_s >= 0:
        raise ValueError(f"--time-limit: must be >= 0 seconds, got {time_limit_s}")
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)

    # 1. data
    if data is None:
        t0 = time.perf_counter()
        if echo:
            print(f"building the demo data set in {out / 'data'} ...", flush=True)
        files = write_demo_dataset(out / "data", seed=seed)
        files = {k: [str(p) for p in v] for k, v in files.items()}
        if echo:
            print(f"  {', '.join(f'{k}: {len(v)} volume(s)' for k, v in files.items())} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    else:
        files = _split_files(data)

    # 2. train FLAT and the vanilla baseline: the same network, one config switch apart
    base_preset = get_preset(preset)
    cfgs = {}
    for name, mode in (("vanilla unrolled", "vanilla"), ("FLAT", "flat")):
        cfg = apply_overrides(base_preset, [f"model.mode={mode}", f"train.max_steps={steps}",
                                            f"train.seed={seed}", f"train.time_limit_s={time_limit_s}",
                                            *(overrides or [])])
        cfgs[name] = cfg
    train_info = {}
    ckpt_names = {"FLAT": "flat.pt", "vanilla unrolled": "unrolled.pt"}
    run_dirs = {name: out / "runs" / ("flat" if cfg.model.mode == "flat" else "unrolled")
                for name, cfg in cfgs.items()}
    # On >= 2 cores the two models train side by side, one process each (measured: two 1-thread
    # processes do ~1.5x the steps of one 2-thread process on this workload).
    parallel = threads >= 2
    per_proc = max(1, threads // 2) if parallel else threads
    jobs = {name: (apply_overrides(cfg, [f"train.threads={per_proc}"]), files["train"], files["val"],
                   str(run_dirs[name])) for name, cfg in cfgs.items()}
    if echo:
        how = f"in parallel (2 processes x {per_proc} thread(s))" if parallel else "one after the other"
        print(f"training {' and '.join(cfgs)} ({steps} steps or {time_limit_s:g} s each) {how}; "
              f"logs in {out / 'runs'}/*/train.log ...", flush=True)
    if parallel:
        with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
            futures = {name: pool.submit(_train_job, *job) for name, job in jobs.items()}
            results = {name: f.result() for name, f in futures.items()}
    else:
        results = {name: _train_job(*job, progress=progress) for name, job in jobs.items()}
    for name, r in results.items():
        train_info[name] = (r["elapsed_s"], r["global_step"])
        if echo and r["history"]:
            h = r["history"][-1]
            print(f"  {name}: {r['global_step']} steps in {r['elapsed_s']:.0f} s; validation PSNR "
                  f"{h['PSNR']:.2f} dB, per cascade " + " ".join(f"{p:.2f}" for p in h["psnr_per_cascade"]),
                  flush=True)
        with atomic_path(out / ckpt_names[name]) as tmp:  # the demo's deliverables
            tmp.write_bytes((run_dirs[name] / MODEL_FILE).read_bytes())

    # 3. test set
    if echo:
        print("reconstructing the test volumes ...", flush=True)
    models = {name: load_model(out / ckpt_names[name]) for name in cfgs}
    data_cfg = cfgs["FLAT"].data
    res = evaluate_methods(files["test"], models, data_cfg, progress=progress)
    res["acceleration"] = (f"{data_cfg.mask_type} mask, R = {','.join(str(a) for a in data_cfg.accelerations)}, "
                           f"centre {','.join(str(c) for c in data_cfg.center_fractions)}")
    res["train"] = train_info
    if data is None:
        res["data_note"] = ("Demo data: simulated multicoil k-space (coils, phase, noise) from real Colin27 "
                            "anatomy; not scanner data.")

    # 4. figures
    ex = res.pop("example")
    scores = {n: f"{res['methods'][n]['PSNR']:.2f} dB (test mean)" for n in ex["recons"]}
    recon_panel(out / "recon_panel.png", ex["target"], ex["recons"], scores,
                title=f"{ex['name']} — demo test set (simulated coils on Colin27 anatomy)")
    psnr_per_cascade(out / "psnr_per_cascade.png", res["cascade"],
                     {n: res["methods"][n]["PSNR"] for n in ("zero-filled", "CG-SENSE")},
                     title="PSNR of every cascade, demo test set")
    res["wall_s"] = time.perf_counter() - t_start
    res["out"] = str(out)
    res["files"] = ["flat.pt", "unrolled.pt", "recon_panel.png", "psnr_per_cascade.png", "results.json"]
    res["threads"] = threads
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps({k: v for k, v in res.items()}, indent=2, default=str))
    return res
