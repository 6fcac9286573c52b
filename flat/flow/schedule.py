"""Time grids of the Euler discretisation (docs/model.md), as pure functions of (K, kind, α).

t = 0 is the zero-filled SENSE image x₀ = Aᴴy, t = 1 the target; K cascades are K Euler steps on
0 = t₀ < t₁ < … < t_K = 1, so Σ_k Δt_k = 1 exactly (t_K is set to 1, not accumulated).
Default (``"power"``): t_k = 1 − (1 − k/K)^(1+α); α = 0 is uniform, α > 0 takes large steps
early (where the image changes most) and small steps near the target.
"""
from __future__ import annotations

import torch

KINDS = ("power", "uniform")


def time_grid(steps: int, kind: str = "power", alpha: float = 0.0, *,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The K + 1 times ``t_0 = 0 < … < t_K = 1`` as a (K + 1,) tensor."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if kind == "uniform":
        alpha = 0.0
    if not alpha >= 0:
        raise ValueError(f"alpha: must be >= 0, got {alpha}")
    k = torch.arange(steps + 1, dtype=torch.float64)
    t = 1.0 - (1.0 - k / steps) ** (1.0 + alpha)
    t[0], t[-1] = 0.0, 1.0  # exact end points
    return t.to(dtype)


def steps_from_grid(t: torch.Tensor) -> torch.Tensor:
    """Δt_k = t_{k+1} − t_k, (K,); checks the grid is increasing from 0 to 1."""
    t = torch.as_tensor(t)
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"t: expected a 1-D grid of K + 1 >= 2 times, got shape {tuple(t.shape)}")
    dt = t[1:] - t[:-1]
    if not bool((dt > 0).all()) or float(t[0]) != 0.0 or float(t[-1]) != 1.0:
        raise ValueError(f"t: expected 0 = t_0 < ... < t_K = 1, got {t.tolist()}")
    return dt
