"""``flat recon``: reconstruct fastMRI files into submission files (zero-filled, CG-SENSE, FLAT).

    flat recon CHECKPOINT DATA OUT [--method flat|zero-filled|cg-sense] [--mask-type T]
               [--accelerations 4] [--center-fractions 0.08] [--backend B]

DATA is a fastMRI multicoil file or a folder of them: fully sampled files are undersampled with
fastMRI's mask function, seeded per volume by the file name (so the result is what fastMRI's
``VarNetDataTransform`` would feed a model), with the header's padding columns forced out; files
with a ``mask`` dataset are already undersampled and are used as they are. OUT is a folder that
receives one file per volume, named like the input, with dataset ``reconstruction`` ``(S, h, w)``
float32 centre-cropped to the header's recon size (fastMRI's submission format). Each file is
written whole or not at all. ``zero-filled`` and ``cg-sense`` take ``-`` for CHECKPOINT.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np
import torch
from tqdm import tqdm

import flat.ops as fo
from flat.ops.backends import BackendUnavailableError, resolve
from flat.coils import MAP_METHODS, estimate_maps, read_sens_maps
from flat.checks import check_backend, check_device, check_mask_feasible, check_output_not_input
from flat.data.fastmri import DataError, list_h5_files, nonfinite_slices, read_volume, read_volume_info
from flat.data.masks import apply_mask, create_mask_for_mask_type, num_low_frequencies_from_mask, volume_seed
from flat.data.transforms import center_crop, output_crop_size, padding_mask
from flat.io import atomic_path, check_writable_dir, kill_point, remove_stale_temps

# ---------------------------------------------------------------- reconstructions (library API)
def zero_filled(masked_kspace, crop_size=None, *, backend: Optional[str] = None):
    """Zero-filled RSS ``(S, h, w)`` float32: ``rss(|ifft2c(k)|)`` over coils, centre-cropped to
    ``crop_size`` when given (fastMRI's zero-filled baseline). ``masked_kspace``: ``(S, C, H, W)``
    complex."""
    k = torch.as_tensor(masked_kspace)
    if not torch.is_complex(k) or k.ndim != 4:
        raise ValueError(f"masked_kspace: expected complex (S, C, H, W), got {tuple(k.shape)} {k.dtype}")
    img = fo.rss(fo.ifft2c(k, backend=backend), dim=1, backend=backend)
    if crop_size is not None:
        img = center_crop(img, crop_size)
    return img.to(torch.float32)


# flat recon's CG-SENSE defaults, chosen on the demo's validation volumes (docs/classical.md)
CG_ITERS = 50
CG_LAM = 1e-3
CG_TOL = 1e-6


def cg_sense(
    masked_kspace,
    mask,
    sens=None,
    num_low_frequencies=None,
    iters: int = 20,
    lam: float = 0.0,
    *,
    tol: float = CG_TOL,
    maps: str = "espirit",
    backend: Optional[str] = None,
):
    """CG-SENSE: conjugate gradients on ``(AᴴA + lam·I) x = Aᴴy``, ``A = M·F·S`` (flat.ops).

    Args:
        masked_kspace: ``(B, C, H, W)`` complex k-space (zeros where not sampled).
        mask: column mask ``(W,)``/``(B, W)`` or any mask shape :mod:`flat.ops` accepts.
        sens: ``(B, C, H, W)`` maps normalised to ``Σ|S|² = 1`` (zero outside the support); when
            ``None`` they are estimated from the fully sampled centre as ``maps`` says (then
            ``num_low_frequencies`` is required).
        num_low_frequencies: centre width (int or ``(B,)``) for the map estimate.
        iters: the most CG iterations (``flat recon`` uses :data:`CG_ITERS`).
        lam: Tikhonov weight, relative to AᴴA, whose eigenvalues lie in [0, 1] with normalised
            maps, so it is scale-free (``flat recon`` uses :data:`CG_LAM`; the function's own
            defaults, 20 and 0, are plain CG on the normal equations).
        tol: stop early when every slice's residual norm is below ``tol`` times its initial one.
        maps: ``"espirit"`` (:func:`flat.espirit.espirit_maps`) or ``"acs"`` (low-resolution
            ACS estimate, :func:`flat.coils.estimate_sens_acs` with a Tukey taper).

    Returns the complex image ``(B, H, W)`` (magnitude comparable to RSS since ``Σ|S|² = 1``).
    How flat recon's defaults were chosen: docs/classical.md.
    """
    y = torch.as_tensor(masked_kspace)
    if not torch.is_complex(y) or y.ndim != 4:
        raise ValueError(f"masked_kspace: expected complex (B, C, H, W), got {tuple(y.shape)} {y.dtype}")
    if isinstance(iters, bool) or int(iters) != iters or iters < 0:
        raise ValueError(f"iters: must be an integer >= 0, got {iters!r}")
    iters = int(iters)
    if not lam >= 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    if not tol >= 0:
        raise ValueError(f"tol: must be >= 0, got {tol}")
    if sens is None:
        if num_low_frequencies is None:
            raise ValueError("cg_sense: pass sens or num_low_frequencies (to estimate maps from the ACS lines)")
        sens = estimate_maps(y, num_low_frequencies, maps, backend=backend)
    elif not isinstance(sens, torch.Tensor) or tuple(sens.shape) != tuple(y.shape):
        raise ValueError(f"sens: expected a tensor of the k-space shape {tuple(y.shape)}, got "
                         f"{tuple(getattr(sens, 'shape', ())) or type(sens).__name__}")
    sens = sens.to(device=y.device, dtype=y.dtype)
    dims = (-2, -1)

    def op(x):
        return fo.normal(x, sens, mask, backend=backend) + lam * x

    def dot(a, b):  # per-batch real inner product <a, b>
        return (a.conj() * b).real.sum(dim=dims)

    b = fo.sense_adjoint(y, sens, mask, backend=backend)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = dot(r, r)
    rr0 = rr.clone()
    for _ in range(iters):
        if bool((rr <= (tol**2) * rr0).all()):
            break
        ap = op(p)
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rr / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = x + alpha[:, None, None] * p
        r = r - alpha[:, None, None] * ap
        rr_new = dot(r, r)
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = r + beta[:, None, None] * p
        rr = rr_new
    return x


# ---------------------------------------------------------------- per-volume driver
def prepare_volume(kspace, file_mask, info, mask_func):
    """Masked k-space ``(S, C, H, W)`` complex64, column mask ``(W,)`` bool and centre width for a
    volume, exactly as :class:`flat.data.transforms.UnrolledDataTransform` gives for each slice
    (the per-volume seed makes every slice's mask identical)."""
    k = torch.from_numpy(np.ascontiguousarray(kspace)).to(torch.complex64)
    S, C, H, W = k.shape
    keep = padding_mask(W, info.padding_left, info.padding_right)
    if file_mask is not None:
        m = torch.from_numpy(np.asarray(file_mask).reshape(-1).astype(bool)) & keep
        num_low = int(info.attrs.get("num_low_frequency", 0)) or num_low_frequencies_from_mask(m)
        masked = torch.where(m, k, torch.zeros((), dtype=k.dtype))
    else:
        masked, m, num_low = apply_mask(
            k, mask_func, seed=volume_seed(info.fname), padding=(max(info.padding_left, 0), info.padding_right)
        )
        m = m.reshape(-1).bool()
    return masked, m, int(num_low)


def volume_crop(info, image_shape):
    """Output crop of a volume: the target's shape if the file has one, else the header recon
    size, as fastMRI's VarNet crops (clipped to the image)."""
    if info.target_shape is not None:
        return output_crop_size(info.target_shape[-2:], image_shape)
    return output_crop_size((info.recon_size[0], info.recon_size[1]), image_shape)


def reconstruct_volume(method, masked, mask, num_low, crop, *, model=None, backend=None,
                       batch_size=8, cg_iters=CG_ITERS, cg_lam=CG_LAM, progress=None, device="cpu",
                       cg_maps="espirit", cg_tol=CG_TOL, sens=None, forward=None):
    """``(S, h, w)`` float32 numpy reconstruction of one volume in slice batches (zero-filled and
    CG-SENSE run on ``device``; the FLAT model on its own device, through ``forward`` when given:
    :func:`flat.capture.make_forward`).
    ``sens``: the volume's maps ``(S, C, H, W)`` (``--maps FILE``), used by CG-SENSE and FLAT;
    else CG-SENSE estimates them as ``cg_maps`` says (``espirit`` or ``acs``)."""
    outs = []
    S = masked.shape[0]
    with torch.no_grad():
        for s in range(0, S, batch_size):
            k = masked[s : s + batch_size]
            if method == "zero-filled":
                img = zero_filled(k.to(device), backend=backend)
            elif method == "cg-sense":
                maps = None if sens is None else sens[s : s + batch_size].to(device)
                img = cg_sense(k.to(device), mask.to(device), maps, num_low_frequencies=num_low, iters=cg_iters,
                               lam=cg_lam, tol=cg_tol, maps=cg_maps, backend=backend).abs()
            elif method == "varnet":  # fastMRI's E2E-VarNet weights (flat/model/varnet.py, docs/varnet.md)
                from flat.model.varnet import reconstruct_varnet

                img = reconstruct_varnet(model, k, mask, num_low, backend=backend)
            else:
                from flat.inference import reconstruct  # see recon_files: the model stack on use

                extra = {} if sens is None else {"sens": sens[s : s + batch_size]}
                if forward is not None:
                    extra["forward"] = forward
                img = reconstruct(model, k, mask, num_low, backend=backend, **extra)
            img = torch.as_tensor(img)
            if img.shape != k.shape[:1] + k.shape[2:]:
                raise RuntimeError(f"{method}: output shape {tuple(img.shape)}, expected {tuple(k.shape[:1] + k.shape[2:])}")
            outs.append(center_crop(img, crop).to(torch.float32).cpu())
            if progress is not None:
                progress.update(k.shape[0])
    return torch.cat(outs).numpy()


def write_submission(path, recon, attrs=None) -> Path:
    """Write ``reconstruction`` ``(S, h, w)`` float32 to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("reconstruction", data=np.asarray(recon, dtype=np.float32))
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
    return path


# ---------------------------------------------------------------- files in, files out
def recon_files(checkpoint: str, data: Path, out: Path, *, method: str = "flat",
                mask_type: str = "equispaced_fraction", accelerations: Sequence[int] = (4,),
                center_fractions: Sequence[float] = (0.08,), backend: Optional[str] = None,
                batch_size: int = 8, cg_iters: int = CG_ITERS, cg_lam: float = CG_LAM, device: str = "cpu",
                progress: bool = True, overwrite: bool = False, zero_nonfinite: bool = False,
                maps: str = "espirit", cg_tol: float = CG_TOL, compile: bool = False,
                cuda_graphs: bool = False) -> list[Path]:
    """``flat recon``: reconstruct every volume of ``data`` (a file or folder) with ``method`` into
    one submission file per volume in ``out``; returns the paths written. Every input is checked
    before anything is written (layout, header, mask, finite k-space, mask feasibility, OUT
    writable, the checkpoint), so a bad file in a folder leaves no output -- OUT is not even
    created. Errors name the flag of ``flat recon`` they come from.

    A volume whose output already exists whole, from the same settings, is skipped (a rerun after
    a kill finishes the rest); ``overwrite`` redoes it. Non-finite k-space is refused unless
    ``zero_nonfinite``, which zeroes those samples and says how many.

    ``maps``: CG-SENSE's coil maps, ``espirit`` (default) or ``acs``, or an HDF5 file with dataset
    ``sens_maps`` ``(S, C, H, W)`` (for one volume), or a folder of such files named like the
    inputs; file maps are used by ``cg-sense`` and ``flat``.

    ``device``: where the model, the data-consistency ops and the baselines run (the checkpoint is
    loaded there); ``compile`` / ``cuda_graphs``: the FLAT model's cascade through torch.compile or
    CUDA-graph replay (docs/gpu.md)."""
    data, out = Path(data), Path(out)
    accelerations, center_fractions = list(accelerations), list(center_fractions)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if not (cg_iters >= 0 and cg_lam >= 0 and cg_tol >= 0):  # NaN is refused too
        raise ValueError("--cg-iters, --tikhonov and --cg-tol must be >= 0")
    if len(accelerations) != len(center_fractions):
        raise ValueError(
            f"--accelerations ({len(accelerations)} values) and --center-fractions "
            f"({len(center_fractions)} values) must have the same length"
        )
    try:
        mask_func = create_mask_for_mask_type(mask_type, center_fractions, accelerations)
    except ValueError as exc:
        raise ValueError(f"--accelerations / --center-fractions: {exc}") from None
    dev = check_device(device) or torch.device("cpu")
    check_backend(backend)  # an unknown or absent backend named by its flag, before the device check
    try:
        chosen = resolve(backend, dev.type)  # a backend that cannot run on the device: refused now
    except BackendUnavailableError as exc:
        raise ValueError(f"--backend {backend} on --device {device}: {exc}") from None
    if (compile or cuda_graphs) and method != "flat":
        raise ValueError(f"--compile / --cuda-graphs: only for --method flat, not --method {method}")
    if compile and cuda_graphs:
        raise ValueError("--compile and --cuda-graphs: choose one")
    if cuda_graphs and dev.type != "cuda":
        raise ValueError(f"--cuda-graphs: CUDA graphs need --device cuda[:N], got --device {device}")
    if not data.exists():
        raise DataError(f"{data}: no such file or folder (DATA)")
    files = list_h5_files(data)
    infos = [read_volume_info(f) for f in files]  # layout, header against kspace, mask
    check_writable_dir(out, "OUT")
    check_output_not_input(out, infos)
    map_files = _map_files(maps, infos)  # None for espirit / acs
    settings = _settings(method, checkpoint, mask_type, accelerations, center_fractions, cg_iters, cg_lam)
    if method == "cg-sense" or map_files is not None:
        d = json.loads(settings)
        d.update(maps=str(maps), **({"cg_tol": float(cg_tol)} if method == "cg-sense" else {}))
        settings = json.dumps(d, sort_keys=True)
    for info in infos:
        if (out / info.fname).is_dir():
            raise DataError(f"{out / info.fname}: is a folder, where OUT needs to write this volume's file")
    todo = infos if overwrite else [i for i in infos if not _already_done(out / i.fname, i, settings)]
    for info in todo:
        if not info.has_mask:
            check_mask_feasible(accelerations, center_fractions, info.kspace_shape[-1], info.path)

    model = None
    if method == "flat":
        if checkpoint == "-":
            raise ValueError("--method flat needs a CHECKPOINT (got '-')")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint file (CHECKPOINT)")
        # The model stack (flat.inference, flat.model) is imported only for --method flat, on use:
        # zero-filled and CG-SENSE need none of it, and tests substitute the inference module.
        from flat.inference import load_model

        model = load_model(checkpoint, map_location=str(dev))
    elif method == "varnet":  # CHECKPOINT is a fastMRI VarNet state dict
        if checkpoint == "-":
            raise ValueError("--method varnet needs a fastMRI VarNet state dict as CHECKPOINT (got '-')")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: no such state dict file (CHECKPOINT)")
        from flat.model.varnet import load_fastmri_varnet

        model = load_fastmri_varnet(checkpoint).to(device)
    elif checkpoint != "-":
        print(f"flat recon: note: --method {method} uses no checkpoint; ignoring {checkpoint}",
              file=sys.stderr)

    nonfinite = _check_finite_kspace(todo, zero_nonfinite)  # reads every volume to do, slice by slice
    if len(todo) < len(infos):
        print(f"flat recon: note: {len(infos) - len(todo)} volume(s) already complete in {out}, skipped "
              "(--overwrite to redo them)", file=sys.stderr)
    if out.is_dir():
        remove_stale_temps(out, [i.fname for i in infos])  # what a killed run left

    forward = None
    if compile or cuda_graphs:
        from flat.capture import make_forward

        forward = make_forward(model, "compile" if compile else "graphs", backend=backend)
    how = " (cascade compiled)" if compile else " (cascade as CUDA graphs)" if cuda_graphs else ""
    print(f"flat recon: note: device {dev}, backend {chosen}{how}", file=sys.stderr)

    total = sum(i.num_slices for i in todo)
    bar = tqdm(total=total, desc=f"recon {method}", unit="slice", file=sys.stderr,
               disable=not progress or None, leave=False)
    written = []
    try:
        for info in todo:
            kspace, file_mask, _, _ = read_volume(info.path)
            if nonfinite.get(info.path):
                kspace = np.where(np.isfinite(kspace), kspace, 0).astype(kspace.dtype)
                print(f"flat recon: note: {info.path}: zeroed {nonfinite[info.path]} non-finite k-space "
                      "sample(s) (--zero-nonfinite)", file=sys.stderr)
            masked, mask, num_low = prepare_volume(kspace, file_mask, info, mask_func)
            if method == "varnet" and file_mask is not None:
                num_low = None  # fastMRI's pretrained-VarNet inference infers it from the mask
            crop = volume_crop(info, masked.shape)
            sens = None
            if map_files is not None and method in ("cg-sense", "flat"):
                sens = read_sens_maps(map_files[info.path], tuple(masked.shape))
            recon = reconstruct_volume(
                method, masked, mask, num_low, crop, model=model, backend=backend,
                batch_size=batch_size, cg_iters=cg_iters, cg_lam=cg_lam, progress=bar, device=device,
                cg_maps=maps if map_files is None else "espirit", cg_tol=cg_tol, sens=sens, forward=forward,
            )
            written.append(write_submission(out / info.fname, recon, {"method": method, SETTINGS_ATTR: settings}))
            kill_point("recon:volume")
    finally:
        bar.close()
    return written


def _map_files(maps: str, infos) -> Optional[dict]:
    """``--maps``: None for ``espirit`` / ``acs``; else {input path: maps file}, every file checked
    to exist before anything is written (a file for a single volume, or a folder of files named
    like the inputs)."""
    if maps in MAP_METHODS:
        return None
    p = Path(maps)
    if p.is_dir():
        found = {i.path: p / i.fname for i in infos}
        missing = [str(f) for f in found.values() if not f.is_file()]
        if missing:
            raise ValueError(f"--maps {maps}: no maps file for {len(missing)} volume(s), e.g. {missing[0]}")
        return found
    if p.is_file():
        if len(infos) != 1:
            raise ValueError(f"--maps {maps}: one maps file for {len(infos)} volumes; give a folder of "
                             f"files named like the inputs")
        return {infos[0].path: p}
    raise ValueError(f"--maps {maps!r}: expected {' or '.join(MAP_METHODS)}, an HDF5 file with 'sens_maps' "
                     f"or a folder of them")


# the submission-file attr that records what made it: a rerun skips it only when it matches
SETTINGS_ATTR = "flat_recon_settings"


def _settings(method, checkpoint, mask_type, accelerations, center_fractions, cg_iters, cg_lam) -> str:
    d = {"method": method, "mask_type": mask_type, "accelerations": [float(a) for a in accelerations],
         "center_fractions": [float(c) for c in center_fractions]}
    if method == "cg-sense":
        d.update(cg_iters=int(cg_iters), cg_lam=float(cg_lam))
    if checkpoint != "-" and method in ("flat", "varnet"):
        st = os.stat(checkpoint) if os.path.isfile(checkpoint) else None
        d["checkpoint"] = [os.path.abspath(checkpoint), st.st_size if st else None, st.st_mtime_ns if st else None]
    return json.dumps(d, sort_keys=True)


def _already_done(path: Path, info, settings: str) -> bool:
    """Whether ``path`` is a complete submission file of ``info`` made with ``settings``; an existing
    file of other settings (or not a complete one) is refused, so that nothing is silently mixed."""
    if not path.exists():
        return False
    crop = volume_crop(info, info.kspace_shape)
    try:
        with h5py.File(path, "r") as f:
            ok = ("reconstruction" in f and f["reconstruction"].shape == (info.num_slices, *crop)
                  and f.attrs.get(SETTINGS_ATTR) == settings)
    except OSError:
        ok = False
    if not ok:
        raise DataError(f"{path}: exists, but not as this command's complete output (other settings, "
                        "or not a submission file); pass --overwrite to redo it, or choose another OUT")
    return True


def _check_finite_kspace(infos, zero_nonfinite: bool) -> dict:
    """``{path: number of non-finite samples}`` of the volumes holding any; refused unless
    ``zero_nonfinite``."""
    counts = {}
    for info in infos:
        bad = nonfinite_slices(info.path, "kspace")
        if bad and not zero_nonfinite:
            s, n = next(iter(bad.items()))
            raise DataError(f"{info.path}: slice {s} of 'kspace' holds {n} non-finite value(s) (NaN/Inf)"
                            f"{f' ({sum(bad.values())} in {len(bad)} slices)' if len(bad) > 1 else ''}; "
                            "expected finite k-space (--zero-nonfinite zeroes them)")
        if bad:
            counts[info.path] = sum(bad.values())
    return counts
