"""Coil sensitivities S (B, C, H, W), normalised so Σ_c |S_c|² = 1 (docs/operators.md).

Three sources (``ModelConfig.sens``):
``"acs"``      a fixed estimate from the fully sampled centre lines (:func:`flat.coils.estimate_sens_acs`);
``"learned"``  E2E-VarNet's estimator (Sriram et al. 2020, §3.2): low-resolution ACS coil images,
               refined coil by coil by a U-Net, divided by their root-sum-of-squares;
``"given"``    maps supplied by the caller (``sens=`` of the model's forward).
"""
from __future__ import annotations

import torch
from torch import nn

from flat.model.unet import NormUnet


def acs_column_mask(width: int, num_low_frequencies: torch.Tensor | int, batch: int,
                    device=None) -> torch.Tensor:
    """(B, W) bool mask of the central ``num_low_frequencies`` columns (fastMRI's centring)."""
    nlf = torch.as_tensor(num_low_frequencies, device=device).reshape(-1).expand(batch)
    cols = torch.arange(width, device=device).reshape(1, -1)
    pad = (width - nlf.reshape(-1, 1) + 1) // 2
    return (cols >= pad) & (cols < pad + nlf.reshape(-1, 1))


def _normalise(sens: torch.Tensor) -> torch.Tensor:
    """Divide by the coil RSS so Σ_c |S_c|² = 1 (where there is signal)."""
    return sens / sens.abs().pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)


def fixed_acs_sens(masked_kspace: torch.Tensor, num_low_frequencies) -> torch.Tensor:
    """The fixed ACS estimate of :func:`flat.coils.estimate_sens_acs`: (B, C, H, W) -> (B, C, H, W)."""
    from flat.coils import estimate_sens_acs

    return estimate_sens_acs(masked_kspace, num_low_frequencies).to(masked_kspace.dtype)


class SensitivityModel(nn.Module):
    """Learned estimator: S = RSS-normalise(x_c + U(x_c)), x_c = ifft2c(ACS-masked k_c) per coil.

    The U-Net's output layer starts at zero, so an untrained estimator is the plain low-resolution
    ACS estimate; training refines it end to end through the reconstruction loss.
    """

    def __init__(self, chans: int = 8, pools: int = 3):
        super().__init__()
        self.norm_unet = NormUnet(chans, pools, time_dim=0)

    def forward(self, masked_kspace: torch.Tensor, num_low_frequencies) -> torch.Tensor:
        import flat.ops as fo

        B, C, H, W = masked_kspace.shape
        acs = acs_column_mask(W, num_low_frequencies, B, masked_kspace.device)
        coil = fo.ifft2c(masked_kspace * acs[:, None, None, :].to(masked_kspace.real.dtype))
        flat_coils = coil.reshape(B * C, H, W)  # each coil image through the same U-Net
        refined = flat_coils + self.norm_unet(flat_coils).to(coil.dtype)
        return _normalise(refined.reshape(B, C, H, W))
