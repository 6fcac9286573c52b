"""``flat train --train DIR --val DIR --out DIR [--config FILE] [--set key=value ...]``.

Also ``torchrun --nproc_per_node N -m flat train ...`` (DistributedDataParallel; gloo on the CPU,
NCCL on GPUs). Training is deterministic and resumable: the data order of epoch e is a permutation
seeded by (seed, e); the undersampling mask and flips of sample i in epoch e are seeded by
(seed, e, i); ``OUT/last.pt`` holds model, optimiser, LR schedule and the position in the epoch.
Run the same command again after a kill and it continues exactly where the last checkpoint left off.

Outputs in ``OUT``: ``last.pt`` (training state), ``model.pt`` (final weights + config, for
``flat recon``), ``train.log`` (human log), ``metrics.jsonl`` (one JSON record per validation).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import flat.ops as fo
from flat.data.fastmri import SliceDataset
from flat.data.masks import apply_mask, create_mask_for_mask_type
from flat.data.transforms import UnrolledDataTransform, center_crop
from flat.flow.loss import flat_loss
from flat.inference import read_checkpoint
from flat.io import atomic_path
from flat.metrics import psnr, volume_metrics
from flat.model import FlatModel

STATE_FILE = "last.pt"
MODEL_FILE = "model.pt"


# ---------------------------------------------------------------------------------------- data
def _seed_int(*parts: int) -> int:
    """A 31-bit seed from integers (stable across runs and processes)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 1099511628211) % (1 << 64)
    return h % (1 << 31)


class TrainSlices:
    """Training slices with full k-space (for x_gt), seeded random masks and flips.

    ``__getitem__(i)`` for the epoch set by :meth:`set_epoch` returns a dict:
    masked_kspace (C, H, W) complex64, kspace (C, H, W) complex64 (fully sampled, for the velocity
    target), mask (W,) bool, num_low_frequencies int, target (h, w) float32, max_value float.
    """

    def __init__(self, root, data_cfg, seed: int):
        self.raw = SliceDataset(root, transform=None, require_target=True)
        self.mask_func = create_mask_for_mask_type(
            data_cfg.mask_type, list(data_cfg.center_fractions), list(data_cfg.accelerations))
        self.augment = data_cfg.augment
        self.seed = seed
        self.epoch = 0
        self.n = len(self.raw) if not data_cfg.max_slices else min(len(self.raw), data_cfg.max_slices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        kspace, _, target, attrs, fname, slice_num = self.raw[i]
        k = torch.as_tensor(np.ascontiguousarray(kspace)).to(torch.complex64)  # (C, H, W)
        tgt = torch.as_tensor(np.asarray(target, dtype=np.float32))  # (h, w)
        C, H, W = k.shape
        pad_l, pad_r = int(attrs.get("padding_left", 0)), int(attrs.get("padding_right", W))
        if self.augment:
            g = torch.Generator().manual_seed(_seed_int(self.seed, self.epoch, i, 1))
            flip_h, flip_w = torch.rand(2, generator=g) < 0.5
            # an image flip keeps the centre crop aligned only if the crop margin is even;
            # a W flip would move header padding, so skip it when there is any
            dims = []
            if flip_h and (H - tgt.shape[-2]) % 2 == 0:
                dims.append(-2)
            if flip_w and (W - tgt.shape[-1]) % 2 == 0 and pad_l <= 0 and pad_r >= W:
                dims.append(-1)
            if dims:
                k = fo.fft2c(torch.flip(fo.ifft2c(k.unsqueeze(0)), dims)).squeeze(0).contiguous()
                tgt = torch.flip(tgt, dims).contiguous()
        mask_seed = (self.seed, self.epoch, i)
        masked, m, nlf = apply_mask(k, self.mask_func, seed=mask_seed, padding=(max(pad_l, 0), pad_r))
        max_value = float(attrs["max"]) if "max" in attrs else float(tgt.max())
        return {"masked_kspace": masked.to(torch.complex64).contiguous(), "kspace": k,
                "mask": m.reshape(-1).bool(), "num_low_frequencies": int(nlf), "target": tgt,
                "max_value": max_value}


def collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise ValueError(f"train.batch_size: slices of different shapes {sorted(shapes)} cannot be "
                                 f"batched; use --set train.batch_size=1")
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], (int, float)):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


def epoch_order(n: int, seed: int, epoch: int, world: int, rank: int, batch_size: int) -> list[int]:
    """This rank's sample indices for an epoch: one seeded permutation, trimmed to a whole number of
    global batches (every rank takes the same number of steps), dealt out round-robin."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed_int(seed, epoch, 7))).tolist()
    per_step = world * batch_size
    usable = (n // per_step) * per_step
    if usable == 0:
        raise ValueError(f"--train: {n} slices cannot fill one step of {world} process(es) x batch size "
                         f"{batch_size}")
    return perm[:usable][rank::world]


# ---------------------------------------------------------------------------------- validation
def validate(model, val_root, data_cfg, *, backend=None, progress=False, max_slices: int = 0) -> dict:
    """fastMRI metrics (NMSE, PSNR, SSIM per volume, averaged over volumes) of the final output, and
    the PSNR of every intermediate state x_0 … x_K (the trajectory of the flow)."""
    mask_func = create_mask_for_mask_type(data_cfg.mask_type, list(data_cfg.center_fractions),
                                          list(data_cfg.accelerations))
    ds = SliceDataset(val_root, transform=UnrolledDataTransform(mask_func, use_seed=True), require_target=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_vol: dict[str, dict] = {}
    n = len(ds) if not max_slices else min(len(ds), max_slices)
    with torch.no_grad():
        for i in tqdm(range(n), desc="validate", leave=False, disable=not progress):
            s = ds[i]
            out = model(s.masked_kspace.unsqueeze(0).to(device), s.mask.to(device), s.num_low_frequencies,
                        backend=backend)
            traj = [center_crop(out.magnitude(k)[0], s.target.shape).float().cpu().numpy()
                    for k in range(len(out.images))]
            v = per_vol.setdefault(s.fname, {"traj": [], "target": [], "max": s.max_value})
            v["traj"].append(traj)
            v["target"].append(s.target.numpy())
    model.train(was_training)
    rows, cascade = [], []
    for v in per_vol.values():
        gt = np.stack(v["target"])
        traj = [np.stack([t[k] for t in v["traj"]]) for k in range(len(v["traj"][0]))]
        rows.append(volume_metrics(gt, traj[-1], v["max"]))
        cascade.append([psnr(gt, t, v["max"]) for t in traj])
    res = {k: float(np.mean([r[k] for r in rows])) for k in ("NMSE", "PSNR", "SSIM")}
    res["psnr_per_cascade"] = [float(x) for x in np.mean(np.array(cascade), axis=0)]
    res["volumes"] = len(rows)
    return res


# ---------------------------------------------------------------------------------- training
def lr_factor(cfg_train, step: int, total_steps: int, elapsed_s: float = 0.0) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up, then cosine decay to 2 %.

    A pure function of (step, elapsed time), so a resumed run continues on the same curve. With a
    wall-clock cap (``train.time_limit_s``) the decay follows whichever of steps or time is further
    along, so a run stopped by the clock still ends at a small learning rate.
    """
    warm = cfg_train.warmup_steps
    if warm and step < warm:
        return (step + 1) / warm
    if cfg_train.lr_schedule == "constant":
        return 1.0
    p = (step - warm) / max(1, total_steps - warm)
    if cfg_train.time_limit_s:
        p = max(p, elapsed_s / cfg_train.time_limit_s)
    p = min(1.0, p)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))


def _shared_elapsed(elapsed: float, distributed: bool) -> float:
    """Rank 0's clock, so that every rank uses the same LR and stops at the same step."""
    if not distributed:
        return elapsed
    t = torch.tensor([elapsed], dtype=torch.float64)
    dist.broadcast(t, 0)
    return float(t.item())


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


class _Log:
    def __init__(self, out: Path, enabled: bool, echo: bool = True):
        self.enabled, self.echo = enabled, echo
        self.path = out / "train.log"

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        if self.echo:
            tqdm.write(line, file=sys.stdout)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# bookkeeping keys that may change between a run and its resumption
_BOOKKEEPING = ("threads", "log_every", "checkpoint_every", "val_every")


def _identity(cfg_dict) -> dict | None:
    """The part of a config that defines a run (what must match to resume it)."""
    if not isinstance(cfg_dict, dict):
        return None
    d = {k: dict(v) for k, v in cfg_dict.items()}
    for k in _BOOKKEEPING:
        d.get("train", {}).pop(k, None)
    return d


def save_model(path, model, cfg, meta: dict | None = None) -> None:
    """Write a ``flat-model`` checkpoint atomically (config + weights + metadata)."""
    with atomic_path(path) as tmp:
        torch.save({"kind": "flat-model", "version": 1, "config": cfg.to_dict(),
                    "model": model.state_dict(), "meta": meta or {}}, tmp)


def train(cfg, train_root, val_root, out_dir, *, device=None, backend=None, progress=True,
          echo=True, init_from=None, _stop_after_steps: int | None = None) -> dict:
    """Train (or resume) a model; returns ``{"model", "history", "global_step", "elapsed_s"}``.

    ``init_from``: a fastMRI VarNet state dict (path or dict) whose weights a *new* run starts
    from; ``cfg.model`` must come from :func:`flat.model.varnet.varnet_model_config` of the same
    weights (``flat train --init-from`` does this; docs/varnet.md). A resumed run ignores it.
    ``_stop_after_steps`` (tests) raises :class:`KeyboardInterrupt` after that many optimiser steps
    *in this call*, without checkpointing, like a kill.
    """
    cfg.validate()
    tc = cfg.train
    world, rank, local = _dist_info()
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    threads = tc.threads or max(1, (os.cpu_count() or 1) // world)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(cfg, train_root, val_root, out_dir, device, backend, progress, echo,
                      _stop_after_steps, world, rank, distributed, threads, init_from)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg, train_root, val_root, out_dir, device, backend, progress, echo, _stop_after_steps,
           world, rank, distributed, threads, init_from=None) -> dict:

    tc = cfg.train

    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if distributed:
        dist.barrier()
    log = _Log(out, rank == 0, echo)

    data = TrainSlices(train_root, cfg.data, tc.seed)
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = FlatModel(cfg.model).to(device)
    steps_per_epoch = len(epoch_order(len(data), tc.seed, 0, world, rank, tc.batch_size)) // tc.batch_size
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    epoch, step_in_epoch, global_step, elapsed, history = 0, 0, 0, 0.0, []
    state_path = out / STATE_FILE
    if state_path.exists():
        ck = read_checkpoint(state_path, map_location=device)
        if _identity(ck.get("config")) != _identity(cfg.to_dict()):
            raise ValueError(f"--out: {out} holds a run with a different config; use a new --out "
                             f"or the same --config/--set as before")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        epoch, step_in_epoch, global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        elapsed, history = ck["elapsed_s"], list(ck["history"])
        torch.set_rng_state(ck["rng"])
        log(f"resumed from {state_path} at epoch {epoch}, step {global_step}")
    else:
        if init_from is not None:  # fastMRI VarNet weights (flat/model/varnet.py, docs/varnet.md)
            from flat.model.varnet import load_varnet_weights

            load_varnet_weights(model, init_from)
            log(f"initial weights: the fastMRI VarNet of {init_from if isinstance(init_from, (str, os.PathLike)) else 'a state dict'}")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"new run: {len(data)} training slices, {steps_per_epoch} steps/epoch, {total_steps} steps, "
            f"{world} process(es), {threads} thread(s) each, {n_params} parameters")
        log(f"config: {json.dumps(cfg.to_dict())}")
        if cfg.model.mode == "flat":
            log(f"σ = {cfg.model.noise_scale():.4f}; DC weight per step Δt_k/σ² = "
                + ", ".join(f"{w:.3f}" for w in cfg.model.dc_weights()))

    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state():
        if rank != 0:
            return
        with atomic_path(state_path) as tmp:
            torch.save({"kind": "flat-train-state", "version": 1, "config": cfg.to_dict(),
                        "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch, "step_in_epoch": step_in_epoch,
                        "global_step": global_step, "elapsed_s": elapsed, "history": history,
                        "rng": torch.get_rng_state()}, tmp)

    def run_validation():
        if rank == 0:
            res = validate(model, val_root, cfg.data, backend=backend, progress=progress)
            res.update(epoch=epoch, step=global_step)
            history.append(res)
            log(f"val epoch {epoch} step {global_step}: PSNR {res['PSNR']:.2f} SSIM {res['SSIM']:.4f} "
                f"NMSE {res['NMSE']:.4f} | PSNR per cascade "
                + " ".join(f"{p:.2f}" for p in res["psnr_per_cascade"]))
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(res) + "\n")
        if distributed:
            dist.barrier()

    vel_w = tc.velocity_weight if cfg.model.mode == "flat" else 0.0
    steps_this_call = 0
    done = global_step >= total_steps
    t_start = time.time() - elapsed
    stopped_by_time = False
    model.train()
    while not done and epoch < tc.epochs:
        data.set_epoch(epoch)
        order = epoch_order(len(data), tc.seed, epoch, world, rank, tc.batch_size)
        batches = [order[j:j + tc.batch_size] for j in range(0, len(order), tc.batch_size)]
        bar = tqdm(total=len(batches), initial=step_in_epoch, desc=f"{cfg.model.mode} epoch {epoch}",
                   leave=False, disable=not progress or rank != 0, dynamic_ncols=True)
        while step_in_epoch < len(batches):
            b = collate([data[i] for i in batches[step_in_epoch]])
            kspace = b["kspace"].to(device)
            o = net(b["masked_kspace"].to(device), b["mask"].to(device), b["num_low_frequencies"].to(device),
                    backend=backend)
            # the straight path's end point is a target: no gradient into (learned) coil maps through it
            x_gt = model.target_image(kspace, o).detach() if vel_w > 0 else None
            loss, parts = flat_loss(o.images, o.times, o.scale, b["target"].to(device), b["max_value"].to(device),
                                    x_gt, ssim_weight=tc.ssim_weight, l1_weight=tc.l1_weight,
                                    velocity_weight=vel_w)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {global_step}; "
                                         f"lower train.lr or check model.sigma")
            now = _shared_elapsed(time.time() - t_start, distributed and bool(tc.time_limit_s))
            lr = tc.lr * lr_factor(tc, global_step, total_steps, now)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            step_in_epoch += 1
            global_step += 1
            steps_this_call += 1
            elapsed = time.time() - t_start
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
            if global_step % tc.log_every == 0:
                log(f"step {global_step}/{total_steps} epoch {epoch} lr {lr:.2e} "
                    + " ".join(f"{k} {v:.4f}" for k, v in parts.items()))
            if _stop_after_steps is not None and steps_this_call >= _stop_after_steps:
                bar.close()
                raise KeyboardInterrupt("simulated kill")
            if global_step >= total_steps:
                done = True
            if tc.time_limit_s and _shared_elapsed(elapsed, distributed) >= tc.time_limit_s:
                done = stopped_by_time = True
            if done:
                break
            if global_step % tc.checkpoint_every == 0:
                save_state()
        bar.close()
        if step_in_epoch >= len(batches):
            epoch, step_in_epoch = epoch + 1, 0
            if epoch % tc.val_every == 0 and not done and epoch < tc.epochs:
                run_validation()
            save_state()
    if stopped_by_time:
        log(f"time limit train.time_limit_s={tc.time_limit_s:g} reached at step {global_step}")
    if not history or history[-1]["step"] != global_step:
        run_validation()
    save_state()
    if rank == 0:
        save_model(out / MODEL_FILE, model, cfg, {"global_step": global_step, "elapsed_s": elapsed,
                                                 "history": history})
    if distributed:  # DDP keeps replicas in lock-step; check it, cheaply, once
        with torch.no_grad():
            flat_params = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])
            mine = torch.stack([flat_params.sum(), flat_params.abs().sum()]).double()
            gathered = [torch.zeros_like(mine) for _ in range(world)]
            dist.all_gather(gathered, mine)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"DDP replicas diverged: parameter checksums {[g.tolist() for g in gathered]}")
        log(f"all {world} ranks agree (parameter checksum {gathered[0][0].item():.6e})")
        dist.barrier()
    log(f"done: {global_step} steps in {elapsed:.1f} s; weights in {out / MODEL_FILE}")
    return {"model": model, "history": history, "global_step": global_step, "elapsed_s": elapsed}
