"""Host-side helpers shared by the Triton launchers: real views, tables, per-batch coefficients.

Nothing here launches a kernel. Every helper is a device op (no host sync) so that the launchers can
be captured in a CUDA graph, except the DFT table, which is built once per (W, dtype, device) and
cached: warm the cache with one eager call before capturing (CUDA-graph practice anyway).
"""
from __future__ import annotations

import math
import os

import torch
import triton

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


_DFT_CACHE: dict = {}


def centered_dft(W: int, dtype: torch.dtype, device: torch.device):
    """Real and imaginary planes (W, W) of the centered orthonormal DFT matrix Fc, fft_c(z) = Fc @ z.

    Fc[p, w] = exp(-2πi·((p - W//2)(w - W//2) mod W)/W) / √W  (symmetric; the shifts of docs/operators.md
    folded into the indices, odd W included). Built in float64 from exact integer phases.
    """
    key = (W, dtype, str(device))
    hit = _DFT_CACHE.get(key)
    if hit is None:
        n = torch.arange(W, dtype=torch.int64, device=device) - W // 2
        phase = torch.remainder(n[:, None] * n[None, :], W).to(torch.float64) * (-2.0 * math.pi / W)
        s = 1.0 / math.sqrt(W)
        hit = ((torch.cos(phase) * s).to(dtype).contiguous(), (torch.sin(phase) * s).to(dtype).contiguous())
        _DFT_CACHE[key] = hit
    return hit


_COLS_CACHE: dict = {}  # (data_ptr, version, shape, stride, dtype, device) -> (mask, idx, val, cnt)
_COLS_CACHE_SIZE = 8


def sampled_columns(mask: torch.Tensor):
    """Column mask (Bm, 1, W) -> (idx, val, cnt): sampled columns first, per mask row.

    idx (Bm, W) int32: column indices, the n_s sampled ones first (stable order);
    val (Bm, W): mask values in that order (0 after the first n_s); cnt (Bm,) int32: n_s.
    Device ops only: the kernel reads n_s itself, so there is no host sync (CUDA-graph safe).

    Cached while the mask tensor is unchanged (same pointer and version counter; the entry holds
    the mask, so its memory cannot be reused by another one), so the K cascades of a forward
    compute it once. Never cached during CUDA-graph capture: the graph then recomputes it on each
    replay, for whatever mask its static input holds (docs/gpu.md).
    """
    key = None  # inference-mode tensors have no version counter: not cached
    if not mask.is_inference() and not (mask.is_cuda and torch.cuda.is_current_stream_capturing()):
        key = (mask.data_ptr(), mask._version, tuple(mask.shape), mask.stride(), mask.dtype, mask.device)
        hit = _COLS_CACHE.get(key)
        if hit is not None:
            return hit[1:]
    m = mask[:, 0, :]
    order = torch.sort((m == 0).to(torch.uint8), dim=-1, stable=True).indices
    val = torch.gather(m, -1, order).contiguous()
    cnt = (m != 0).sum(-1).to(torch.int32).contiguous()
    out = order.to(torch.int32).contiguous(), val, cnt
    if key is not None:
        if len(_COLS_CACHE) >= _COLS_CACHE_SIZE:
            _COLS_CACHE.pop(next(iter(_COLS_CACHE)))  # oldest first
        _COLS_CACHE[key] = (mask, *out)
    return out


def reduce_scalar_grad(per_row: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row partial sums (B, rows) -> gradient with dt's/lam's shape (() or (B,)); fixed order."""
    per_b = per_row.sum(1)
    out = per_b.sum() if like.ndim == 0 else per_b
    return out.to(like.dtype)
