"""The training data: slices with their fully sampled k-space, seeded masks and flips, batched.

Training is deterministic and resumable because every random choice is a pure function of seeds:
the data order of epoch e is a permutation seeded by (seed, e) (:func:`epoch_order`), the
undersampling mask and flips of sample i in epoch e are seeded by (seed, e, i)
(:class:`TrainSlices`), so a run resumed at (epoch, step) sees exactly the batches it would have.
"""
from __future__ import annotations

import numpy as np
import torch

import flat.ops as fo
from flat.data.fastmri import SliceDataset
from flat.data.masks import apply_mask, create_mask_for_mask_type


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
