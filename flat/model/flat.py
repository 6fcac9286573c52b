"""The unrolled flow (docs/model.md): K forward-Euler steps of a conditional probability-flow ODE.

    x_0 = Aᴴy,   x_{k+1} = flow_step(x_k, v_θ(x_k, t_k), y, S, M, dt=Δt_k, lam=1/σ²)
                         = x_k + Δt_k·(v_θ(x_k, t_k) − Aᴴ(A x_k − y)/σ²)

on the grid of :mod:`flat.flow.schedule` (Qi et al. 2025, "Unrolled networks are conditional
probability flows in MRI reconstruction"). The DC weight Δt_k/σ² is derived, never learned.
The vanilla baseline (``mode="vanilla"``) is the same network unrolled the classical way:
x_{k+1} = x_k + v_θ(x_k) − η_k·Aᴴ(A x_k − y) with free learnable η_k and no time input, i.e. the
same ``flow_step`` with dt = 1 and lam = η_k.

The model works in normalised units: the k-space is divided by a robust per-sample scale (a high
quantile of the zero-filled RSS image), so σ means the same on every data set and the network sees
O(1) intensities; :class:`FlowOutput` maps back to the input's intensity scale.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from flat.config import ModelConfig
from flat.flow.schedule import steps_from_grid
from flat.ops.checks import canonical_mask as check_mask
from flat.model.sens import SensitivityModel, fixed_acs_sens
from flat.model.unet import NormUnet
from flat.model.varnet import (VarNetNormUnet, VarNetSensitivityModel, column_mask, complex_kspace,
                               resolve_num_low_frequencies)


@dataclass
class FlowOutput:
    """Every state of the trajectory.

    images: K + 1 complex (B, H, W) states in normalised units (images[0] = Aᴴy, images[-1] = x_K);
    times: (K + 1,) float64 grid (the vanilla baseline reports k/K for bookkeeping);
    scale: (B,) factor from normalised to input units; sens: (B, C, H, W) maps used;
    final: E2E-VarNet's read-out of the last state, the RSS of the coil images (B, H, W) in
    normalised units (``model.unet=fastmri`` with ``model.state=kspace``; else None, and the
    output is |x_K|).
    """

    images: list
    times: torch.Tensor
    scale: torch.Tensor
    sens: torch.Tensor
    final: torch.Tensor | None = None

    def magnitude(self, k: int = -1) -> torch.Tensor:
        """|x_k| (the read-out ``final`` for the last state when set) in the input's intensity scale,
        real (B, H, W)."""
        x = self.images[k]
        if self.final is not None and k in (-1, len(self.images) - 1):
            return self.final * self.scale.reshape(-1, 1, 1).to(self.final.dtype)
        return x.abs() * self.scale.reshape(-1, 1, 1).to(x.real.dtype)

    @property
    def output(self) -> torch.Tensor:
        return self.magnitude(-1)


def canonical_mask(mask: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Any mask form flat.ops takes (column (W,), (B, W), (B|1, 1, 1, W), 2-D (B|1, 1, H, W), fastMRI's
    (1, 1, W, 1) and (B|1, 1, 1|H, W, 1)) -> float32 (B|1, 1, 1|H, W): the ops' own check
    (flat/ops/checks.py), viewed with a coil dim."""
    device = mask.device if isinstance(mask, torch.Tensor) else torch.device("cpu")
    return check_mask(mask, batch, height, width, torch.complex64, device).unsqueeze(1)


@contextlib.contextmanager
def _per_sample_checkpoint(net: nn.Module, chunks: int = 4):
    """Within the block, ``net`` runs on ``chunks`` groups of samples (here: coil images), each
    under ``torch.utils.checkpoint``: the backward then holds one group's activations at a time
    instead of all C coils'. One coil per group saves a little more memory but runs the
    convolutions at batch 1 (measured: 0.31x instead of 0.36x fastMRI's peak, 1.52x instead of
    1.26x its CPU step time; benchmarks/RESULTS.md). Exact for the sensitivity U-Nets, which
    normalise every sample by itself."""
    plain = type(net).forward

    def forward(x, *args, **kw):
        size = -(-x.shape[0] // chunks)
        return torch.cat([torch.utils.checkpoint.checkpoint(plain, net, part, *args, use_reentrant=False, **kw)
                          for part in x.split(size)])

    net.forward = forward  # an instance attribute: parameters and state-dict keys stay as they are
    try:
        yield
    finally:
        del net.forward


class FlatModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        flat = cfg.mode == "flat"
        n_nets = 1 if cfg.shared_weights else cfg.cascades
        time_dim = cfg.time_dim if flat else 0
        if cfg.unet == "fastmri":  # E2E-VarNet's networks and parameter names (flat/model/varnet.py)
            self.nets = nn.ModuleList(VarNetNormUnet(cfg.chans, cfg.pools, time_dim) for _ in range(n_nets))
        else:
            self.nets = nn.ModuleList(
                NormUnet(cfg.chans, cfg.pools, time_dim=time_dim, cond=cfg.cond_x0) for _ in range(n_nets)
            )
        # vanilla: free DC weights η_k (E2E-VarNet's dc_weight), one per cascade
        self.dc_weight = None if flat else nn.Parameter(torch.full((cfg.cascades,), float(cfg.vanilla_dc_init)))
        self.sens_net = None
        if cfg.sens == "learned":
            self.sens_net = (VarNetSensitivityModel(cfg.sens_chans, cfg.sens_pools) if cfg.unet == "fastmri"
                             else SensitivityModel(cfg.sens_chans, cfg.sens_pools))

        # memory levers (train.checkpoint_cascades, train.amp; docs/training.md): run-time
        # settings, not architecture, so neither is in cfg nor in the state dict
        self.checkpoint_nets, self.amp = False, "none"

    def set_memory_levers(self, checkpoint: bool = False, amp: str = "none") -> "FlatModel":
        """``checkpoint``: recompute each cascade's network (and the learned-sensitivity network)
        in the backward instead of storing its activations. ``amp="bf16"``: the cascade networks
        under bfloat16 autocast; the data-consistency ops stay complex64 (autocast is off there)."""
        if amp not in ("none", "bf16"):
            raise ValueError(f"amp: expected 'none' or 'bf16', got {amp!r}")
        self.checkpoint_nets, self.amp = bool(checkpoint), amp
        return self

    def _net(self, net, x, tk, ahy):
        """One cascade network call under the memory levers; its output is complex64 either way."""
        def run(x, tk, ahy):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
                v = net(x, tk, ahy) if self.cfg.cond_x0 else net(x, tk)
            return v.to(torch.complex64)

        if self.checkpoint_nets and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(run, x, tk, ahy, use_reentrant=False)
        return run(x, tk, ahy)

    # -- pieces ---------------------------------------------------------------------------------
    def grid(self, steps: int | None = None) -> torch.Tensor:
        K = steps or self.cfg.cascades
        if self.cfg.mode == "vanilla":
            return torch.arange(K + 1, dtype=torch.float64) / K
        return self.cfg.grid(K)

    def normalisation_scale(self, masked_kspace: torch.Tensor) -> torch.Tensor:
        """(B,) robust scale: the ``scale_quantile`` quantile of the zero-filled RSS image."""
        import flat.ops as fo

        B = masked_kspace.shape[0]
        zf = fo.rss(fo.ifft2c(masked_kspace), dim=1).reshape(B, -1).float()  # (B, H·W)
        s = torch.quantile(zf, self.cfg.scale_quantile, dim=1)
        return s.clamp_min(torch.finfo(torch.float32).tiny).detach()

    def estimate_sens(self, masked_kspace, num_low_frequencies, sens=None) -> torch.Tensor:
        if sens is not None:
            if sens.shape != masked_kspace.shape:
                raise ValueError(f"sens: shape {tuple(sens.shape)} != k-space shape {tuple(masked_kspace.shape)}")
            return sens.to(masked_kspace.dtype)
        if self.cfg.sens == "given":
            raise ValueError("sens: this model was configured with model.sens=given; pass sens maps")
        if self.sens_net is not None:
            if self.checkpoint_nets and torch.is_grad_enabled():  # its U-Net recomputed coil by coil
                with _per_sample_checkpoint(self.sens_net.norm_unet):
                    return self.sens_net(masked_kspace, num_low_frequencies)
            return self.sens_net(masked_kspace, num_low_frequencies)
        if self.cfg.sens == "espirit":  # normally precomputed once per slice and passed as sens
            from flat.coils import network_maps

            return network_maps(masked_kspace, num_low_frequencies).to(masked_kspace.dtype)
        return fixed_acs_sens(masked_kspace, num_low_frequencies)

    def target_image(self, kspace: torch.Tensor, out: FlowOutput) -> torch.Tensor:
        """x_gt = Σ_c conj(S_c)·ifft2c(k_c) of fully sampled k-space, in the output's normalised units."""
        import flat.ops as fo

        k = kspace / out.scale.reshape(-1, 1, 1, 1).to(kspace.real.dtype)
        return fo.sens_reduce(k.to(out.sens.dtype), out.sens)

    # -- the flow -------------------------------------------------------------------------------
    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies,
                *, sens: torch.Tensor | None = None, steps: int | None = None,
                backend: str | None = None, cascade=None) -> FlowOutput:
        """masked_kspace (B, C, H, W) complex64, or fastMRI's real layout (B, C, H, W, 2);
        mask (W,), (B, W), (B, 1, 1|H, W) or fastMRI's (B, 1, 1, W, 1); num_low_frequencies int,
        (B,), or None / 0 to infer it from the mask as fastMRI's VarNet does; ``steps`` another K
        (shared-weight flat models only). ``cascade``: a stand-in for :meth:`cascade` with its
        signature (a compiled or CUDA-graph version: flat.inference.make_forward)."""
        import flat.ops as fo

        masked_kspace, _ = complex_kspace(masked_kspace)
        cfg = self.cfg
        K = cfg.cascades if steps is None else int(steps)
        if K != cfg.cascades and not (cfg.shared_weights and cfg.mode == "flat"):
            raise ValueError(f"steps: only a shared-weight FLAT model runs a different number of steps "
                             f"than it was built with ({cfg.cascades}); got steps={steps}")
        if K < 1:
            raise ValueError(f"steps: must be >= 1, got {steps}")
        B, C, H, W = masked_kspace.shape
        mask = canonical_mask(mask, B, H, W).to(masked_kspace.device)
        num_low_frequencies = resolve_num_low_frequencies(num_low_frequencies, column_mask(mask, B, W))
        y = masked_kspace.to(torch.complex64)
        scale = self.normalisation_scale(y)
        y = y / scale.reshape(-1, 1, 1, 1)  # normalised units
        if sens is not None:
            sens = sens.to(y.device)
        S = self.estimate_sens(y, num_low_frequencies, sens).to(torch.complex64)
        t = self.grid(K)
        dts = steps_from_grid(t) if cfg.mode == "flat" else torch.ones(K, dtype=torch.float64)
        lam = 1.0 / cfg.noise_scale() ** 2
        if cfg.mode == "flat" and max(cfg.dc_weights(K)) >= 2.0:
            raise ValueError(f"steps: {K} steps give a per-step DC weight Δt·λ = "
                             f"{max(cfg.dc_weights(K)):.3g} >= 2 (unstable explicit Euler); use more steps")
        # t, Δt and λ as device tensors, built once per forward: the cascade then needs no Python
        # float per step (a graph break under torch.compile) and no host-to-device copy per op
        # call (illegal during CUDA-graph capture); docs/gpu.md
        dev = y.device
        t_dev = t.to(device=dev, dtype=torch.float32)
        dts_dev = dts.to(device=dev, dtype=torch.float32)
        lam_dev = torch.full((), lam, dtype=torch.float32, device=dev)
        ahy = fo.sense_adjoint(y, S, mask)  # x_0 = Aᴴy, computed once
        images, k_state = (cascade or self.cascade)(ahy, y, S, mask, t_dev, dts_dev, lam_dev, backend=backend)
        final = None
        if cfg.unet == "fastmri" and cfg.state == "kspace":  # E2E-VarNet's read-out: RSS of coil images
            final = fo.rss(fo.ifft2c(k_state, backend=backend), dim=1, backend=backend)
        return FlowOutput(images=images, times=t, scale=scale, sens=S, final=final)

    def cascade(self, ahy, y, S, mask, t, dts, lam, *, backend=None):
        """The K Euler steps from x_0 = ``ahy``: (the K + 1 states, the final k-space state).

        ``t`` (K + 1,), ``dts`` (K,) and ``lam`` () are float32 tensors on the data's device: no host
        sync anywhere, so this compiles with ``fullgraph=True`` and can be captured in a CUDA graph.
        """
        import flat.ops as fo

        cfg = self.cfg
        K, B = dts.shape[0], y.shape[0]
        dev_type = y.device.type
        gain = cfg.gain()
        x = ahy
        k_state = y
        images = [x]
        for k in range(K):
            net = self.nets[0 if cfg.shared_weights else k]
            tk = t[k].expand(B) if cfg.mode == "flat" else None
            v = self._net(net, x, tk, ahy) if self.checkpoint_nets or self.amp != "none" else (
                net(x, tk, ahy) if cfg.cond_x0 else net(x, tk))
            if cfg.unet == "fastmri":  # VarNet's convention: the network term is the step, subtracted
                v = -v / dts[k]
            elif gain != 1.0:
                v = v * gain  # fixed parametrisation constant (ModelConfig.velocity_gain)
            # the DC step stays in complex64 even under autocast (docs/kernels.md, precision)
            with torch.autocast(dev_type, enabled=False):
                v = v.to(torch.complex64)
                dt_k = dts[k]
                lam_k = lam if cfg.mode == "flat" else self.dc_weight[k].float()
                if cfg.state == "image":
                    x = fo.flow_step(x, v, y, S, mask, dt_k, lam_k, ahy=ahy, backend=backend)
                else:  # multicoil k-space state, E2E-VarNet form
                    k_state = fo.kspace_flow_step(k_state, v, y, S, mask, dt_k, lam_k, backend=backend)
                    x = fo.sens_reduce(k_state, S, backend=backend)
            images.append(x)
        return images, k_state


def build_model(cfg: ModelConfig) -> FlatModel:
    return FlatModel(cfg)
