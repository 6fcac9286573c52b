"""fastMRI's E2E-VarNet (Sriram et al. 2020) on FLAT's operators, loadable from fastMRI's weights.

:class:`VarNet` has the architecture and the parameter names of ``fastmri.models.VarNet``
(fastmri 0.3.0), so ``load_state_dict`` takes a state dict saved by fastMRI as it is, and it
computes the same function: a learned coil-sensitivity estimator, then K cascades of

    k ← k − η_k·M·(k − y) − F S U_k(Σ_c S̄_c F⁻¹ k_c)

(soft data consistency with a learned weight η_k and a normalised U-Net U_k), read out as the
root-sum-of-squares of the coil images. The data consistency runs on :mod:`flat.ops`
(``kspace_flow_step`` with dt = 1, λ = η_k, image update −U_k; ``sens_reduce``), so it runs on any
backend. The mapping of every piece onto fastMRI's, and what was checked, is in ``docs/varnet.md``.

The U-Net blocks here also take an optional time embedding through zero-initialised FiLM, so that
:class:`flat.model.FlatModel` with ``model.unet=fastmri`` can start from VarNet weights and compute
exactly the VarNet before any training (:func:`flat_from_varnet`).
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from flat.checkpoint import load_weights_only
from flat.model.unet import sinusoidal_embedding

# ---------------------------------------------------------------- inputs in either layout


def complex_kspace(masked_kspace: torch.Tensor, name: str = "masked_kspace") -> tuple[torch.Tensor, bool]:
    """Complex ``(B, C, H, W)`` from a complex tensor or fastMRI's real layout ``(B, C, H, W, 2)``;
    also returns whether the input was in the real layout."""
    if not isinstance(masked_kspace, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(masked_kspace).__name__}")
    k = masked_kspace
    if k.is_complex():
        if k.dim() != 4:
            raise ValueError(f"{name}: expected a complex (B, C, H, W) tensor, got shape {tuple(k.shape)}")
        return k, False
    if k.dtype in (torch.float32, torch.float64) and k.dim() == 5 and k.shape[-1] == 2:
        return torch.view_as_complex(k.contiguous()), True
    raise ValueError(f"{name}: expected complex (B, C, H, W) or real (B, C, H, W, 2) float32/float64, "
                     f"got {k.dtype} {tuple(k.shape)}")


def column_mask(mask: torch.Tensor, batch: int, width: int) -> torch.Tensor:
    """(B, W) bool: the first row of any mask shape the models take (fastMRI reads ``mask[:, 0, 0, :, 0]``)."""
    m = mask
    if m.dim() == 1:
        m = m.reshape(1, -1)
    elif m.dim() == 2:
        pass
    else:
        m = m.reshape(m.shape[0], -1, m.shape[-1])[:, 0, :]  # (B|1, W) after canonical_mask
    return m.expand(batch, width) != 0


def fastmri_num_low_frequencies(mask: torch.Tensor) -> torch.Tensor:
    """(B,) long: the centre width fastMRI's VarNet infers from a (B, W) column mask when it is
    given ``num_low_frequencies=None`` (or 0): twice the shorter unbroken sampled run on either side
    of ``W // 2``, at least 1. Same rule and same edge cases (``torch.argmin`` of an all-sampled
    half is 0) as ``fastmri.models.varnet.SensitivityModel``."""
    m = mask.to(torch.int8)
    cent = m.shape[1] // 2
    left = torch.argmin(m[:, :cent].flip(1), dim=1)
    right = torch.argmin(m[:, cent:], dim=1)
    return torch.max(2 * torch.min(left, right), torch.ones_like(left)).long()


def resolve_num_low_frequencies(num_low_frequencies, cols: torch.Tensor) -> torch.Tensor:
    """(B,) long centre widths from an int / (B,) value, or from the (B, W) mask when ``None`` or 0
    (fastMRI's convention: 0 means "not given")."""
    B = cols.shape[0]
    if num_low_frequencies is None:
        return fastmri_num_low_frequencies(cols)
    n = torch.as_tensor(num_low_frequencies, device=cols.device)
    if n.is_floating_point() or n.is_complex():
        if not bool((n == n.round()).all()):
            raise ValueError(f"num_low_frequencies: expected integers, got {num_low_frequencies!r}")
    n = n.reshape(-1).long()
    if n.numel() == 1:
        n = n.expand(B)
    if n.numel() != B:
        raise ValueError(f"num_low_frequencies: {n.numel()} values for a batch of {B}")
    if bool((n == 0).all()):
        return fastmri_num_low_frequencies(cols)
    W = cols.shape[1]
    if bool(((n < 1) | (n > W)).any()):
        raise ValueError(f"num_low_frequencies: {n.tolist()} outside [1, W={W}] (or None / 0: from the mask)")
    return n


# ---------------------------------------------------------------- fastMRI's U-Net, with optional FiLM


class VarNetConvBlock(nn.Module):
    """Two (conv3×3 → InstanceNorm → [FiLM] → LeakyReLU(0.2) → Dropout) layers.

    ``layers`` holds the eight modules in fastMRI's order (so the two convolutions are
    ``layers.0`` and ``layers.4``); FiLM, when ``emb_dim`` > 0, scales and shifts after each norm
    and starts at zero (identity)."""

    def __init__(self, cin: int, cout: int, drop_prob: float = 0.0, emb_dim: int = 0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout),
            nn.LeakyReLU(0.2), nn.Dropout2d(drop_prob),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout),
            nn.LeakyReLU(0.2), nn.Dropout2d(drop_prob),
        )
        self.film = nn.Linear(emb_dim, 4 * cout) if emb_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        film = None
        if self.film is not None and emb is not None:
            film = self.film(emb)[:, :, None, None].to(x.dtype).chunk(4, dim=1)
        for half in (0, 4):
            x = self.layers[half + 1](self.layers[half](x))
            if film is not None:
                g, b = film[half // 2], film[half // 2 + 1]
                x = x * (1 + g) + b
            x = self.layers[half + 3](self.layers[half + 2](x))
        return x


class VarNetTransposeBlock(nn.Module):
    """Up-sampling: transpose conv 2×2 stride 2 → InstanceNorm → LeakyReLU(0.2) (``layers.0`` the conv)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.layers = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
                                    nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VarNetUnet(nn.Module):
    """fastMRI's U-Net layout: ``pools`` levels of ConvBlock + 2×2 average pooling, a bottom
    ConvBlock (``conv``), then per level a transpose block, concatenation with the skip and a
    ConvBlock; the last level's ConvBlock is followed by a 1×1 convolution with bias."""

    def __init__(self, cin: int, cout: int, chans: int, pools: int, drop_prob: float = 0.0,
                 emb_dim: int = 0):
        super().__init__()
        self.pools = pools
        self.down_sample_layers = nn.ModuleList([VarNetConvBlock(cin, chans, drop_prob, emb_dim)])
        ch = chans
        for _ in range(pools - 1):
            self.down_sample_layers.append(VarNetConvBlock(ch, 2 * ch, drop_prob, emb_dim))
            ch *= 2
        self.conv = VarNetConvBlock(ch, 2 * ch, drop_prob, emb_dim)
        self.up_transpose_conv = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for level in range(pools):
            self.up_transpose_conv.append(VarNetTransposeBlock(2 * ch, ch))
            block = VarNetConvBlock(2 * ch, ch, drop_prob, emb_dim)
            if level == pools - 1:  # the output convolution sits in the same ModuleList entry
                block = nn.Sequential(block, nn.Conv2d(ch, cout, 1))
            self.up_conv.append(block)
            ch //= 2

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        for block in self.down_sample_layers:
            x = block(x, emb)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.conv(x, emb)
        for up, block in zip(self.up_transpose_conv, self.up_conv):
            skip = skips.pop()
            x = up(x)
            # odd sizes: the pooled-then-upsampled map is one short; reflect-pad right/bottom
            pad_w, pad_h = skip.shape[-1] - x.shape[-1], skip.shape[-2] - x.shape[-2]
            if pad_w or pad_h:
                x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
            x = torch.cat([x, skip], dim=1)
            if isinstance(block, nn.Sequential):
                x = block[1](block[0](x, emb))
            else:
                x = block(x, emb)
        return x


class VarNetNormUnet(nn.Module):
    """U(x): complex (N, H, W) -> complex (N, H, W), as fastMRI's NormUnet.

    Real and imaginary parts are two channels, each normalised by its own mean and standard
    deviation, zero-padded to a multiple of 16, passed through :class:`VarNetUnet`, un-padded and
    un-normalised (times std, plus mean). ``time_dim`` > 0 adds FLAT's time conditioning (a
    sinusoidal embedding, an MLP, zero-initialised FiLM in every ConvBlock)."""

    def __init__(self, chans: int, pools: int, time_dim: int = 0, drop_prob: float = 0.0):
        super().__init__()
        self.time_dim = time_dim
        emb_dim = 2 * time_dim if time_dim else 0
        self.t_mlp = (nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                      if time_dim else None)
        self.unet = VarNetUnet(2, 2, chans, pools, drop_prob, emb_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if not x.is_complex() or x.dim() != 3:
            raise ValueError(f"x: expected a complex (N, H, W) image, got {x.dtype} {tuple(x.shape)}")
        N, H, W = x.shape
        emb = None
        if self.t_mlp is not None:
            if t is None:
                raise ValueError("t: this network is time-conditioned; pass t of shape () or (N,)")
            t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1).expand(N)
            emb = self.t_mlp(sinusoidal_embedding(t, self.time_dim))
        h = torch.view_as_real(x).permute(0, 3, 1, 2)  # (N, 2, H, W): re, im
        flat_h = h.reshape(N, 2, H * W)
        mean = flat_h.mean(dim=2).reshape(N, 2, 1, 1)
        # unbiased std as fastMRI; the floor only matters for a constant image, where fastMRI gives NaN
        std = flat_h.std(dim=2).reshape(N, 2, 1, 1).clamp_min(torch.finfo(h.dtype).tiny)
        h = (h - mean) / std
        ph, pw = ((H - 1) | 15) + 1 - H, ((W - 1) | 15) + 1 - W
        h = F.pad(h, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        h = self.unet(h, emb)
        h = h[..., ph // 2:ph // 2 + H, pw // 2:pw // 2 + W]
        h = (h * std + mean).to(std.dtype)
        return torch.view_as_complex(h.permute(0, 2, 3, 1).contiguous())


class VarNetSensitivityModel(nn.Module):
    """Learned coil maps as E2E-VarNet: keep the ACS block of k-space (``mask_center``), each coil
    image through one :class:`VarNetNormUnet`, divided by the RSS over coils (Σ_c |S_c|² = 1)."""

    def __init__(self, chans: int = 8, pools: int = 4, mask_center: bool = True, drop_prob: float = 0.0):
        super().__init__()
        self.mask_center = mask_center
        self.norm_unet = VarNetNormUnet(chans, pools, drop_prob=drop_prob)

    def forward(self, masked_kspace: torch.Tensor, num_low_frequencies: torch.Tensor,
                *, backend: str | None = None) -> torch.Tensor:
        """masked_kspace complex (B, C, H, W); num_low_frequencies (B,) long (see
        :func:`resolve_num_low_frequencies`)."""
        import flat.ops as fo
        from flat.model.sens import acs_column_mask

        B, C, H, W = masked_kspace.shape
        k = masked_kspace
        if self.mask_center:
            acs = acs_column_mask(W, num_low_frequencies, B, k.device)
            k = torch.where(acs[:, None, None, :], k, torch.zeros((), dtype=k.dtype, device=k.device))
        coils = fo.ifft2c(k, backend=backend).reshape(B * C, H, W)
        maps = self.norm_unet(coils).reshape(B, C, H, W)
        return maps / fo.rss(maps, dim=1, backend=backend).unsqueeze(1).to(maps.real.dtype)


# ---------------------------------------------------------------- the VarNet


class VarNetCascade(nn.Module):
    """One cascade: k ← k − η·M·(k − y) − F S U(Σ_c S̄_c F⁻¹ k_c), on :func:`flat.ops.kspace_flow_step`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dc_weight = nn.Parameter(torch.ones(1))

    def forward(self, kspace: torch.Tensor, ref_kspace: torch.Tensor, mask: torch.Tensor,
                sens: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        import flat.ops as fo

        update = -self.model(fo.sens_reduce(kspace, sens, backend=backend))
        lam = self.dc_weight.reshape(()).to(kspace.real.dtype)
        return fo.kspace_flow_step(kspace, update, ref_kspace, sens, mask, 1.0, lam, backend=backend)


class VarNet(nn.Module):
    """E2E-VarNet with fastMRI's parameter names and defaults (its released models: 12 cascades,
    chans 18, pools 4, sens_chans 8, sens_pools 4).

    ``forward(masked_kspace, mask, num_low_frequencies=None)`` takes fastMRI's real layout
    ``(B, C, H, W, 2)`` with a mask ``(B|1, 1, 1, W, 1)`` (bool or float), or complex
    ``(B, C, H, W)`` with any mask :class:`flat.model.FlatModel` takes, and returns the RSS image
    ``(B, H, W)`` (float32 or float64 after the input's precision; call ``.double()`` on the module
    for float64)."""

    def __init__(self, num_cascades: int = 12, sens_chans: int = 8, sens_pools: int = 4,
                 chans: int = 18, pools: int = 4, mask_center: bool = True):
        super().__init__()
        for name, v in (("num_cascades", num_cascades), ("sens_chans", sens_chans),
                        ("sens_pools", sens_pools), ("chans", chans), ("pools", pools)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        self.sizes = dict(num_cascades=num_cascades, sens_chans=sens_chans, sens_pools=sens_pools,
                          chans=chans, pools=pools, mask_center=mask_center)
        self.sens_net = VarNetSensitivityModel(sens_chans, sens_pools, mask_center)
        self.cascades = nn.ModuleList(VarNetCascade(VarNetNormUnet(chans, pools)) for _ in range(num_cascades))

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies=None,
                *, backend: str | None = None) -> torch.Tensor:
        import flat.ops as fo
        from flat.model.flat import canonical_mask

        y, _ = complex_kspace(masked_kspace)
        B, C, H, W = y.shape
        m = canonical_mask(mask, B, H, W).to(device=y.device, dtype=y.real.dtype)
        nlf = resolve_num_low_frequencies(num_low_frequencies, column_mask(m, B, W))
        sens = self.sens_net(y, nlf, backend=backend)
        k = y
        for cascade in self.cascades:
            k = cascade(k, y, m, sens, backend=backend)
        return fo.rss(fo.ifft2c(k, backend=backend), dim=1, backend=backend)


# ---------------------------------------------------------------- fastMRI state dicts


def _state_dict(path_or_state_dict, map_location="cpu") -> dict:
    if isinstance(path_or_state_dict, Mapping):
        sd = dict(path_or_state_dict)
    elif isinstance(path_or_state_dict, (str, os.PathLike)):
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"varnet: no such state dict file: {path}")
        sd = load_weights_only(path, "varnet", map_location)
        if isinstance(sd, Mapping) and "state_dict" in sd and not any(k.startswith("cascades.") for k in sd):
            sd = sd["state_dict"]  # a Lightning checkpoint of fastMRI's VarNetModule
        if not isinstance(sd, Mapping):
            raise ValueError(f"varnet: {path} holds a {type(sd).__name__}, not a state dict")
        sd = dict(sd)
    else:
        raise TypeError(f"path_or_state_dict: expected a path or a state dict, got {type(path_or_state_dict).__name__}")
    if sd and all(k.startswith("varnet.") for k in sd):  # fastMRI's VarNetModule prefixes its keys
        sd = {k[len("varnet."):]: v for k, v in sd.items()}
    return sd


def varnet_sizes(state_dict: Mapping) -> dict:
    """``num_cascades``, ``chans``, ``pools``, ``sens_chans``, ``sens_pools`` read from the shapes
    of a fastMRI VarNet state dict."""
    def unet_sizes(prefix):
        first = state_dict.get(f"{prefix}.down_sample_layers.0.layers.0.weight")
        if first is None:
            raise ValueError(f"varnet: not a fastMRI VarNet state dict (no {prefix}.down_sample_layers.0.layers.0.weight)")
        pools = len({k.split(".")[len(prefix.split("."))+1] for k in state_dict
                     if k.startswith(f"{prefix}.down_sample_layers.")})
        return int(first.shape[0]), pools

    cascades = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("cascades.") and k.endswith(".dc_weight")})
    if not cascades or cascades != list(range(len(cascades))):
        raise ValueError(f"varnet: not a fastMRI VarNet state dict (cascade indices {cascades})")
    chans, pools = unet_sizes("cascades.0.model.unet")
    sens_chans, sens_pools = unet_sizes("sens_net.norm_unet.unet")
    return dict(num_cascades=len(cascades), chans=chans, pools=pools, sens_chans=sens_chans, sens_pools=sens_pools)


def load_fastmri_varnet(path_or_state_dict, *, mask_center: bool = True, map_location="cpu") -> VarNet:
    """A :class:`VarNet` in eval mode holding a fastMRI VarNet state dict (a file saved with
    ``torch.save(model.state_dict())``, loaded with ``weights_only=True``, or the dict itself);
    its sizes are read from the tensors. ``mask_center`` is not stored in a state dict; fastMRI's
    default (and its released models) is True."""
    sd = _state_dict(path_or_state_dict, map_location)
    model = VarNet(**varnet_sizes(sd), mask_center=mask_center)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise ValueError(f"varnet: the state dict does not match a fastMRI VarNet: {str(exc).splitlines()[0]}") from None
    return model.eval()


def varnet_model_config(path_or_state_dict, mode: str | None = None, base=None, **model_keys):
    """The :class:`flat.config.ModelConfig` of a FLAT (or vanilla) model that starts as the given
    VarNet: ``unet=fastmri``, ``state=kspace``, ``sens=learned`` and the VarNet's sizes, the other
    fields from ``base`` (default: the default config; its ``mode`` unless ``mode`` is given) and
    ``model_keys``. The DC weights η_k go onto the schedule: the vanilla baseline keeps them as its
    free weights (see :func:`load_varnet_weights`); FLAT gets the time grid
    ``t_k = Σ_{j<k} η_j / Σ η`` and σ = 1/√(Σ η), so its derived per-step weight Δt_k/σ² is η_k
    (this needs 0 < η_k < 2, the explicit-Euler stability range)."""
    import dataclasses

    from flat.config import ModelConfig

    sd = _state_dict(path_or_state_dict)
    sizes = varnet_sizes(sd)
    base = base if base is not None else ModelConfig()
    mode = mode or base.mode
    K = sizes["num_cascades"]
    eta = torch.stack([sd[f"cascades.{k}.dc_weight"].reshape(()).double() for k in range(K)])
    cfg = dict(mode=mode, cascades=K, chans=sizes["chans"], pools=sizes["pools"], unet="fastmri",
               state="kspace", sens="learned", sens_chans=sizes["sens_chans"], sens_pools=sizes["sens_pools"],
               shared_weights=False, cond_x0=False, velocity_gain=0.0, time_grid=())
    if mode == "flat":
        bad = [(k, round(float(e), 6)) for k, e in enumerate(eta) if not 0 < float(e) < 2]
        if bad:
            raise ValueError(f"varnet: DC weights η_k = {bad} (cascade, value) are outside (0, 2); FLAT's "
                             f"derived per-step weight Δt_k/σ² must lie there — start mode='vanilla' instead")
        total = float(eta.sum())
        grid = torch.cat([eta.new_zeros(1), eta.cumsum(0) / total])
        grid[-1] = 1.0
        cfg.update(time_grid=tuple(float(t) for t in grid), sigma=total ** -0.5)
    elif mode != "vanilla":
        raise ValueError(f"mode: expected 'flat' or 'vanilla', got {mode!r}")
    cfg.update(model_keys)
    out = dataclasses.replace(base, **cfg)
    out.validate()
    return out


def load_varnet_weights(model, path_or_state_dict):
    """Copy a fastMRI VarNet state dict into a FLAT model built from :func:`varnet_model_config`:
    cascade k's U-Net -> ``nets.k``, the sensitivity U-Net as it is, the DC weights to the vanilla
    baseline's ``dc_weight`` (FLAT has them in its grid already). Time-conditioning parameters
    (FiLM, the time MLP) keep their initialisation; FiLM starts at zero, so the model computes
    exactly the VarNet. Returns the model."""
    sd = _state_dict(path_or_state_dict)
    cfg = model.cfg
    K = varnet_sizes(sd)["num_cascades"]
    if cfg.unet != "fastmri" or cfg.cascades != K:
        raise ValueError(f"varnet: the FLAT model must be built with varnet_model_config (model.unet=fastmri, "
                         f"{K} cascades); got unet={cfg.unet}, cascades={cfg.cascades}")
    eta = torch.stack([sd[f"cascades.{k}.dc_weight"].reshape(()) for k in range(K)])
    if cfg.mode == "flat" and not torch.allclose(torch.tensor(cfg.dc_weights(), dtype=torch.float64), eta.double(), rtol=1e-6):
        raise ValueError("varnet: the FLAT model's DC weights Δt_k/σ² are not this VarNet's; build its config "
                         "with varnet_model_config from the same weights")
    mapped = {}
    for key, value in sd.items():
        if key.startswith("cascades.") and key.endswith(".dc_weight"):
            continue
        if key.startswith("cascades."):
            _, k, rest = key.split(".", 2)
            if not rest.startswith("model."):
                raise ValueError(f"varnet: unexpected key {key}")
            mapped[f"nets.{k}.{rest[len('model.'):]}"] = value
        else:
            mapped[key] = value
    if cfg.mode == "vanilla":
        mapped["dc_weight"] = eta.to(model.dc_weight.dtype)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    new = [k for k in missing if ".film." not in k and ".t_mlp." not in k]
    if new or unexpected:
        raise ValueError(f"varnet: weights do not map onto the FLAT model: missing {new[:4]}, unexpected {unexpected[:4]}")
    return model


def flat_from_varnet(path_or_state_dict, mode: str = "flat", **model_keys):
    """A :class:`flat.model.FlatModel` (``mode="flat"``, or the vanilla baseline) that starts as
    the given VarNet and computes exactly it: :func:`varnet_model_config` then
    :func:`load_varnet_weights`. ``model_keys``: other ModelConfig fields (e.g. ``time_dim``)."""
    from flat.model.flat import FlatModel

    sd = _state_dict(path_or_state_dict)
    return load_varnet_weights(FlatModel(varnet_model_config(sd, mode, **model_keys)), sd)


@torch.no_grad()
def reconstruct_varnet(model: VarNet, masked_kspace: torch.Tensor, mask: torch.Tensor,
                       num_low_frequencies=None, *, backend: str | None = None,
                       batch_size: int = 4) -> torch.Tensor:
    """One volume through a :class:`VarNet`, as fastMRI's pretrained-VarNet inference runs it:
    masked k-space (S, C, H, W) complex, mask (W,) (or any shape :class:`VarNet` takes),
    ``num_low_frequencies`` None (inferred from the mask: fastMRI's run on test files) or the mask
    function's centre width -> RSS images (S, H, W) float32 on the CPU, not cropped. Slices are
    independent in the VarNet, so batching them changes nothing but speed."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    k, _ = complex_kspace(masked_kspace)
    device = next(model.parameters()).device
    dtype = torch.complex128 if next(model.parameters()).dtype == torch.float64 else torch.complex64
    was_training = model.training
    model.eval()
    try:
        outs = [model(k[s:s + batch_size].to(device=device, dtype=dtype), mask.to(device), num_low_frequencies,
                      backend=backend).float().cpu()
                for s in range(0, k.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)
