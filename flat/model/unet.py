"""Normalised, time-conditioned U-Net: the velocity network v_θ(x, t) of docs/model.md.

The complex image (B, H, W) enters as 2 real channels (re, im), is normalised per sample by its
mean and standard deviation (fastMRI's NormUnet: the network sees O(1) inputs whatever the
intensity scale), padded to a multiple of 2^pools, and passed through a U-Net (Ronneberger et al.;
fastMRI's layout: conv3×3 → InstanceNorm → LeakyReLU, twice per level). Time enters through a
sinusoidal embedding and FiLM (per-channel scale and shift after each normalisation, Perez et al.
2018). The output is a velocity, so it is *rescaled* by the input std but not shifted by its mean.
With ``time_dim=0`` there is no time input (the vanilla baseline).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) [sin, cos] features (Transformer/DDPM style, t scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    arg = 1000.0 * t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class ConvBlock(nn.Module):
    """Two (conv3×3 → InstanceNorm → [FiLM] → LeakyReLU) layers."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(cout)
        self.norm2 = nn.InstanceNorm2d(cout)
        # FiLM: zero-initialised so that an untrained net ignores t (starts as the plain U-Net)
        self.film = nn.Linear(emb_dim, 4 * cout) if emb_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h1, h2 = self.norm1(self.conv1(x)), None
        if self.film is not None and emb is not None:
            g1, b1, g2, b2 = self.film(emb)[:, :, None, None].chunk(4, dim=1)
            h1 = h1 * (1 + g1) + b1
        h1 = F.leaky_relu(h1, 0.2)
        h2 = self.norm2(self.conv2(h1))
        if self.film is not None and emb is not None:
            h2 = h2 * (1 + g2) + b2
        return F.leaky_relu(h2, 0.2)


class Unet(nn.Module):
    """Plain U-Net on (B, cin, H, W) real tensors, H and W multiples of 2^pools."""

    def __init__(self, cin: int, cout: int, chans: int, pools: int, emb_dim: int = 0):
        super().__init__()
        self.pools = pools
        self.down = nn.ModuleList()
        ch = chans
        self.down.append(ConvBlock(cin, ch, emb_dim))
        for _ in range(pools - 1):
            self.down.append(ConvBlock(ch, ch * 2, emb_dim))
            ch *= 2
        self.bottom = ConvBlock(ch, ch * 2, emb_dim)
        self.up_t = nn.ModuleList()
        self.up = nn.ModuleList()
        for _ in range(pools):
            self.up_t.append(nn.ConvTranspose2d(ch * 2, ch, 2, stride=2, bias=False))
            self.up.append(ConvBlock(ch * 2, ch, emb_dim))
            ch //= 2
        self.out = nn.Conv2d(chans, cout, 1)
        # zero output: an untrained velocity is 0, so the untrained flow is pure data consistency
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        for blk in self.down:
            x = blk(x, emb)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.bottom(x, emb)
        for up_t, blk in zip(self.up_t, self.up):
            x = torch.cat([up_t(x), skips.pop()], dim=1)
            x = blk(x, emb)
        return self.out(x)


class NormUnet(nn.Module):
    """v_θ(x, t): complex (B, H, W) image [+ times (B,)] -> complex (B, H, W) velocity."""

    def __init__(self, chans: int = 16, pools: int = 3, time_dim: int = 32, cond: bool = False):
        super().__init__()
        self.time_dim = time_dim
        self.cond = cond  # also see the conditioning image x_0 = Aᴴy (2 more channels)
        emb_dim = 2 * time_dim if time_dim else 0
        self.t_mlp = (nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                      if time_dim else None)
        self.unet = Unet(4 if cond else 2, 2, chans, pools, emb_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        if not x.is_complex() or x.dim() != 3:
            raise ValueError(f"x: expected a complex (B, H, W) image, got {x.dtype} {tuple(x.shape)}")
        if self.cond and (cond is None or cond.shape != x.shape):
            raise ValueError(f"cond: this network is conditioned on x_0; expected {tuple(x.shape)}, got "
                             f"{None if cond is None else tuple(cond.shape)}")
        B, H, W = x.shape
        emb = None
        if self.t_mlp is not None:
            if t is None:
                raise ValueError("t: this velocity network is time-conditioned; pass t of shape () or (B,)")
            t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1).expand(B)
            emb = self.t_mlp(sinusoidal_embedding(t, self.time_dim))
        h = torch.view_as_real(x).permute(0, 3, 1, 2).float()  # (B, 2, H, W)
        mean = h.mean(dim=(1, 2, 3), keepdim=True)
        std = h.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        h = (h - mean) / std
        if self.cond:  # x_0 with x's statistics, so their relative scale is kept: (B, 4, H, W)
            h0 = (torch.view_as_real(cond).permute(0, 3, 1, 2).float() - mean) / std
            h = torch.cat([h, h0], dim=1)
        m = 2 ** self.unet.pools
        ph, pw = (-H) % m, (-W) % m
        h = F.pad(h, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h = self.unet(h, emb)
        h = h[:, :, ph // 2:ph // 2 + H, pw // 2:pw // 2 + W]
        h = (h * std).float()  # a velocity: rescale, no mean shift
        return torch.view_as_complex(h.permute(0, 2, 3, 1).contiguous())
