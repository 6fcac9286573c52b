"""``flat demo [--out DIR]``: the whole story on a CPU in minutes.

1. builds the demo data set (real Colin27 anatomy, simulated coils and phase; not scanner data),
2. trains a small FLAT model and its vanilla unrolled baseline (same network; the vanilla way),
   side by side in two processes on >= 2 usable cores, one console line per model
   (:class:`TrainProgress`), a line when the time cap stopped a model short,
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
import re
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

from flat.cli.demo import DEFAULT_STEPS, DEFAULT_TIME_LIMIT_S
from flat.checks import check_device
from flat.config import apply_overrides, get_preset
from flat.data.demo import write_demo_dataset
from flat.data.fastmri import list_h5_files, read_volume
from flat.data.masks import create_mask_for_mask_type
from flat.data.transforms import center_crop
from flat.inference import load_model, reconstruct_trajectory
from flat.io import atomic_path
from flat.metrics import psnr, volume_metrics
from flat.plots import psnr_per_cascade, recon_panel
from flat.ops.backends import resolve
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


def evaluate_methods(test_files, models: dict, data_cfg, *, backend=None, progress=False, device="cpu") -> dict:
    """Reconstruct every test volume with zero-filled, CG-SENSE (on ``device``) and each model (on
    its own device).

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
                                       nlf, crop, backend=backend, device=device)
            warm = True
        for name in names:
            t0 = time.perf_counter()
            if name in models:
                traj = reconstruct_trajectory(models[name], masked, mask, nlf, backend=backend)
                recon = center_crop(traj[-1], crop).numpy()
                cascade[name].append([psnr(target, center_crop(t, crop).numpy(), maxval) for t in traj])
            else:
                method = "zero-filled" if name == "zero-filled" else "cg-sense"
                # CG-SENSE as flat recon runs it: ESPIRiT maps, its tuned iterations and Tikhonov weight
                recon = reconstruct_volume(method, masked, mask, nlf, crop, backend=backend, device=device,
                                           cg_maps="espirit")
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


def _omp_threads(environ) -> int | None:
    """``OMP_NUM_THREADS`` as a positive int (its first entry, as OpenMP reads "4,2"); None if
    unset or invalid (OpenMP ignores an invalid value too)."""
    raw = (environ.get("OMP_NUM_THREADS") or "").split(",")[0].strip()
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if n >= 1 else None


def usable_threads(affinity=None, environ=None) -> int:
    """Threads this process may use: the cores it may run on (``os.sched_getaffinity(0)``, so
    ``taskset`` and container CPU sets count), at most ``OMP_NUM_THREADS`` if that is set."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:  # macOS, Windows: no affinity API
            affinity = range(os.cpu_count() or 1)
    n = max(1, len(affinity))
    omp = _omp_threads(os.environ if environ is None else environ)
    return min(n, omp) if omp else n


def training_processes(affinity=None, environ=None) -> tuple[int, int]:
    """``(processes, threads each)`` for training the two demo models: on >= 2 usable cores two
    processes side by side, the cores split between them (measured: two 1-thread processes do
    ~1.5x the steps of one 2-thread process on this workload); ``OMP_NUM_THREADS``, when set,
    caps the threads of each process (it is a per-process setting)."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:
            affinity = range(os.cpu_count() or 1)
    cores = max(1, len(affinity))
    procs = 2 if cores >= 2 else 1
    per = cores // procs
    omp = _omp_threads(os.environ if environ is None else environ)
    return procs, (min(per, omp) if omp else per)


# a step line of train.log (flat/train.py): "<date> <time> step 25/1500 epoch 0 lr ... loss 0.1234"
_STEP_LINE = re.compile(r"\bstep (\d+)/(\d+)\b.*\bloss (\S+)")
# its end lines: "time limit train.time_limit_s=420 reached at step 512", "done: 1500 steps in ..."
_CAP_LINE = re.compile(r"\btime limit \S+ reached at step (\d+)")
_DONE_LINE = re.compile(r"\bdone: (\d+) steps\b")


class TrainProgress:
    """One console line per model (step, loss, ETA) while the demo's training processes run.

    The processes print nothing (two would interleave); each writes ``train.log`` in its run
    folder every ``train.log_every`` steps, and :meth:`poll` reads what is new there. The ETA
    is the sooner of the remaining steps and the time cap at the rate seen so far.
    """

    def __init__(self, run_dirs: dict, steps: int, time_limit_s: float = 0.0, enabled: bool = True):
        from tqdm import tqdm

        self.logs = {name: Path(d) / "train.log" for name, d in run_dirs.items()}
        # a resumed run appends to its log: only lines written from now on count
        self.offset = {name: (p.stat().st_size if p.exists() else 0) for name, p in self.logs.items()}
        self.time_limit_s = time_limit_s
        self.state = {name: {"step": 0, "total": steps, "loss": None, "first": None, "last": None,
                             "note": "starting"} for name in self.logs}
        width = max(len(n) for n in self.logs)
        self.bars = {name: tqdm(total=steps, desc=f"{name:<{width}}", position=i, leave=True, disable=not enabled,
                                bar_format="{desc} {bar:20} step {n_fmt}/{total_fmt}{postfix}")
                     for i, name in enumerate(self.logs)}

    def _read_new(self, name: str) -> list[str]:
        path = self.logs[name]
        if not path.exists():
            return []
        with open(path, "rb") as f:
            f.seek(self.offset[name])
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only; a partly written one waits for the next poll
        self.offset[name] += end
        return chunk[:end].decode("utf-8", "replace").splitlines()

    def poll(self, now: float | None = None) -> dict:
        """Read the logs, refresh the lines; returns ``{name: {"step", "total", "loss", "eta_s", "note"}}``."""
        now = time.monotonic() if now is None else now
        out = {}
        for name, st in self.state.items():
            for line in self._read_new(name):
                m = _STEP_LINE.search(line)
                if m:
                    st["step"], st["total"], st["loss"] = int(m.group(1)), int(m.group(2)), m.group(3)
                    st["last"] = (now, st["step"])
                    st["first"] = st["first"] or st["last"]
                    st["note"] = "training"
                elif m := _CAP_LINE.search(line):  # the last step is logged here even off log_every
                    st["step"], st["note"] = int(m.group(1)), "time cap reached; validating"
                elif m := _DONE_LINE.search(line):
                    st["step"], st["note"] = int(m.group(1)), "done"
            eta = self._eta(st)
            out[name] = {"step": st["step"], "total": st["total"], "loss": st["loss"], "eta_s": eta,
                         "note": st["note"]}
            bar = self.bars[name]
            bar.total, bar.n = st["total"], st["step"]
            parts = [f"loss {st['loss']}"] if st["loss"] is not None else []
            if st["note"] == "training":
                parts.append(f"ETA {_mmss(eta)}" if eta is not None else "ETA ?")
            else:
                parts.append(st["note"])
            bar.set_postfix_str(" | ".join(parts), refresh=False)
            bar.refresh()
        return out

    def _eta(self, st) -> float | None:
        if st["first"] is None or st["last"][1] <= st["first"][1]:
            return None
        (t0, s0), (t1, s1) = st["first"], st["last"]
        rate = (s1 - s0) / max(t1 - t0, 1e-9)  # steps per second
        left = max(0, st["total"] - s1) / rate
        if self.time_limit_s:  # training time so far ~ steps / rate (the log has no clock of its own)
            left = min(left, max(0.0, self.time_limit_s - s1 / rate))
        return left

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _mmss(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def cap_message(name: str, result: dict, steps: int, time_limit_s: float) -> str | None:
    """The console line when the wall-clock cap, not the step count, ended a model's training."""
    if time_limit_s and result["global_step"] < steps and result["elapsed_s"] >= time_limit_s:
        return (f"  {name}: the {time_limit_s:g} s time cap stopped training at step {result['global_step']} "
                f"of {steps} (this machine's speed; --time-limit 0 trains all {steps})")
    return None


def _train_job(cfg, train_files, val_files, run_dir, progress=False, device=None, backend=None) -> dict:
    """One training run (also in a worker process): the summary, without the model object."""
    r = train(cfg, train_files, val_files, run_dir, progress=progress, echo=False, device=device, backend=backend)
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
    capped = res.get("time_capped", {})
    lines.append("training: " + ", ".join(f"{n} {s:.0f} s ({k} steps{', stopped by the time cap' if capped.get(n) else ''})"
                                          for n, (s, k) in res["train"].items()))
    return "\n".join(lines)


def run_demo(out: str | os.PathLike = "demo_out", *, data: str | None = None, steps: int = DEFAULT_STEPS,
             time_limit_s: float = DEFAULT_TIME_LIMIT_S, preset: str = "demo", overrides: list[str] | None = None, seed: int = 0,
             progress: bool = True, echo: bool = True, device=None, backend=None) -> dict:
    """``device``: where training, the models and the classical baselines run (default: CUDA when
    present); ``backend``: the data-consistency backend (default: the fastest there)."""
    dev = check_device(device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    be = resolve(backend, dev.type)  # a backend that cannot run there is refused before any work
    if steps < 1:
        raise ValueError(f"--steps: must be >= 1, got {steps}")
    if not time_limit_s >= 0:
        raise ValueError(f"--time-limit: must be >= 0 seconds, got {time_limit_s}")
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = usable_threads()
    torch.set_num_threads(threads)
    if echo:
        print(f"device {dev}, data-consistency backend {be}", flush=True)

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
    procs, per_proc = training_processes()
    parallel = procs == 2
    # a log line every 5 steps feeds the progress lines (bookkeeping only: not part of the run's identity)
    jobs = {name: (apply_overrides(cfg, [f"train.threads={per_proc}", "train.log_every=5"]), files["train"],
                   files["val"], str(run_dirs[name])) for name, cfg in cfgs.items()}
    if echo:
        how = (f"in parallel (2 processes x {per_proc} thread(s))" if parallel
               else f"one after the other ({per_proc} thread(s))")
        budget = f"{steps} steps or {time_limit_s:g} s" if time_limit_s else f"{steps} steps"
        print(f"training {' and '.join(cfgs)} ({budget} each) {how}; "
              f"logs in {out / 'runs'}/*/train.log ...", flush=True)
    if parallel:
        with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
            monitor = TrainProgress(run_dirs, steps, time_limit_s, enabled=progress and echo)
            futures = {name: pool.submit(_train_job, *job, device=str(dev), backend=backend)
                       for name, job in jobs.items()}
            try:
                while wait(list(futures.values()), timeout=2.0).not_done:
                    monitor.poll()
                monitor.poll()
            finally:
                monitor.close()
            results = {name: f.result() for name, f in futures.items()}
    else:
        results = {name: _train_job(*job, progress=progress, device=str(dev), backend=backend)
                   for name, job in jobs.items()}
    capped = {}
    for name, r in results.items():
        train_info[name] = (r["elapsed_s"], r["global_step"])
        msg = cap_message(name, r, steps, time_limit_s)
        capped[name] = msg is not None
        if echo and msg:
            print(msg, flush=True)
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
    models = {name: load_model(out / ckpt_names[name], map_location=dev) for name in cfgs}
    data_cfg = cfgs["FLAT"].data
    res = evaluate_methods(files["test"], models, data_cfg, backend=backend, progress=progress, device=dev)
    res["acceleration"] = (f"{data_cfg.mask_type} mask, R = {','.join(str(a) for a in data_cfg.accelerations)}, "
                           f"centre {','.join(str(c) for c in data_cfg.center_fractions)}")
    res["train"] = train_info
    res["time_capped"] = capped
    if data is None:
        res["data_note"] = ("Demo data: simulated multicoil k-space (coils, phase, noise) from real Colin27 "
                            "anatomy; not scanner data.")

    # 4. figures
    ex = res.pop("example")
    # each model's name says how long it trained; each image's caption is that slice's own PSNR
    # (the volume's max as data range, as fastMRI's volume PSNR), the test-set means in the title
    label = {n: (f"{n} ({train_info[n][1]} step{'' if train_info[n][1] == 1 else 's'})" if n in train_info else n)
             for n in ex["recons"]}
    slice_psnr = {n: psnr(ex["target"], r, ex["maxval"]) for n, r in ex["recons"].items()}
    res["panel"] = {"slice": ex["name"], "PSNR": slice_psnr}
    means = ", ".join(f"{n} {res['methods'][n]['PSNR']:.2f}" for n in ex["recons"])
    recon_panel(out / "recon_panel.png", ex["target"], {label[n]: r for n, r in ex["recons"].items()},
                {label[n]: f"{p:.2f} dB (this slice)" for n, p in slice_psnr.items()},
                title=f"{ex['name']} — demo test set (simulated coils on Colin27 anatomy)\n"
                      f"test-set mean PSNR over {res['volumes']} volume(s): {means} dB")
    psnr_per_cascade(out / "psnr_per_cascade.png", {label[n]: c for n, c in res["cascade"].items()},
                     {n: res["methods"][n]["PSNR"] for n in ("zero-filled", "CG-SENSE")},
                     title="PSNR of every cascade, demo test set (mean over volumes)")
    res["wall_s"] = time.perf_counter() - t_start
    res["out"] = str(out)
    res["files"] = ["flat.pt", "unrolled.pt", "recon_panel.png", "psnr_per_cascade.png", "results.json"]
    res["threads"] = threads
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps({k: v for k, v in res.items()}, indent=2, default=str))
    return res
