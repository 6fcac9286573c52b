"""Per-slice transforms from fastMRI arrays to FLAT's inputs (complex tensors, no normalisation).

:class:`UnrolledDataTransform` is fastMRI's ``VarNetDataTransform`` with complex tensors: it
undersamples a fully sampled slice with a mask function (seeded per volume by the file name when
``use_seed``, so every slice of a volume -- and every epoch -- gets the same mask), forces the header's
padding columns out of the mask, or uses the ``mask`` of an already undersampled test file.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from flat.data.masks import MaskFunc, apply_mask, num_low_frequencies_from_mask, volume_seed


class UnrolledSample(NamedTuple):
    """One slice, ready for an unrolled network.

    masked_kspace: (C, H, W) complex64, zero (+0.0) where not sampled.
    mask: (W,) bool column mask (padding columns False).
    num_low_frequencies: width of the fully sampled centre (ACS) block.
    target: (h, w) float32 ``reconstruction_rss`` slice, or an empty (0,) tensor if the file has none.
    max_value: the volume's ``max`` attr (0.0 without a target), the metrics' data range.
    crop_size: (h, w) the output crop (target shape, else header recon size, clipped to the image).
    fname: file name (with suffix). slice_num: slice index in the volume.
    """

    masked_kspace: torch.Tensor
    mask: torch.Tensor
    num_low_frequencies: int
    target: torch.Tensor
    max_value: float
    crop_size: Tuple[int, int]
    fname: str
    slice_num: int


def center_crop(data, shape: Sequence[int]):
    """Centre-crop the last two dims to ``shape`` (fastMRI's ``transforms.center_crop``)."""
    h, w = int(shape[0]), int(shape[1])
    if not (0 < h <= data.shape[-2] and 0 < w <= data.shape[-1]):
        raise ValueError(f"cannot centre-crop shape {tuple(data.shape)} to {(h, w)}")
    top = (data.shape[-2] - h) // 2
    left = (data.shape[-1] - w) // 2
    return data[..., top : top + h, left : left + w]


def output_crop_size(crop_size: Sequence[int], image_shape: Sequence[int]) -> Tuple[int, int]:
    """The crop fastMRI's VarNet applies to its output: the recon size, except that an image
    narrower than it (some fastMRI brain files) is cropped to a square of its width; and never
    larger than the image."""
    h, w = int(crop_size[0]), int(crop_size[1])
    H, W = int(image_shape[-2]), int(image_shape[-1])
    if W < w:
        h, w = W, W
    return min(h, H), min(w, W)


def padding_mask(num_cols: int, padding_left: int, padding_right: int) -> torch.Tensor:
    """(W,) bool: True on the acquired columns ``[padding_left, padding_right)``."""
    keep = torch.zeros(num_cols, dtype=torch.bool)
    keep[max(int(padding_left), 0) : max(int(padding_right), 0)] = True
    return keep


class UnrolledDataTransform:
    """fastMRI ``(kspace, mask, target, attrs, fname, slice_num)`` -> :class:`UnrolledSample`.

    Args:
        mask_func: a mask function from :func:`flat.data.masks.create_mask_for_mask_type`, used
            for fully sampled files. Files that carry a ``mask`` (already undersampled) use it
            instead and ``mask_func`` is ignored for them. ``None`` with a fully sampled file
            keeps all (non-padding) columns.
        use_seed: seed the mask per volume with ``tuple(map(ord, fname))`` (fastMRI's
            convention): deterministic, identical for all slices of a volume.

    For test files the centre width is the file's ``num_low_frequency`` attr (fastMRI's test
    files carry it), else inferred from the mask as fastMRI's VarNet does
    (:func:`flat.data.masks.num_low_frequencies_from_mask`); fastMRI's transform reports 0 there.
    """

    def __init__(self, mask_func: Optional[MaskFunc] = None, use_seed: bool = True):
        self.mask_func = mask_func
        self.use_seed = use_seed

    def __call__(self, kspace, mask, target, attrs, fname, slice_num) -> UnrolledSample:
        k = torch.as_tensor(np.ascontiguousarray(kspace))
        if not torch.is_complex(k):
            raise ValueError(f"{fname}: kspace must be complex, got {k.dtype}")
        k = k.to(torch.complex64)
        if k.ndim != 3:
            raise ValueError(f"{fname}: slice kspace must be (C, H, W), got shape {tuple(k.shape)}")
        W = k.shape[-1]
        pad_l = int(attrs.get("padding_left", 0))
        pad_r = int(attrs.get("padding_right", W))
        keep = padding_mask(W, pad_l, pad_r)
        if mask is not None:
            m = torch.as_tensor(np.asarray(mask).reshape(-1).astype(bool)) & keep
            masked = torch.where(m, k, torch.zeros((), dtype=k.dtype))  # zeros are +0.0
            # fastMRI's test files record the centre width as attr num_low_frequency
            num_low = int(attrs.get("num_low_frequency", 0)) or num_low_frequencies_from_mask(m)
        elif self.mask_func is not None:
            seed = volume_seed(fname) if self.use_seed else None
            masked, m, num_low = apply_mask(k, self.mask_func, seed=seed, padding=(max(pad_l, 0), pad_r))
            m = m.reshape(-1).bool()
        else:
            m = keep
            masked = torch.where(m, k, torch.zeros((), dtype=k.dtype))
            num_low = int(m.sum())
        if target is not None:
            target_t = torch.as_tensor(np.asarray(target, dtype=np.float32))
            max_value = float(attrs["max"]) if "max" in attrs else float(target_t.max())
            crop = (int(target_t.shape[-2]), int(target_t.shape[-1]))
        else:
            target_t = torch.zeros(0, dtype=torch.float32)
            max_value = 0.0
            rs = attrs.get("recon_size", (k.shape[-2], W))
            crop = output_crop_size((rs[0], rs[1]), k.shape)
        return UnrolledSample(
            masked_kspace=masked.contiguous(),
            mask=m,
            num_low_frequencies=int(num_low),
            target=target_t,
            max_value=max_value,
            crop_size=crop,
            fname=str(fname),
            slice_num=int(slice_num),
        )
