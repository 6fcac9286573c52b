"""Validation during training: fastMRI's metrics of a model on a folder of fully sampled files,
and the PSNR of every state of its trajectory (:mod:`flat.metrics` holds the definitions)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from flat.data.fastmri import SliceDataset
from flat.data.masks import create_mask_for_mask_type
from flat.data.transforms import UnrolledDataTransform, center_crop
from flat.metrics import psnr, volume_metrics


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
