"""Helpers shared by the Triton launchers: real views, per-batch coefficients, precision mode, and
the two ``@triton.jit`` complex load/store helpers every kernel file uses.

Nothing here launches a kernel. Every host helper is a device op (no host sync) so that the
launchers can be captured in a CUDA graph (the row kernel's DFT tables, ``monarch.tables``, are
built once per (W, dtype, device) and cached: warm them with one eager call before capturing,
docs/gpu.md).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Precision of the tensor-core DFT products for complex64 (complex128 always uses fp64 "ieee").
#   "tf32x3" (default): three tf32 products, ~fp32 accuracy (docs/kernels.md (precision): ~7e-8 per transform)
#   "ieee":  plain fp32 FMA products (exact fp32, slowest on tensor-core GPUs)
#   "tf32":  opt-in, one tf32 product (~3e-4 relative per transform; NOT within the 1e-5 contract)
PRECISIONS = ("tf32x3", "ieee", "tf32")
_state = {"precision": os.environ.get("FLAT_TRITON_PRECISION", "tf32x3").strip().lower()}
if _state["precision"] not in PRECISIONS:
    raise ValueError(f"FLAT_TRITON_PRECISION: expected one of {PRECISIONS}, got {_state['precision']!r}")

# Test hook: fill every kernel output with NaN before the launch, so a test proves each element is
# written by a kernel (set by tests/test_triton.py; never needed in production).
_POISON = {"on": os.environ.get("FLAT_TRITON_POISON", "0") not in ("", "0")}


def set_precision(mode: str) -> None:
    """Select the dot-product precision for complex64 ("tf32x3" default, "ieee", "tf32" opt-in)."""
    mode = str(mode).strip().lower()
    if mode not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {mode!r}")
    _state["precision"] = mode


def get_precision() -> str:
    return _state["precision"]


def dot_precision(real_dtype: torch.dtype) -> str:
    """tl.dot input_precision for a real dtype: fp64 has only "ieee"."""
    if real_dtype == torch.float64:
        return "ieee"
    return _state["precision"]


def rv(t: torch.Tensor) -> torch.Tensor:
    """Complex tensor -> contiguous real view (..., 2) with lazy conj/neg bits resolved (docs/operators.md, custom-op pitfalls)."""
    return torch.view_as_real(t.resolve_conj().resolve_neg().contiguous())


def empty_complex(shape, like: torch.Tensor) -> torch.Tensor:
    """A fresh complex output (NaN-poisoned under the test hook)."""
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    if _POISON["on"]:
        out.fill_(complex(float("nan"), float("nan")))
    return out


def empty_real(shape, dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if _POISON["on"]:
        out.fill_(float("nan"))
    return out


def per_batch(t: torch.Tensor | None, B: int, dtype, device) -> torch.Tensor:
    """dt/lam of shape () or (B,) -> contiguous (B,) real tensor (device op, graph-safe)."""
    if t is None:
        return torch.zeros(B, dtype=dtype, device=device)
    return t.to(dtype=dtype, device=device).reshape(-1).expand(B).contiguous()


def const(value: float, B: int, dtype, device) -> torch.Tensor:
    return torch.full((B,), value, dtype=dtype, device=device)


def real_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.complex128 else torch.float32


def pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


@triton.jit
def _cload(ptr, offs, msk):
    # complex element i lives at real offsets 2i (re), 2i+1 (im) of a view_as_real buffer
    re = tl.load(ptr + 2 * offs, mask=msk, other=0.0)
    im = tl.load(ptr + 2 * offs + 1, mask=msk, other=0.0)
    return re, im


@triton.jit
def _cstore(ptr, offs, re, im, msk):
    tl.store(ptr + 2 * offs, re, mask=msk)
    tl.store(ptr + 2 * offs + 1, im, mask=msk)


def reduce_scalar_grad(per_row: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row partial sums (B, rows) -> gradient with dt's/lam's shape (() or (B,)); fixed order."""
    per_b = per_row.sum(1)
    out = per_b.sum() if like.ndim == 0 else per_b
    return out.to(like.dtype)
