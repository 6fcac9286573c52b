"""Validation during training: fastMRI's metrics of a model on a folder of fully sampled files,
and the PSNR of every state of its trajectory (:mod:`flat.metrics` holds the definitions).

Under DistributedDataParallel every rank validates its share of whole volumes (contiguous runs of
the sorted volumes, as fastMRI's ``VolumeSampler``), so no rank waits for another's work and a
volume's metrics never mix slices from two processes; the per-volume numbers are gathered and
averaged in the single-process order, so the result is the single-process one."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from flat.coils import MapCache
from flat.data.fastmri import SliceDataset
from flat.data.masks import create_mask_for_mask_type
from flat.data.transforms import UnrolledDataTransform, center_crop
from flat.metrics import psnr, volume_metrics


def validate(model, val_root, data_cfg, *, backend=None, progress=False, max_slices: int = 0,
             rank: int = 0, world: int = 1, maps: Optional[MapCache] = None) -> dict:
    """fastMRI metrics (NMSE, PSNR, SSIM per volume, averaged over volumes) of the final output, and
    the PSNR of every intermediate state x_0 … x_K (the trajectory of the flow). With ``world`` > 1
    (an initialised process group) each rank runs :func:`rank_volumes` and every rank returns
    the same, complete result. A ``model.sens=espirit`` model gets its maps from ``maps`` (a
    :class:`flat.coils.MapCache` the caller keeps across validations), computed once per slice."""
    mask_func = create_mask_for_mask_type(data_cfg.mask_type, list(data_cfg.center_fractions),
                                          list(data_cfg.accelerations))
    ds = SliceDataset(val_root, transform=UnrolledDataTransform(mask_func, use_seed=True), require_target=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_vol: dict[str, dict] = {}
    n = len(ds) if not max_slices else min(len(ds), max_slices)
    order = list(ds.volume_slices())  # volume names in dataset (sorted file) order
    if maps is None and getattr(model.cfg, "sens", None) == "espirit":
        maps = MapCache("espirit")
    mine = [i for name in rank_volumes(order, rank, world) for i in ds.volume_slices()[name] if i < n]
    with torch.no_grad():
        for i in tqdm(mine, desc="validate", leave=False, disable=not progress):
            s = ds[i]
            sens = None
            if maps is not None:
                sens = maps.get(s.fname, s.slice_num, s.masked_kspace, s.num_low_frequencies)[None].to(device)
            out = model(s.masked_kspace.unsqueeze(0).to(device), s.mask.to(device), s.num_low_frequencies,
                        sens=sens, backend=backend)
            traj = [center_crop(out.magnitude(k)[0], s.target.shape).float().cpu().numpy()
                    for k in range(len(out.images))]
            v = per_vol.setdefault(s.fname, {"traj": [], "target": [], "max": s.max_value})
            v["traj"].append(traj)
            v["target"].append(s.target.numpy())
    model.train(was_training)
    per_volume = {}  # name -> (metrics, PSNR per state)
    for name, v in per_vol.items():
        gt = np.stack(v["target"])
        traj = [np.stack([t[k] for t in v["traj"]]) for k in range(len(v["traj"][0]))]
        per_volume[name] = (volume_metrics(gt, traj[-1], v["max"]), [psnr(gt, t, v["max"]) for t in traj])
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, per_volume)
        per_volume = {k: p[k] for p in parts for k in p}
    names = [name for name in order if name in per_volume]  # the single-process order
    rows = [per_volume[name][0] for name in names]
    cascade = [per_volume[name][1] for name in names]
    res = {k: float(np.mean([r[k] for r in rows])) for k in ("NMSE", "PSNR", "SSIM")}
    res["psnr_per_cascade"] = [float(x) for x in np.mean(np.array(cascade), axis=0)]
    res["volumes"] = len(rows)
    return res


def rank_volumes(names: list, rank: int, world: int) -> list:
    """This rank's volumes: the ``rank``-th of ``world`` contiguous, near-equal runs of ``names``
    (``numpy.array_split``, as fastMRI's ``VolumeSampler``)."""
    if world <= 1:
        return list(names)
    return [names[i] for i in np.array_split(np.arange(len(names)), world)[rank]]
