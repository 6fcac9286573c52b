"""The training data: slices with their fully sampled k-space, seeded masks and flips, batched.

Training is deterministic and resumable because every random choice is a pure function of seeds:
the data order of epoch e is a permutation seeded by (seed, e) (:func:`epoch_order`), the
undersampling mask and flips of sample i in epoch e are seeded by (seed, e, i)
(:class:`TrainSlices`), so a run resumed at (epoch, step) sees exactly the batches it would have.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

import flat.ops as fo
from flat.coils import MapCache
from flat.data.fastmri import SliceDataset
from flat.data.masks import apply_mask, create_mask_for_mask_type


def _seed_int(*parts: int) -> int:
    """A 31-bit seed from integers (stable across runs and processes)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 1099511628211) % (1 << 64)
    return h % (1 << 31)


def sample_slices(raw: SliceDataset, data_cfg, seed: int) -> list[int]:
    """The dataset indices a run trains on, ascending: fastMRI's ``sample_rate`` (a random fraction
    of the slices) or ``volume_sample_rate`` (of whole volumes), drawn once from ``seed``, then the
    first ``max_slices`` of those."""
    n = len(raw)
    g = torch.Generator().manual_seed(_seed_int(seed, 11))
    if data_cfg.volume_sample_rate < 1:
        vols = list(raw.volume_slices().values())
        keep = round(len(vols) * data_cfg.volume_sample_rate)
        chosen = sorted(torch.randperm(len(vols), generator=g)[:max(1, keep)].tolist())
        idx = [i for v in chosen for i in vols[v]]
    elif data_cfg.sample_rate < 1:
        keep = round(n * data_cfg.sample_rate)
        idx = sorted(torch.randperm(n, generator=g)[:max(1, keep)].tolist())
    else:
        idx = list(range(n))
    return idx[:data_cfg.max_slices] if data_cfg.max_slices else idx


class TrainSlices:
    """Training slices with full k-space (for x_gt), seeded random masks and flips.

    ``__getitem__((epoch, i))`` (or ``i`` for the epoch set by :meth:`set_epoch`) returns a dict:
    masked_kspace (C, H, W) complex64, kspace (C, H, W) complex64 (fully sampled, for the velocity
    target), mask (W,) bool, num_low_frequencies int, target (h, w) float32, max_value float.
    The sample is a pure function of (seed, epoch, i), so DataLoader workers (which get the epoch
    with each index) produce exactly what the main process would. Construction reads only the
    files' headers; every slice read opens its file in the process that reads it (a worker), so
    no HDF5 handle crosses a fork.
    """

    def __init__(self, root, data_cfg, seed: int, maps: Optional[str] = None):
        self.maps = None if maps is None else MapCache(maps)
        self.raw = SliceDataset(root, transform=None, require_target=True)
        self.mask_func = create_mask_for_mask_type(
            data_cfg.mask_type, list(data_cfg.center_fractions), list(data_cfg.accelerations))
        self.augment = data_cfg.augment
        self.seed = seed
        self.epoch = 0
        self.indices = sample_slices(self.raw, data_cfg, seed)  # i -> index into the raw dataset
        self.n = len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key) -> dict:
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        return self._sample(int(epoch), int(i))

    def _sample(self, epoch: int, i: int) -> dict:
        kspace, _, target, attrs, fname, slice_num = self.raw[self.indices[i]]
        k = raw_k = torch.as_tensor(np.ascontiguousarray(kspace)).to(torch.complex64)  # (C, H, W)
        tgt = torch.as_tensor(np.asarray(target, dtype=np.float32))  # (h, w)
        C, H, W = k.shape
        pad_l, pad_r = int(attrs.get("padding_left", 0)), int(attrs.get("padding_right", W))
        dims: list[int] = []
        if self.augment:
            g = torch.Generator().manual_seed(_seed_int(self.seed, epoch, i, 1))
            flip_h, flip_w = torch.rand(2, generator=g) < 0.5
            # an image flip keeps the centre crop aligned only if the crop margin is even;
            # a W flip would move header padding, so skip it when there is any
            if flip_h and (H - tgt.shape[-2]) % 2 == 0:
                dims.append(-2)
            if flip_w and (W - tgt.shape[-1]) % 2 == 0 and pad_l <= 0 and pad_r >= W:
                dims.append(-1)
            if dims:
                k = fo.fft2c(torch.flip(fo.ifft2c(k.unsqueeze(0)), dims)).squeeze(0).contiguous()
                tgt = torch.flip(tgt, dims).contiguous()
        mask_seed = (self.seed, epoch, i)
        masked, m, nlf = apply_mask(k, self.mask_func, seed=mask_seed, padding=(max(pad_l, 0), pad_r))
        max_value = float(attrs["max"]) if "max" in attrs else float(tgt.max())
        out = {"masked_kspace": masked.to(torch.complex64).contiguous(), "kspace": k,
               "mask": m.reshape(-1).bool(), "num_low_frequencies": int(nlf), "target": tgt,
               "max_value": max_value}
        if self.maps is not None:  # from the unflipped slice (only its centre is read), flipped like it
            out["sens"] = self.maps.get(fname, slice_num, raw_k, int(nlf), flip_dims=dims)
        return out


def collate(samples: list[dict]) -> dict:
    """Stack the samples' tensors (one shape per batch), numbers into tensors, the rest as lists."""
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


class EpochBatches:
    """The batch sampler of the training DataLoader: the batches of one epoch from a given step on,
    as lists of ``(epoch, i)`` keys, for this rank (:func:`epoch_order`). It runs in the main
    process; :meth:`start` moves it to (epoch, step) before each pass, so persistent workers
    serve every epoch and a resumed run gets exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, seed: int, world: int, rank: int, batch_size: int):
        self.n, self.seed, self.world, self.rank, self.batch_size = n, seed, world, rank, batch_size
        self.epoch, self.step = 0, 0

    def start(self, epoch: int, step: int) -> "EpochBatches":
        self.epoch, self.step = epoch, step
        return self

    def batches(self, epoch: int) -> list[list[int]]:
        order = epoch_order(self.n, self.seed, epoch, self.world, self.rank, self.batch_size)
        return [order[j:j + self.batch_size] for j in range(0, len(order), self.batch_size)]

    def __len__(self) -> int:
        return max(0, len(self.batches(self.epoch)) - self.step)

    def __iter__(self):
        for b in self.batches(self.epoch)[self.step:]:
            yield [(self.epoch, i) for i in b]


def default_workers(processes_per_node: int = 1) -> int:
    """``train.workers=-1``: the CPUs this process may use (``os.sched_getaffinity``), shared by
    the training processes of the node, less one for the step itself; at most 8, at least 0."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, processes_per_node) - 1))


def make_loader(data: TrainSlices, sampler: EpochBatches, workers: int, pin_memory: bool):
    """The training DataLoader: ``workers`` processes (0: the main process), persistent across
    epochs, batches in sampler order whatever the worker timing, pinned on CUDA."""
    from torch.utils.data import DataLoader

    return DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      prefetch_factor=2 if workers > 0 else None)
