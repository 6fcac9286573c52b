"""The FLAT loss (docs/model.md): final-output SSIM + L1 on the magnitude, plus velocity alignment.

    L = ssim_w·(1 − SSIM(|x_K|, target)) + l1_w·‖|x_K| − target‖₁ / max
        + w · (1/K) Σ_k ‖v^(k) − u_k‖₁                                   (flat mode only)

with v^(k) = (x_{k+1} − x_k)/Δt_k the velocity the network actually took and
u_k = (x*_{t_{k+1}} − x_k)/Δt_k the velocity that lands on the straight path
x*_t = (1 − t)·x₀ + t·x_gt at t_{k+1}. ‖·‖₁ is the mean complex modulus over pixels.
The vanilla baseline uses the final term only.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from flat.data.transforms import center_crop


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: torch.Tensor, win_size: int = 7,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-sample mean SSIM of real images (B, H, W) with a uniform 7×7 window (fastMRI's SSIMLoss).

    ``data_range``: (B,) or scalar.
    """
    if x.shape != y.shape or x.dim() != 3:
        raise ValueError(f"x, y: expected two (B, H, W) tensors of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    x, y = x.unsqueeze(1), y.unsqueeze(1)
    dr = torch.as_tensor(data_range, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    w = torch.ones(1, 1, win_size, win_size, dtype=x.dtype, device=x.device) / win_size**2
    n = win_size**2
    cov_norm = n / (n - 1)
    ux, uy = F.conv2d(x, w), F.conv2d(y, w)
    uxx, uyy, uxy = F.conv2d(x * x, w), F.conv2d(y * y, w), F.conv2d(x * y, w)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * dr) ** 2, (k2 * dr) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def final_loss(pred: torch.Tensor, target: torch.Tensor, max_value: torch.Tensor,
               ssim_weight: float = 1.0, l1_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Final-output loss on magnitudes. pred (B, H, W) real (cropped here to target), target (B, h, w).

    Both are divided by ``max_value`` (B,) so the loss is intensity-scale free (SSIM data range 1).
    """
    if pred.is_complex():
        raise TypeError("pred: expected the magnitude image (real), got a complex tensor")
    pred = center_crop(pred, target.shape[-2:])
    mx = torch.as_tensor(max_value, dtype=pred.dtype, device=pred.device).reshape(-1, 1, 1)
    p, t = pred / mx, target.to(pred.dtype) / mx
    one = torch.ones(p.shape[0], dtype=p.dtype, device=p.device)
    l_ssim = (1 - ssim(p, t, one)).mean()
    l_l1 = (p - t).abs().mean()
    loss = ssim_weight * l_ssim + l1_weight * l_l1
    return loss, {"ssim": float(l_ssim.detach()), "l1": float(l_l1.detach())}


def velocity_alignment(images: Sequence[torch.Tensor], x_gt: torch.Tensor,
                       times: torch.Tensor) -> torch.Tensor:
    """(1/K) Σ_k mean|v^(k) − u_k| over the K steps (docs/model.md).

    images: K + 1 complex (B, H, W) states x_0 … x_K (x_0 = Aᴴy); x_gt: complex (B, H, W) target
    in the same units; times: (K + 1,) grid. Since x_k cancels, v^(k) − u_k =
    (x_{k+1} − x*_{t_{k+1}})/Δt_k: each intermediate pulled onto the straight path at its own time.
    """
    K = len(images) - 1
    if K < 1 or times.numel() != K + 1:
        raise ValueError(f"images/times: expected K + 1 states and K + 1 times, got {len(images)} "
                         f"and {times.numel()}")
    x0 = images[0]
    total = x0.new_zeros((), dtype=x0.real.dtype)
    for k in range(K):
        t1 = float(times[k + 1])
        dt = t1 - float(times[k])
        x_star = (1 - t1) * x0 + t1 * x_gt  # straight path at t_{k+1}
        total = total + ((images[k + 1] - x_star) / dt).abs().mean()
    return total / K


def flat_loss(images: Sequence[torch.Tensor], times: torch.Tensor, scale: torch.Tensor,
              target: torch.Tensor, max_value: torch.Tensor, x_gt: torch.Tensor | None, *,
              ssim_weight: float = 1.0, l1_weight: float = 1.0,
              velocity_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The whole training loss for a model output.

    images: the model's states (normalised units, complex (B, H, W)); scale (B,): normalised ->
    input units; target (B, h, w) and max_value (B,) in input units; x_gt complex (B, H, W) in
    normalised units (needed only when velocity_weight > 0).
    """
    pred = images[-1].abs() * scale.reshape(-1, 1, 1).to(images[-1].real.dtype)
    loss, parts = final_loss(pred, target, max_value, ssim_weight, l1_weight)
    if velocity_weight > 0:
        if x_gt is None:
            raise ValueError("x_gt: the velocity-alignment term needs the complex target image")
        va = velocity_alignment(images, x_gt, times)
        loss = loss + velocity_weight * va
        parts["velocity"] = float(va.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts
