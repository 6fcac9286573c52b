"""Benchmark size grid, input builders and the byte counts of each op's floor.

Sizes: on a GPU the fastMRI shapes — knee 15×640×368 and brain 4 and 20 coils ×
640×320, B ∈ {1, 8}; on the CPU scaled-down shapes so ``pytest benchmarks/`` finishes in a few
minutes on 2 cores. ``FLAT_BENCH_GRID=cpu|gpu|smoke`` overrides the choice made from the device.

Floors (docs/kernels.md, roofline) count the bytes an ideal single-pass kernel must move: every input
read once, the output written once, nothing else. ``e`` is the bytes per complex element (8 for
complex64), ``N_k = B·C·H·W`` (one coil stack), ``N_i = B·H·W`` (one image), ``f_s`` the sampled
fraction of k-space (only sampled entries of y need reading)::

    flow_step         fwd  read S, x, v, Aᴴy; write x'             (N_k + 4 N_i)·e   docs/kernels.md "image form"
                      bwd  read S, g; write g_x, g_v                (N_k + 3 N_i)·e   (docs/operators.md: g_x = g − c·AᴴA g)
    normal            fwd  read S, x; write AᴴA x                   (N_k + 2 N_i)·e
                      bwd  read S, g; write g_x                     (N_k + 2 N_i)·e   (AᴴA is Hermitian)
    kspace_flow_step  fwd  read k, S, z, y[sampled]; write k'       (3 N_k + N_i + f_s N_k)·e   docs/kernels.md "k-space form"
                      bwd  read g, S; write g_k, g_z                (3 N_k + N_i)·e

Forward+backward floors are the sum (the forward need save nothing beyond its inputs). Backward
floors assume gradients for the state and the update only (fixed coil maps and data), the common
training case; docs/kernels.md gives the forward rows, the backward rows follow from the backward formulas of docs/operators.md.
Masks and their value do not enter the floors except through ``f_s``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from flat.ops.reference import fft2c as _fft2c, ifft2c as _ifft2c
from flat.ops.table import OPS as _TABLE

OPS = tuple(spec.name for spec in _TABLE if spec.benchmarked)
MODES = ("fwd", "fwd+bwd")
DT, LAM = 1.0 / 12.0, 12.0  # Δt·λ = 1 per step (docs/model.md)


@dataclass(frozen=True)
class Workload:
    name: str
    B: int
    C: int
    H: int
    W: int
    mask: str = "column"  # "column" (fastMRI) or "2d"
    accel: int = 4
    center_fraction: float = 0.08

    @property
    def shape(self) -> str:
        s = f"{self.B}x{self.C}x{self.H}x{self.W}"
        return s if self.mask == "column" else s + "/2d"

    def stack_bytes(self, itemsize: int = 8) -> int:
        return self.B * self.C * self.H * self.W * itemsize


GPU_GRID = (
    Workload("knee", 1, 15, 640, 368),
    Workload("knee", 8, 15, 640, 368),
    Workload("brain4", 1, 4, 640, 320),
    Workload("brain4", 8, 4, 640, 320),
    Workload("brain20", 1, 20, 640, 320),
    Workload("brain20", 8, 20, 640, 320),
    Workload("knee-2d", 1, 15, 640, 368, mask="2d"),  # general-mask path (cuFFT 2-D)
)
# CPU: knee and brain scaled by 1/4 in H and W (W = 92 keeps knee's W % 4 == 0; 75 is odd),
# one batched case and one odd-W 2-D-mask case, all small enough for the 2-core budget.
CPU_GRID = (
    Workload("knee/4", 1, 15, 160, 92),
    Workload("brain4/4", 4, 4, 160, 80),
    Workload("odd-2d", 1, 8, 96, 75, mask="2d"),
)
SMOKE_GRID = (Workload("smoke", 1, 4, 32, 24),)


def bench_device() -> torch.device:
    """The device benchmarked: ``FLAT_BENCH_DEVICE`` or CUDA when present, else the CPU."""
    return torch.device(os.environ.get("FLAT_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def grid(device: torch.device) -> tuple[Workload, ...]:
    choice = os.environ.get("FLAT_BENCH_GRID", "").strip().lower()
    if choice:
        try:
            return {"cpu": CPU_GRID, "gpu": GPU_GRID, "smoke": SMOKE_GRID}[choice]
        except KeyError:
            raise ValueError(f"FLAT_BENCH_GRID: expected cpu, gpu or smoke, got {choice!r}") from None
    return GPU_GRID if device.type == "cuda" else CPU_GRID


# ---------------------------------------------------------------- masks (fastMRI-like, seeded)
def column_masks(B: int, W: int, accel: int, center_fraction: float, seed: int = 0) -> torch.Tensor:
    """(B, W) float 0/1: fastMRI RandomMaskFunc-style, fully sampled centre, one mask per sample."""
    g = torch.Generator().manual_seed(seed)
    num_low = max(1, round(W * center_fraction))
    prob = (W / accel - num_low) / (W - num_low)
    m = torch.rand(B, W, generator=g) < prob
    pad = (W - num_low + 1) // 2
    m[:, pad : pad + num_low] = True
    return m.float()


def masks_2d(B: int, H: int, W: int, accel: int, center_fraction: float, seed: int = 0) -> torch.Tensor:
    """(B, 1, H, W) float 0/1: uniform random points plus a fully sampled centre square."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, 1, H, W, generator=g) < 1.0 / accel
    ch, cw = max(1, round(H * center_fraction)), max(1, round(W * center_fraction))
    h0, w0 = (H - ch + 1) // 2, (W - cw + 1) // 2
    m[..., h0 : h0 + ch, w0 : w0 + cw] = True
    return m.float()


def sampled_fraction(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


# ---------------------------------------------------------------- inputs
def make_inputs(wl: Workload, device, dtype=torch.complex64, seed: int = 0) -> dict:
    """One input set: every tensor any op benchmark needs, built on the CPU then moved (seeded).

    ``mask`` is in the public layout flat.ops takes ((B, W) column or (B, 1, H, W)); ``mask4``
    is the same mask as (B, 1, 1|H, W) for the literal forms. y = M·fft2c(S·x_gt) + noise.
    """
    g = torch.Generator().manual_seed(seed)
    rdt = torch.float32 if dtype == torch.complex64 else torch.float64

    def crandn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    B, C, H, W = wl.B, wl.C, wl.H, wl.W
    sens = crandn(B, C, H, W)
    sens = sens / sens.abs().square().sum(1, keepdim=True).sqrt()  # Σ_c |S_c|² = 1 (docs/operators.md)
    if wl.mask == "column":
        mask = column_masks(B, W, wl.accel, wl.center_fraction, seed).to(rdt)
        mask4 = mask[:, None, None, :]
    else:
        mask = masks_2d(B, H, W, wl.accel, wl.center_fraction, seed).to(rdt)
        mask4 = mask
    x_gt = crandn(B, H, W)
    kspace = mask4 * (_fft2c(sens * x_gt[:, None]) + 0.01 * crandn(B, C, H, W))
    ahy = (sens.conj() * _ifft2c(mask4 * kspace)).sum(1)
    t = {
        "image": ahy.clone(),  # x at t = 0 is the zero-filled SENSE image (docs/model.md)
        "velocity": crandn(B, H, W),
        "kspace": kspace,
        "sens": sens,
        "mask": mask,
        "mask4": mask4,
        "ahy": ahy,
        "kstate": kspace.clone(),
        "image_update": crandn(B, H, W),
        "grad_image": crandn(B, H, W),  # upstream gradients for fwd+bwd
        "grad_kspace": crandn(B, C, H, W),
        "dt": torch.tensor(DT, dtype=rdt),
        "lam": torch.tensor(LAM, dtype=rdt),
    }
    return {k: v.to(device) for k, v in t.items()}


def set_bytes(inputs: dict) -> int:
    return sum(v.numel() * v.element_size() for v in inputs.values())


def n_rotating_sets(one_set_bytes: int, l2_bytes: int, cap: int = 8) -> int:
    """Input sets to cycle through so no call finds its inputs in L2 (≥ 3× L2 in flight, ≥ 2 sets)."""
    return max(2, min(cap, math.ceil(3 * l2_bytes / max(1, one_set_bytes))))


# ---------------------------------------------------------------- floors
def floor_bytes(op: str, mode: str, wl: Workload, f_s: float, itemsize: int = 8) -> int:
    """Bytes the op's ideal single pass moves (module docstring); ``f_s`` = sampled fraction."""
    nk = wl.B * wl.C * wl.H * wl.W
    ni = wl.B * wl.H * wl.W
    fwd = {
        "flow_step": nk + 4 * ni,
        "normal": nk + 2 * ni,
        "kspace_flow_step": 3 * nk + ni + f_s * nk,
    }[op]
    bwd = {
        "flow_step": nk + 3 * ni,
        "normal": nk + 2 * ni,
        "kspace_flow_step": 3 * nk + ni,
    }[op]
    total = fwd if mode == "fwd" else fwd + bwd
    return int(round(total * itemsize))


def _check_against_kernels_md() -> None:
    """The knee rows of docs/kernels.md (roofline): image-form floor 35.8 MB, k-space floor ≈ 95 MB at 4×."""
    knee = Workload("knee", 1, 15, 640, 368)
    assert abs(floor_bytes("flow_step", "fwd", knee, 0.0) / 1e6 - 35.8) < 0.1
    assert abs(floor_bytes("kspace_flow_step", "fwd", knee, 1 / 3.5) / 1e6 - 95) < 1


_check_against_kernels_md()


# ---------------------------------------------------------------- model benchmarks (bench_model.py)
@dataclass(frozen=True)
class ModelWorkload:
    """A 12-cascade FLAT model at one data size; ``slices`` is the volume for end-to-end recon."""

    data: Workload
    chans: int
    pools: int
    slices: int
    cascades: int = 12


MODEL_GPU_GRID = (
    ModelWorkload(Workload("knee", 1, 15, 640, 368), chans=18, pools=4, slices=16),  # E2E-VarNet's U-Net size
    ModelWorkload(Workload("brain20", 1, 20, 640, 320), chans=18, pools=4, slices=16),
)
# CPU: a small U-Net at a small size; a train step is ~1 s on one core.
MODEL_CPU_GRID = (ModelWorkload(Workload("model-cpu", 1, 8, 128, 80), chans=8, pools=2, slices=4),)


def model_grid(device: torch.device) -> tuple[ModelWorkload, ...]:
    choice = os.environ.get("FLAT_BENCH_GRID", "").strip().lower()
    if choice == "smoke":
        return (ModelWorkload(Workload("smoke", 1, 4, 32, 24), chans=4, pools=1, slices=2, cascades=3),)
    if choice in ("cpu", "gpu"):
        return MODEL_GPU_GRID if choice == "gpu" else MODEL_CPU_GRID
    return MODEL_GPU_GRID if device.type == "cuda" else MODEL_CPU_GRID


def make_model_inputs(wl: Workload, device, seed: int = 0) -> dict:
    """Undersampled k-space with one column mask for all B slices (as in a volume), the fully
    sampled k-space and its RSS target: what a training batch and a recon volume hold."""
    t = make_inputs(wl, "cpu", seed=seed)
    mask = t["mask"][0] > 0  # (W,) bool, shared by every slice
    full = _fft2c(t["sens"] * t["velocity"][:, None])  # any smooth-free image will do for timing
    masked = full * mask.to(torch.float32)
    target = _ifft2c(full).abs().square().sum(1).sqrt()  # (B, H, W) RSS
    out = {
        "masked_kspace": masked, "kspace": full, "mask": mask, "target": target,
        "max_value": target.reshape(wl.B, -1).amax(1),
        "num_low_frequencies": max(1, round(wl.W * wl.center_fraction)),
    }
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
