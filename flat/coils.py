"""Coil sensitivities from the fully sampled k-space centre (ACS lines).

The classic low-resolution estimate (also the initial step of E2E-VarNet's sensitivity network):
keep only the ``num_low_frequencies`` central phase-encode columns -- the same block fastMRI's masks
sample, starting at ``(W - num_low + 1) // 2`` -- transform each coil to the image domain and divide
by the root-sum-of-squares over coils, so that ``sum_c |S_c|^2 = 1`` wherever the low-resolution
RSS exceeds ``threshold`` times its maximum (zero elsewhere).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch


def centre_widths(num_low_frequencies, batch: int) -> list[int]:
    """Fully sampled centre widths, one per sample, from an int, a list or a tensor of 1 or B values."""
    if isinstance(num_low_frequencies, torch.Tensor):
        nl = [int(v) for v in num_low_frequencies.reshape(-1).tolist()]
    elif isinstance(num_low_frequencies, (list, tuple)):
        nl = [int(v) for v in num_low_frequencies]
    else:
        nl = [int(num_low_frequencies)]
    if len(nl) == 1:
        nl = nl * batch
    if len(nl) != batch:
        raise ValueError(f"num_low_frequencies: {len(nl)} values for a batch of {batch}")
    return nl


def acs_block(num_cols: int, num_low: int) -> tuple[int, int]:
    """``(start, stop)`` of fastMRI's fully sampled centre block of ``num_low`` columns."""
    start = (num_cols - num_low + 1) // 2
    return start, start + num_low


def _tukey(n: int, dtype, device, alpha: float = 0.5) -> torch.Tensor:
    # Tukey window sampled strictly inside (0, 1) so the edge columns keep some weight.
    u = (torch.arange(n, dtype=torch.float64) + 1) / (n + 1)
    w = torch.ones(n, dtype=torch.float64)
    lo, hi = u < alpha / 2, u > 1 - alpha / 2
    w[lo] = 0.5 * (1 - torch.cos(2 * torch.pi * u[lo] / alpha))
    w[hi] = 0.5 * (1 - torch.cos(2 * torch.pi * (1 - u[hi]) / alpha))
    return w.to(dtype=dtype, device=device)


def estimate_sens_acs(
    masked_kspace: torch.Tensor,
    num_low_frequencies: Union[int, torch.Tensor],
    *,
    threshold: float = 1e-6,
    window: Optional[str] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """ACS sensitivity maps ``(B, C, H, W)`` from masked k-space ``(B, C, H, W)`` (complex).

    Args:
        masked_kspace: complex k-space, ``(B, C, H, W)``; the centre block must be fully sampled.
        num_low_frequencies: centre width (int, or a ``(B,)`` tensor / sequence for per-sample
            widths), as returned by the mask functions.
        threshold: pixels whose low-resolution RSS is below ``threshold * max`` get ``S = 0``.
        window: ``None`` (rectangular, as E2E-VarNet), ``"hann"`` (tapers the whole ACS block along
            W) or ``"tukey"`` (flat middle half, cosine tapers on the outer quarters: less ringing
            while keeping resolution when the block is narrow).
        backend: passed to :func:`flat.ops.ifft2c`.
    """
    k = masked_kspace
    if not isinstance(k, torch.Tensor) or not torch.is_complex(k):
        raise TypeError(
            f"masked_kspace: expected a complex tensor (B, C, H, W), got "
            f"{getattr(k, 'dtype', type(k).__name__)}"
        )
    if k.ndim != 4:
        raise ValueError(f"masked_kspace: expected (B, C, H, W), got shape {tuple(k.shape)}")
    low = _acs_images(k, num_low_frequencies, window, backend)
    rss = low.abs().pow(2).sum(1, keepdim=True).sqrt()
    peak = rss.amax(dim=(-2, -1), keepdim=True)
    ok = rss > threshold * peak
    sens = torch.where(ok, low / torch.where(ok, rss, torch.ones_like(rss)), torch.zeros((), dtype=low.dtype))
    return sens


def _acs_images(k: torch.Tensor, num_low_frequencies, window: Optional[str], backend: Optional[str]) -> torch.Tensor:
    """Low-resolution coil images ``(B, C, H, W)``: the ACS block alone (windowed along W), inverse transformed."""
    import flat.ops as fo

    B, C, H, W = k.shape
    nl = centre_widths(num_low_frequencies, B)
    if window not in (None, "hann", "tukey"):
        raise ValueError(f"window: expected None, 'hann' or 'tukey', got {window!r}")

    col_w = torch.zeros(B, W, dtype=k.real.dtype, device=k.device)
    for b, n in enumerate(nl):
        if not 1 <= n <= W:
            raise ValueError(f"num_low_frequencies: {n} is outside [1, W={W}]")
        s, e = acs_block(W, n)
        if window == "hann" and n > 2:
            col_w[b, s:e] = torch.hann_window(n + 2, periodic=False, dtype=col_w.dtype, device=k.device)[1:-1]
        elif window == "tukey" and n > 2:
            col_w[b, s:e] = _tukey(n, col_w.dtype, k.device)
        else:
            col_w[b, s:e] = 1
    return fo.ifft2c(k * col_w[:, None, None, :], backend=backend)


MAP_METHODS = ("espirit", "acs")


def estimate_maps(masked_kspace: torch.Tensor, num_low_frequencies, maps: str = "espirit", *,
                  backend: Optional[str] = None, batch_size: int = 8) -> torch.Tensor:
    """Coil maps ``(B, C, H, W)`` by name: ``"espirit"`` (:func:`flat.espirit.espirit_maps`, the
    defaults) or ``"acs"`` (:func:`estimate_sens_acs` with a Tukey taper, the choice CG-SENSE used
    with ACS maps: rectangular or Hann windows lost up to 1 / 5 dB on the demo data). ESPIRiT runs
    ``batch_size`` slices at a time to bound the memory of its per-pixel ``C x C`` matrices."""
    if maps == "acs":
        return estimate_sens_acs(masked_kspace, num_low_frequencies, window="tukey", backend=backend)
    if maps != "espirit":
        raise ValueError(f"maps: expected one of {MAP_METHODS} or a tensor, got {maps!r}")
    from flat.espirit import espirit_maps

    B = masked_kspace.shape[0]
    nl = num_low_frequencies
    if isinstance(nl, torch.Tensor):
        nl = [int(v) for v in nl.reshape(-1).tolist()]
    if isinstance(nl, (list, tuple)) and len(nl) == 1:
        nl = nl * B
    parts = []
    for s in range(0, B, batch_size):
        part_nl = nl[s:s + batch_size] if isinstance(nl, (list, tuple)) else nl
        parts.append(espirit_maps(masked_kspace[s:s + batch_size], part_nl))
    return torch.cat(parts)


def network_maps(masked_kspace: torch.Tensor, num_low_frequencies, maps: str = "espirit", *,
                 backend: Optional[str] = None) -> torch.Tensor:
    """Maps for a network's data consistency (``model.sens=espirit``): :func:`estimate_maps`, with
    ESPIRiT maps rotated by the phase of the low-resolution coil-combined image.

    A per-pixel phase of the maps is invisible to SENSE (it moves into the image), but it decides
    the phase of the images a network sees. ESPIRiT's maps leave the object's own phase in the
    combined image; ACS maps (coil image / RSS) take it out by construction, so the network works on
    nearly real images. The rotation gives ESPIRiT maps that property too: with it, a demo model
    trained on ACS maps loses 0.3 dB on ESPIRiT maps, without it 5 dB, and training with unrotated
    ESPIRiT maps stalled 5 dB lower (docs/classical.md, "Phase reference")."""
    sens = estimate_maps(masked_kspace, num_low_frequencies, maps, backend=backend)
    if maps != "espirit":
        return sens
    comb = (sens.conj() * _acs_images(masked_kspace, num_low_frequencies, "tukey", backend)).sum(1)
    mag = comb.abs()
    phase = torch.where(mag > 0, comb / torch.where(mag > 0, mag, torch.ones_like(mag)), torch.ones_like(comb))
    return sens * phase[:, None]


def read_sens_maps(path, shape=None) -> torch.Tensor:
    """Maps from an HDF5 file's dataset ``sens_maps`` ``(S, C, H, W)`` (complex, as DIRECT and
    others store them), returned as complex64; ``shape`` (the volume's k-space shape) is checked."""
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            if "sens_maps" not in f:
                raise ValueError(f"--maps {path}: no dataset 'sens_maps' (expected (S, C, H, W) complex)")
            arr = np.asarray(f["sens_maps"])
    except OSError as exc:
        raise ValueError(f"--maps {path}: cannot read as HDF5 ({exc})") from None
    if not np.iscomplexobj(arr) or arr.ndim != 4:
        raise ValueError(f"--maps {path}: 'sens_maps' must be complex (S, C, H, W), got {arr.dtype} {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"--maps {path}: 'sens_maps' has shape {arr.shape}, the k-space {tuple(shape)}")
    return torch.from_numpy(arr.astype(np.complex64))


class MapCache:
    """Coil maps computed once per slice and kept per file, for data pipelines (``model.sens=espirit``).

    The maps depend only on the fully sampled centre, which every mask of a given centre width
    samples, so a slice's maps serve every epoch and every random mask; a flip of the image
    (augmentation) flips its maps, so they are cached unflipped and flipped on use.
    ``get(fname, slice_num, kspace, num_low)`` takes the slice's k-space ``(C, H, W)`` (fully
    sampled or masked: only the centre block is read) and returns ``(C, H, W)`` complex64 on the
    CPU. Memory: one complex64 ``(C, H, W)`` array per cached slice (8 MB for 15 x 320 x 200)."""

    def __init__(self, maps: str = "espirit"):
        if maps not in MAP_METHODS:
            raise ValueError(f"maps: expected one of {MAP_METHODS}, got {maps!r}")
        self.maps = maps
        self.files: dict[str, dict[tuple[int, int], torch.Tensor]] = {}

    def get(self, fname: str, slice_num: int, kspace: torch.Tensor, num_low: int,
            flip_dims: Sequence[int] = ()) -> torch.Tensor:
        per_file = self.files.setdefault(str(fname), {})
        key = (int(slice_num), int(num_low))
        if key not in per_file:
            k = kspace.detach().to("cpu", torch.complex64)[None]
            per_file[key] = network_maps(k, int(num_low), self.maps)[0].contiguous()
        s = per_file[key]
        return torch.flip(s, tuple(flip_dims)) if flip_dims else s
