"""Checks that the commands run on their inputs before any work starts (docs/robustness.md).

Each check raises one ``ValueError`` whose message names the file or flag, the field and what was
expected; nothing here writes or creates anything. The per-file checks of fastMRI files (layout,
header against ``kspace``, mask, finite values) live with the reader in :mod:`flat.data.fastmri`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from flat.checkpoint import STATE_FILE, read_train_state
from flat.data.fastmri import DataError, list_h5_files, read_volume_info
from flat.io import check_writable_dir


def check_mask_feasible(accelerations: Sequence[float], center_fractions: Sequence[float], width: int,
                        where, flags=("--accelerations", "--center-fractions")) -> None:
    """Every (R, F) pair must give a fastMRI mask on ``width`` columns: a centre of
    ``n = round(W·F) >= 1`` columns and ``n·R < W`` (fastMRI's equispaced_fraction spacing, and the
    random mask's probability, are undefined or negative otherwise)."""
    for r, f in zip(accelerations, center_fractions):
        n = round(width * f)
        if n < 1 or n * r >= width:
            raise ValueError(f"{flags[0]} {r:g} with {flags[1]} {f:g}: infeasible for {where} of width "
                             f"W = {width} (needs round(W*F) = {n} >= 1 and round(W*F)*R < W); lower "
                             f"{flags[0]} or raise {flags[1]}")


def check_device(device, flag: str = "--device"):
    """The torch device named by ``device`` (``None``: left to the caller), refused when it does not
    exist here."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag} {device!r}: not a device name; expected cpu or cuda[:N]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "meta", "mps"):
        raise ValueError(f"{flag} {device}: expected cpu or cuda[:N]")
    return dev


def volumes(root, flag: str, *, require_target: bool = False):
    """The checked :class:`flat.data.fastmri.VolumeInfo` of every file of ``root`` (a file or folder),
    errors prefixed with ``flag``."""
    if root is None or str(root) == "":
        raise ValueError(f"{flag}: expected a folder or file of fastMRI .h5 data")
    try:
        return [read_volume_info(f, require_target=require_target) for f in list_h5_files(root)]
    except DataError as exc:
        raise DataError(f"{flag}: {exc}") from None


def check_backend(backend, flag: str = "--backend") -> None:
    """A flat.ops backend name that is available here (``None``/``auto``: the library chooses)."""
    if backend is None or backend == "auto":
        return
    import flat.ops as fo

    if backend not in fo.available_backends():
        raise ValueError(f"{flag} {backend}: not available here (available: "
                         f"{', '.join(fo.available_backends())}, auto)")


def check_train_inputs(cfg, train_root, val_root, out, device=None, world: int | None = None,
                       backend=None) -> None:
    """What ``flat train`` needs before it creates ``out`` or trains a step: readable training and
    validation data with targets, enough slices for one step, slices that batch, masks feasible
    for every width, an existing device, a writable ``out`` and, in it, a training state that this
    run can resume (if any)."""
    cfg.validate()
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    check_device(device)
    check_backend(backend)
    check_writable_dir(out, "--out")
    train = volumes(train_root, "--train", require_target=True)
    val = volumes(val_root, "--val", require_target=True)
    tc, dc = cfg.train, cfg.data
    n = sum(v.num_slices for v in train)
    if dc.max_slices:
        n = min(n, dc.max_slices)
    if n < tc.batch_size * world:
        raise ValueError(f"--train: {n} slice(s) cannot fill one step of train.batch_size = {tc.batch_size} "
                         f"x {world} process(es); lower train.batch_size or add data")
    if tc.batch_size > 1:
        shapes = {(v.kspace_shape[1:], v.target_shape[1:]) for v in train}
        if len(shapes) > 1:
            raise ValueError(f"--train: slices of different shapes (kspace C, H, W / target h, w: "
                             f"{sorted(shapes)}) cannot be batched; use --set train.batch_size=1")
    for v in _distinct_widths(train + val):
        check_mask_feasible(dc.accelerations, dc.center_fractions, v.kspace_shape[-1], v.path,
                            flags=("data.accelerations", "data.center_fractions"))
    state = Path(out) / STATE_FILE
    if state.is_file():  # a run to resume: corrupt, not ours or of another config is refused now
        read_train_state(state, cfg)


def _distinct_widths(infos: Iterable) -> list:
    seen, out = set(), []
    for v in infos:
        if v.kspace_shape[-1] not in seen:
            seen.add(v.kspace_shape[-1])
            out.append(v)
    return out


def check_output_not_input(out: Path, infos) -> None:
    """Refuse an OUT whose files would replace input files."""
    out = Path(out).resolve()
    for info in infos:
        if out / info.fname == Path(info.path).resolve():
            raise DataError(f"{info.path}: OUT would overwrite the input file")
