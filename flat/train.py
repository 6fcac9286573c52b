"""``flat train``: train (or resume) a FLAT / vanilla unrolled model on fastMRI-format data.

Also ``torchrun --nproc_per_node N -m flat train ...`` (DistributedDataParallel; gloo on the CPU,
NCCL on GPUs). Training is deterministic and resumable: the data order of epoch e is a permutation
seeded by (seed, e); the undersampling mask and flips of sample i in epoch e are seeded by
(seed, e, i) (:mod:`flat.data.slices`); ``OUT/last.pt`` holds model, optimiser, LR schedule and the
position in the epoch (:mod:`flat.checkpoint`). Run the same command again after a kill and it
continues exactly where the last checkpoint left off.

Outputs in ``OUT``: ``last.pt`` (training state), ``model.pt`` (final weights + config, for
``flat recon``), ``train.log`` (human log), ``metrics.jsonl`` (one JSON record per validation).

The pieces live beside what they are about: the data in :mod:`flat.data.slices`, validation in
:mod:`flat.validation`, the checkpoint format in :mod:`flat.checkpoint`, the loss in
:mod:`flat.flow.loss`; this module is the loop (:class:`Run`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from flat.checkpoint import BEST_FILE, MODEL_FILE, STATE_FILE, read_train_state, save_model, save_train_state
from flat.coils import MapCache
from flat.data.slices import EpochBatches, TrainSlices, collate, default_workers, epoch_order, make_loader
from flat.flow.loss import flat_loss
from flat.io import write_jsonl
from flat.model import FlatModel
from flat.ops.backends import resolve
from flat.validation import validate

# names other modules and tests import from here
__all__ = ["MODEL_FILE", "STATE_FILE", "Run", "TrainSlices", "collate", "epoch_order", "lr_factor",
           "save_model", "train", "validate"]


def train(cfg, train_root, val_root, out_dir, *, device=None, backend=None, progress=True,
          echo=True, init_from=None, tensorboard=None, _stop_after_steps: int | None = None) -> dict:
    """Train (or resume) a model; returns ``{"model", "history", "global_step", "elapsed_s"}``.

    ``init_from``: a fastMRI VarNet state dict (path or dict) whose weights a *new* run starts
    from; ``cfg.model`` must come from :func:`flat.model.varnet.varnet_model_config` of the same
    weights (``flat train --init-from`` does this; docs/varnet.md). A resumed run ignores it.
    ``tensorboard``: a folder for TensorBoard event files (rank 0; needs the ``tensorboard``
    package). ``_stop_after_steps`` (tests) raises :class:`KeyboardInterrupt` after that many optimiser steps
    *in this call*, without checkpointing, like a kill.
    """
    cfg.validate()
    world, rank, local = _dist_info()
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // world)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = Run(cfg, train_root, val_root, out_dir, device=device, backend=backend, progress=progress,
                  echo=echo, world=world, rank=rank, threads=threads, init_from=init_from,
                  tensorboard=tensorboard)
        return run.fit(_stop_after_steps)
    finally:
        torch.set_num_threads(threads_before)


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


class Run:
    """One training run in ``out_dir``: its position (what ``last.pt`` holds) and the steps that
    advance it. Built fresh or resumed from ``last.pt``; :meth:`fit` trains to the end.

    Every rank builds one; rank 0 alone writes files and validates, the others wait at barriers.
    """

    def __init__(self, cfg, train_root, val_root, out_dir, *, device, backend, progress, echo,
                 world, rank, threads, init_from=None, tensorboard=None):
        self.cfg, self.tc = cfg, cfg.train
        self.val_root, self.device, self.backend, self.progress = val_root, device, backend, progress
        self.world, self.rank, self.distributed = world, rank, world > 1
        self.out = Path(out_dir)
        if rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.distributed:
            dist.barrier()
        self.log = _Log(self.out, rank == 0, echo)
        self.tb = None
        if tensorboard is not None and rank == 0:
            self.tb = tensorboard_writer(tensorboard)
        self.log(f"device {device}, data-consistency backend {resolve(backend, device.type)}")

        tc = self.tc
        # model.sens=espirit: maps computed once per slice by the data pipeline, not per forward
        maps = "espirit" if cfg.model.sens == "espirit" else None
        self.data = TrainSlices(train_root, cfg.data, tc.seed, maps=maps)
        self.val_maps = MapCache(maps) if maps else None
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model = FlatModel(cfg.model).to(device)
        self.model.set_memory_levers(tc.checkpoint_cascades, tc.amp)  # docs/training.md
        # the DataLoader (flat/data/slices.py): built on first use, its workers persist over epochs
        self.sampler = EpochBatches(len(self.data), tc.seed, world, rank, tc.batch_size)
        self.workers = tc.workers if tc.workers >= 0 else default_workers(
            int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        self.loader = None
        self.steps_per_epoch = len(self.sampler.batches(0))
        self.total_steps = tc.max_steps or tc.epochs * self.steps_per_epoch
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

        self.epoch, self.step_in_epoch, self.global_step, self.elapsed, self.history = 0, 0, 0, 0.0, []
        self.state_path = self.out / STATE_FILE
        if self.state_path.exists():
            self._resume()
        else:
            if init_from is not None:  # fastMRI VarNet weights (flat/model/varnet.py, docs/varnet.md)
                from flat.model.varnet import load_varnet_weights

                load_varnet_weights(self.model, init_from)
                self.log(f"initial weights: the fastMRI VarNet of {init_from if isinstance(init_from, (str, os.PathLike)) else 'a state dict'}")
            self._log_new_run(threads)
        metrics = self.out / "metrics.jsonl"
        if rank == 0 and (self.history or metrics.exists()):
            # a kill after a validation but before its checkpoint leaves a record that this run
            # redoes: keep exactly the records of the state resumed from, so none repeats
            write_jsonl(metrics, self.history)
        self.net = self.model
        if self.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # the velocity term exists only for FLAT; the vanilla baseline trains on the final output
        self.velocity_weight = tc.velocity_weight if cfg.model.mode == "flat" else 0.0

    # ------------------------------------------------------------------------------- the loop
    def fit(self, stop_after_steps: int | None = None) -> dict:
        """Train to ``train.max_steps`` / ``train.epochs`` or the time limit; validate and write
        ``model.pt`` at the end. ``stop_after_steps``: see :func:`train`."""
        self.stop_after_steps, self.steps_this_call = stop_after_steps, 0
        self.done, self.stopped_by_time = self.global_step >= self.total_steps, False
        self.t_start = time.time() - self.elapsed
        self.model.train()
        while not self.done and self.epoch < self.tc.epochs:
            if self._run_epoch():  # the epoch ran to its end
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                if self.epoch % self.tc.val_every == 0 and not self.done and self.epoch < self.tc.epochs:
                    self.validate()
                self.save_state()
        return self._finish()

    def _run_epoch(self) -> bool:
        """The rest of the current epoch, or until done; True if the epoch ran to its end."""
        tc = self.tc
        n_batches = len(self.sampler.batches(self.epoch))
        if self.loader is None:
            self.loader = make_loader(self.data, self.sampler, self.workers, self.device.type == "cuda")
        # the sampler runs in this process: moved to (epoch, step) before the pass, it hands the
        # workers exactly the batches an uninterrupted run would get from here on
        self.sampler.start(self.epoch, self.step_in_epoch)
        batches = iter(self.loader)
        bar = tqdm(total=n_batches, initial=self.step_in_epoch, desc=f"{self.cfg.model.mode} epoch {self.epoch}",
                   leave=False, disable=not self.progress or self.rank != 0, dynamic_ncols=True)
        while self.step_in_epoch < n_batches:
            lr, parts = self._step(next(batches))
            self.step_in_epoch += 1
            self.global_step += 1
            self.steps_this_call += 1
            self.elapsed = time.time() - self.t_start
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
            if self.global_step % tc.log_every == 0:
                if self.tb is not None:
                    for k, v in parts.items():
                        self.tb.add_scalar(f"train/{k}", v, self.global_step)
                    self.tb.add_scalar("train/lr", lr, self.global_step)
                self.log(f"step {self.global_step}/{self.total_steps} epoch {self.epoch} lr {lr:.2e} "
                         + " ".join(f"{k} {v:.4f}" for k, v in parts.items()))
            if self.stop_after_steps is not None and self.steps_this_call >= self.stop_after_steps:
                bar.close()
                raise KeyboardInterrupt("simulated kill")
            if self.global_step >= self.total_steps:
                self.done = True
            if tc.time_limit_s and _shared_elapsed(self.elapsed, self.distributed) >= tc.time_limit_s:
                self.done = self.stopped_by_time = True
            if self.done:
                break
            if self.global_step % tc.checkpoint_every == 0:
                self.save_state()
        bar.close()
        return self.step_in_epoch >= n_batches

    def _step(self, b: dict) -> tuple[float, dict]:
        """One optimiser step on a collated batch (:func:`collate`); returns the LR and the loss terms."""
        tc, model = self.tc, self.model
        dev = {"device": self.device, "non_blocking": True}  # pinned on CUDA: the copy overlaps
        kspace = b["kspace"].to(**dev)
        sens = b["sens"].to(**dev) if "sens" in b else None
        o = self.net(b["masked_kspace"].to(**dev), b["mask"].to(**dev), b["num_low_frequencies"].to(**dev),
                     sens=sens, backend=self.backend)
        # the straight path's end point is a target: no gradient into (learned) coil maps through it
        x_gt = model.target_image(kspace, o).detach() if self.velocity_weight > 0 else None
        loss, parts = flat_loss(o.images, o.times, o.scale, b["target"].to(**dev), b["max_value"].to(**dev),
                                x_gt, ssim_weight=tc.ssim_weight, l1_weight=tc.l1_weight,
                                velocity_weight=self.velocity_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}; "
                                     f"lower train.lr or check model.sigma")
        now = _shared_elapsed(time.time() - self.t_start, self.distributed and bool(tc.time_limit_s))
        lr = tc.lr * lr_factor(tc, self.global_step, self.total_steps, now)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        self.opt.step()
        return lr, parts

    def _finish(self) -> dict:
        """The end of a run: a last validation, ``last.pt`` and ``model.pt``, the DDP check."""
        if self.stopped_by_time:
            self.log(f"time limit train.time_limit_s={self.tc.time_limit_s:g} reached at step {self.global_step}")
        if not self.history or self.history[-1]["step"] != self.global_step:
            self.validate()
        self.save_state()
        if self.rank == 0:
            save_model(self.out / MODEL_FILE, self.model, self.cfg,
                       {"global_step": self.global_step, "elapsed_s": self.elapsed, "history": self.history})
        if self.distributed:
            self._check_replicas()
        self.loader = None  # ends the persistent workers
        if self.tb is not None:
            self.tb.close()
        self.log(f"done: {self.global_step} steps in {self.elapsed:.1f} s; weights in {self.out / MODEL_FILE}")
        return {"model": self.model, "history": self.history, "global_step": self.global_step,
                "elapsed_s": self.elapsed}

    # ------------------------------------------------------------------ state, validation, logs
    def _resume(self) -> None:
        ck = read_train_state(self.state_path, self.cfg, map_location=self.device)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.elapsed, self.history = ck["elapsed_s"], list(ck["history"])
        torch.set_rng_state(ck["rng"])
        self.log(f"resumed from {self.state_path} at epoch {self.epoch}, step {self.global_step}")

    def _log_new_run(self, threads: int) -> None:
        cfg = self.cfg
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"new run: {len(self.data)} training slices, {self.steps_per_epoch} steps/epoch, "
                 f"{self.total_steps} steps, {self.world} process(es), {threads} thread(s) and "
                 f"{self.workers} data worker(s) each, {n_params} parameters")
        self.log(f"config: {json.dumps(cfg.to_dict())}")
        if cfg.model.mode == "flat":
            self.log(f"σ = {cfg.model.noise_scale():.4f}; DC weight per step Δt_k/σ² = "
                     + ", ".join(f"{w:.3f}" for w in cfg.model.dc_weights()))

    def save_state(self) -> None:
        """``last.pt`` (rank 0): everything a resumed run needs to continue exactly."""
        if self.rank != 0:
            return
        save_train_state(self.state_path, cfg=self.cfg, model=self.model, optimizer=self.opt, epoch=self.epoch,
                         step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                         elapsed_s=self.elapsed, history=self.history)

    def validate(self) -> None:
        """Validate (every rank its share of whole volumes, metrics gathered: flat/validation.py);
        rank 0 logs the result, appends it to the history and ``metrics.jsonl``, and writes
        ``best.pt`` when the SSIM is the best so far."""
        res = validate(self.model, self.val_root, self.cfg.data, backend=self.backend, maps=self.val_maps,
                       progress=self.progress and self.rank == 0, rank=self.rank, world=self.world)
        if self.rank == 0:
            res.update(epoch=self.epoch, step=self.global_step)
            best_before = max((h["SSIM"] for h in self.history), default=-math.inf)
            self.history.append(res)
            if res["SSIM"] > best_before:  # a redone validation after a kill rewrites the same file
                save_model(self.out / BEST_FILE, self.model, self.cfg,
                           {"global_step": self.global_step, "epoch": self.epoch, "SSIM": res["SSIM"],
                            "PSNR": res["PSNR"], "NMSE": res["NMSE"]})
            if self.tb is not None:
                for k in ("PSNR", "SSIM", "NMSE"):
                    self.tb.add_scalar(f"val/{k}", res[k], self.global_step)
                self.tb.flush()
            self.log(f"val epoch {self.epoch} step {self.global_step}: PSNR {res['PSNR']:.2f} "
                     f"SSIM {res['SSIM']:.4f} NMSE {res['NMSE']:.4f} | PSNR per cascade "
                     + " ".join(f"{p:.2f}" for p in res["psnr_per_cascade"]))
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(res) + "\n")
        if self.distributed:
            dist.barrier()

    def _check_replicas(self) -> None:
        """DDP keeps replicas in lock-step; check it, cheaply, once."""
        with torch.no_grad():
            flat_params = torch.cat([p.detach().reshape(-1).float().cpu() for p in self.model.parameters()])
            mine = torch.stack([flat_params.sum(), flat_params.abs().sum()]).double()
            gathered = [torch.zeros_like(mine) for _ in range(self.world)]
            dist.all_gather(gathered, mine)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"DDP replicas diverged: parameter checksums {[g.tolist() for g in gathered]}")
        self.log(f"all {self.world} ranks agree (parameter checksum {gathered[0][0].item():.6e})")
        dist.barrier()


# ---------------------------------------------------------------------------------- helpers
def _shared_elapsed(elapsed: float, distributed: bool) -> float:
    """Rank 0's clock, so that every rank uses the same LR and stops at the same step."""
    if not distributed:
        return elapsed
    t = torch.tensor([elapsed], dtype=torch.float64)
    dist.broadcast(t, 0)
    return float(t.item())


def tensorboard_writer(log_dir):
    """A ``SummaryWriter`` for ``--tensorboard DIR``; a clear error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard: the tensorboard package is not installed (pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(log_dir))


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


class _Log:
    """Timestamped lines to ``OUT/train.log`` (and stdout when ``echo``), rank 0 only."""

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
