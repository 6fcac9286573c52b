"""Configuration: frozen dataclasses, named presets, ``--set section.key=value`` overrides.

A :class:`Config` is data, never code: it is built from a preset, an optional JSON file and
explicit overrides, validated once, and stored inside every checkpoint as a plain dict
(``Config.to_dict`` / ``Config.from_dict``) so a checkpoint alone rebuilds its model.

>>> cfg = get_preset("demo")
>>> cfg = apply_overrides(cfg, ["model.cascades=8", "train.lr=3e-4"])
>>> cfg.model.dc_weights()     # Δt_k·λ of every step (docs/model.md)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field

MODES = ("flat", "vanilla")
SENS_MODES = ("acs", "learned", "given", "espirit")
STATES = ("image", "kspace")
UNETS = ("flat", "fastmri")
SCHEDULES = ("power", "uniform")
LR_SCHEDULES = ("cosine", "constant")
MASK_TYPES = ("random", "equispaced", "equispaced_fraction")
AMP_MODES = ("none", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    """The unrolled flow (docs/model.md).

    ``mode="flat"``: K Euler steps of the probability-flow ODE on the grid of ``schedule``/``alpha``
    with the data-consistency weight *derived* as Δt_k/σ² (``sigma``); the U-Net sees t.
    ``mode="vanilla"``: the same network trained the classical way (free learnable DC weight per
    cascade, Δt = 1, no time input, final loss only).

    σ is the noise scale of the conditional flow in the normalised units of the model (k-space
    divided by a robust scale of the zero-filled image, so that image intensities are O(1)); it sets
    λ = 1/σ², hence the per-step DC weight Δt_k·λ (logged at the start of training). Set it either
    directly (``sigma`` > 0) or, by default, through ``dc_per_step``, the mean Δt·λ over the K-step
    training grid: σ = 1/√(K·dc_per_step) (mean Δt = 1/K), so the default suits any K.
    The explicit Euler data step x ← x − Δt·λ·Aᴴ(Ax − y) is stable only for Δt·λ < 2 (the normal
    operator has eigenvalues in [0, 1] when Σ|S|² = 1), which :meth:`validate` (and the forward pass,
    for another number of steps) enforces. Δt·λ = 1 replaces the sampled k-space at every step;
    λ = 1 (σ = 1, Δt·λ = 1/6 at K = 6) is far too weak; the sweep behind the default 1.5 is in
    docs/model.md.

    ``velocity_gain``: the velocity is v = g·U(x, t) with a fixed g (default K, the training number
    of cascades). An Euler step moves the image by Δt·v ≈ v/K, a vanilla cascade by U(x) itself; with
    g = K both start with the same image-space step per unit of network output, so Adam (whose
    per-parameter step does not depend on that scale) trains FLAT's output layer as fast as the
    baseline's instead of K times slower. g is a constant of the parametrisation, so a shared-weight
    model still runs any number of steps.
    """

    mode: str = "flat"
    cascades: int = 6  # K Euler steps / unrolled cascades
    shared_weights: bool = False  # one velocity net for all steps (can then run any K at inference)
    schedule: str = "power"  # t_k = 1 − (1 − k/K)^(1+α); "uniform" is α = 0
    alpha: float = 0.0
    dc_per_step: float = 1.5  # mean Δt·λ over the training grid; sets σ unless sigma > 0
    sigma: float = 0.0  # explicit σ (> 0) overrides dc_per_step; 0 = derive it
    chans: int = 16  # U-Net width at full resolution
    pools: int = 3  # U-Net depth
    time_dim: int = 32  # sinusoidal embedding width (flat mode only; vanilla has no time input)
    velocity_gain: float = 0.0  # v = gain·U(x, t); 0 = auto: K for flat (see below), 1 for vanilla
    cond_x0: bool = False  # the velocity net also sees x_0 = Aᴴy: v_θ(x_t, t; x_0) (both modes)
    state: str = "image"  # "image" (default) or "kspace" (E2E-VarNet form, kspace_flow_step)
    sens: str = "acs"  # "acs" fixed ACS estimate, "learned" E2E-VarNet estimator, "given" user maps,
    # "espirit" ESPIRiT maps (flat/espirit.py; computed once per slice by the data pipeline)
    sens_chans: int = 8
    sens_pools: int = 3
    vanilla_dc_init: float = 1.0  # initial free DC weight η_k of the vanilla baseline
    scale_quantile: float = 0.99  # input normalisation: this quantile of the zero-filled RSS image
    # "flat": FLAT's U-Net (the default; every existing checkpoint). "fastmri": E2E-VarNet's U-Net,
    # sensitivity net and read-out with fastMRI's parameter names, so VarNet weights load
    # (flat.model.flat_from_varnet, docs/varnet.md); the network gives the step's image displacement
    # as VarNet's cascades do: v_k = −U_k(x, t)/Δt_k (velocity_gain must stay 0, weights per cascade).
    unet: str = "flat"
    # explicit grid t_0 = 0 < … < t_K = 1 (K + 1 values) replacing schedule/alpha; () = use them.
    # flat_from_varnet puts VarNet's DC weights here: Δt_k ∝ η_k.
    time_grid: tuple = ()

    def gain(self) -> float:
        """g of v = g·U(x, t): ``velocity_gain`` if set, else K (flat) or 1 (vanilla)."""
        if self.velocity_gain > 0:
            return float(self.velocity_gain)
        return float(self.cascades) if self.mode == "flat" else 1.0

    def noise_scale(self) -> float:
        """σ: ``sigma`` if set, else 1/√(K·dc_per_step) for the training K (fixed at inference)."""
        if self.sigma > 0:
            return float(self.sigma)
        return 1.0 / math.sqrt(self.cascades * self.dc_per_step)

    def dc_weights(self, steps: int | None = None) -> list[float]:
        """Δt_k·λ for every step of the FLAT grid with ``steps`` steps (λ = 1/σ²)."""
        from flat.flow.schedule import steps_from_grid

        dts = steps_from_grid(self.grid(steps))
        return [float(d) / self.noise_scale() ** 2 for d in dts]

    def grid(self, steps: int | None = None):
        """The K + 1 times of the FLAT grid: ``time_grid`` if set, else ``schedule``/``alpha``."""
        import torch

        from flat.flow.schedule import time_grid

        K = steps or self.cascades
        if self.time_grid:
            if K != len(self.time_grid) - 1:
                raise ValueError(f"steps: model.time_grid has {len(self.time_grid) - 1} steps, got {K}")
            return torch.tensor([float(t) for t in self.time_grid], dtype=torch.float64)
        return time_grid(K, self.schedule, self.alpha)

    def validate(self) -> None:
        _choice("model.mode", self.mode, MODES)
        _choice("model.unet", self.unet, UNETS)
        if self.time_grid:
            from flat.flow.schedule import steps_from_grid

            if len(self.time_grid) != self.cascades + 1:
                raise ValueError(f"model.time_grid: expected model.cascades + 1 = {self.cascades + 1} "
                                 f"times, got {len(self.time_grid)}")
            try:
                steps_from_grid(self.grid())
            except (ValueError, TypeError) as exc:
                raise ValueError(f"model.time_grid: {exc}") from None
        if self.unet == "fastmri":
            if self.velocity_gain != 0:
                raise ValueError("model.velocity_gain: must be 0 with model.unet=fastmri (its network "
                                 "gives the step displacement, v = −U/Δt)")
            if self.shared_weights:
                raise ValueError("model.shared_weights: not available with model.unet=fastmri "
                                 "(displacement form, per-cascade networks)")
            if self.cond_x0:
                raise ValueError("model.cond_x0: not available with model.unet=fastmri")
        _choice("model.schedule", self.schedule, SCHEDULES)
        _choice("model.state", self.state, STATES)
        _choice("model.sens", self.sens, SENS_MODES)
        _positive_int("model.cascades", self.cascades)
        _positive_int("model.chans", self.chans)
        _positive_int("model.pools", self.pools)
        _positive_int("model.sens_chans", self.sens_chans)
        _positive_int("model.sens_pools", self.sens_pools)
        if self.mode == "flat":
            _positive_int("model.time_dim", self.time_dim)
            if self.time_dim % 2:
                raise ValueError(f"model.time_dim: must be even (sin/cos pairs), got {self.time_dim}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"model.alpha: must be a finite number >= 0, got {self.alpha}")
        if self.schedule == "uniform" and self.alpha != 0:
            raise ValueError("model.alpha: must be 0 with model.schedule=uniform (use schedule=power)")
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ValueError(f"model.sigma: must be a finite number > 0 (or 0 = derive from "
                             f"model.dc_per_step), got {self.sigma}")
        if not (0 < self.dc_per_step < 2):
            raise ValueError(f"model.dc_per_step: the mean Δt·λ must lie in (0, 2) (explicit Euler "
                             f"stability), got {self.dc_per_step}")
        if self.mode == "flat":
            worst = max(self.dc_weights())
            if worst >= 2.0:
                which = "model.sigma" if self.sigma > 0 else "model.dc_per_step"
                raise ValueError(
                    f"{which}: the largest per-step DC weight Δt·λ = Δt/σ² is {worst:.3g} >= 2, where "
                    f"the explicit Euler data step is unstable; lower the DC weight (raise σ above "
                    f"{math.sqrt(worst * self.noise_scale() ** 2 / 2):.3g}), lower model.alpha or use "
                    f"more cascades")
        if not (self.velocity_gain >= 0 and math.isfinite(self.velocity_gain)):
            raise ValueError(f"model.velocity_gain: must be a finite number >= 0 (0 = auto), got "
                             f"{self.velocity_gain}")
        if not (0.5 <= self.scale_quantile <= 1.0):
            raise ValueError(f"model.scale_quantile: must be in [0.5, 1], got {self.scale_quantile}")


@dataclass(frozen=True)
class DataConfig:
    """Retrospective undersampling and augmentation for training (fastMRI mask functions)."""

    mask_type: str = "equispaced_fraction"
    accelerations: tuple = (4,)
    center_fractions: tuple = (0.08,)
    augment: bool = True  # random flips of the fully sampled k-space (image flips), cheap
    max_slices: int = 0  # 0 = all; otherwise the first N slices of the sorted set (quick runs)
    # fastMRI's SliceDataset sampling, seeded by train.seed: a random fraction of the slices
    # (sample_rate) or of whole volumes (volume_sample_rate), drawn once per run; 1 = all
    sample_rate: float = 1.0
    volume_sample_rate: float = 1.0

    def validate(self) -> None:
        _choice("data.mask_type", self.mask_type, MASK_TYPES)
        if not self.accelerations or len(self.accelerations) != len(self.center_fractions):
            raise ValueError(
                f"data.accelerations / data.center_fractions: need equal non-empty lengths, got "
                f"{self.accelerations} and {self.center_fractions}"
            )
        for a in self.accelerations:
            if not a >= 1:
                raise ValueError(f"data.accelerations: must be >= 1, got {a}")
        for c in self.center_fractions:
            if not 0 < c < 1:
                raise ValueError(f"data.center_fractions: must be in (0, 1), got {c}")
        if self.max_slices < 0:
            raise ValueError(f"data.max_slices: must be >= 0, got {self.max_slices}")
        for name in ("sample_rate", "volume_sample_rate"):
            v = getattr(self, name)
            if not (0 < v <= 1):
                raise ValueError(f"data.{name}: must be in (0, 1] (1 = all), got {v}")
        if self.sample_rate < 1 and self.volume_sample_rate < 1:
            raise ValueError("data.sample_rate / data.volume_sample_rate: set one of them, not both "
                             "(slices or whole volumes, as fastMRI's SliceDataset)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (AdamW + warm-up/cosine), FLAT loss weights, bookkeeping."""

    epochs: int = 10
    max_steps: int = 0  # 0 = epochs decide; otherwise stop after this many optimiser steps
    time_limit_s: float = 0.0  # 0 = none; otherwise stop (and checkpoint) after this much wall time
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 20
    grad_clip: float = 1.0  # 0 = off
    ssim_weight: float = 1.0  # final loss: ssim_weight·(1 − SSIM) + l1_weight·L1 (magnitude / max)
    l1_weight: float = 1.0
    # w of the velocity-alignment term (flat mode only); its sweep is in docs/model.md
    velocity_weight: float = 1.0
    seed: int = 0
    threads: int = 0  # torch threads per process; 0 = all cores / processes
    checkpoint_every: int = 50  # optimiser steps between checkpoints (and at every epoch end)
    val_every: int = 1  # epochs between validations (and always after the last)
    log_every: int = 10
    # DataLoader worker processes per rank; -1 = auto (the CPUs this process may use, shared by the
    # ranks on the node, minus one for the step; 0 on a single CPU), 0 = load in the main process
    workers: int = -1
    # memory levers (docs/training.md): recompute each cascade's network in the backward instead
    # of storing its activations; "bf16": the networks under bfloat16 autocast, every
    # data-consistency op still in complex64
    checkpoint_cascades: bool = False
    amp: str = "none"

    def validate(self) -> None:
        _positive_int("train.epochs", self.epochs)
        _choice("train.amp", self.amp, AMP_MODES)
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < -1:
            raise ValueError(f"train.workers: must be an integer >= 0 (or -1 = auto), got {self.workers!r}")
        _positive_int("train.batch_size", self.batch_size)
        _positive_int("train.checkpoint_every", self.checkpoint_every)
        _positive_int("train.val_every", self.val_every)
        _positive_int("train.log_every", self.log_every)
        _choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for name in ("max_steps", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "grad_clip", "ssim_weight", "l1_weight",
                     "velocity_weight", "time_limit_s"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"train.{name}: must be a finite number >= 0, got {v}")
        if self.lr == 0:
            raise ValueError("train.lr: must be > 0")
        if self.ssim_weight == 0 and self.l1_weight == 0:
            raise ValueError("train.ssim_weight / train.l1_weight: at least one must be > 0")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.data.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass silently)."""
        if not isinstance(d, dict):
            raise TypeError(f"config: expected a dict, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"config: unknown section(s) {sorted(unknown)}; expected model, data, train")
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = _SECTIONS[f.name]
            sub = d.get(f.name, {})
            parts[f.name] = _build(sub_cls, sub, f.name)
        return cls(**parts).validate()

    def replace(self, **sections) -> "Config":
        return dataclasses.replace(self, **sections).validate()


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


# Presets: small and CPU-friendly; "demo" is what `flat demo` trains (measured on 2 cores).
def _presets() -> dict[str, Config]:
    base = Config()
    # α = 0.2: Δt·λ from 1.77 (first step) down to 1.04 (last); the sweep is in docs/model.md
    demo_model = ModelConfig(cascades=6, chans=16, pools=3, dc_per_step=1.5, alpha=0.2)
    # workers=0: the demo's small slices load in well under a millisecond, and the two trainers
    # already use both cores of a small machine; a loader process each would only compete for them.
    demo_train = TrainConfig(epochs=1000, lr=2e-3, warmup_steps=10, batch_size=1,
                             checkpoint_every=100, log_every=25, velocity_weight=1.0, workers=0)
    return {
        "default": base,
        "demo": Config(model=demo_model, train=demo_train),
        "demo-vanilla": Config(model=dataclasses.replace(demo_model, mode="vanilla"), train=demo_train),
        # fastMRI's scale (its released E2E-VarNet: 12 cascades, chans 18, pools 4, learned maps
        # with sens_chans 8, sens_pools 4) in VarNet's layout, so VarNet weights load (--init-from);
        # fastMRI's masks for each challenge. lr 3e-4 is fastMRI's VarNet value, here for a global
        # batch of 8 slices (GPUs × train.batch_size); scale it linearly (README, Training)
        "knee": Config(model=_FASTMRI_MODEL, data=DataConfig(mask_type="random", accelerations=(4, 8),
                                                             center_fractions=(0.08, 0.04)),
                       train=_FASTMRI_TRAIN),
        "brain": Config(model=_FASTMRI_MODEL, data=DataConfig(mask_type="equispaced_fraction",
                                                              accelerations=(4, 8),
                                                              center_fractions=(0.08, 0.04)),
                        train=_FASTMRI_TRAIN),
        # for tests: a few thousand parameters, seconds per epoch on 2 cores
        "tiny": Config(
            model=ModelConfig(cascades=3, chans=4, pools=2, time_dim=8, dc_per_step=1.0, sens_chans=4,
                              sens_pools=1),
            train=TrainConfig(epochs=2, warmup_steps=0, checkpoint_every=2, log_every=1, lr=1e-3),
        ),
    }


_FASTMRI_MODEL = ModelConfig(cascades=12, chans=18, pools=4, unet="fastmri", state="kspace", sens="learned",
                             sens_chans=8, sens_pools=4)
_FASTMRI_TRAIN = TrainConfig(epochs=50, lr=3e-4, weight_decay=0.0, batch_size=1, warmup_steps=1000,
                             checkpoint_every=500, log_every=100, checkpoint_cascades=True)

PRESETS = tuple(_presets())


def get_preset(name: str) -> Config:
    presets = _presets()
    if name not in presets:
        raise ValueError(f"preset: unknown preset {name!r}; expected one of {sorted(presets)}")
    return presets[name].validate()


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                preset: str = "default") -> Config:
    """Preset, then a JSON file (sections may be partial), then ``key=value`` overrides."""
    cfg = get_preset(preset)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"--config: no such file: {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config: {path} is not valid JSON: {exc}") from None
        merged = cfg.to_dict()
        if not isinstance(d, dict):
            raise ValueError(f"--config: {path} must hold a JSON object with model/data/train sections")
        for sec, vals in d.items():
            if sec not in merged or not isinstance(vals, dict):
                raise ValueError(f"--config: {path}: unknown or malformed section {sec!r}")
            merged[sec].update(vals)
        cfg = Config.from_dict(merged)
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed by the field's declared type."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set: expected section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if "." not in key:
            raise ValueError(f"--set: expected section.key=value (e.g. model.cascades=8), got {item!r}")
        sec, name = key.split(".", 1)
        if sec not in _SECTIONS:
            raise ValueError(f"--set: unknown section {sec!r} in {item!r}; expected model, data, train")
        types = typing.get_type_hints(_SECTIONS[sec])
        if name not in types:
            raise ValueError(f"--set: unknown key {key!r}; {sec} has {sorted(types)}")
        d[sec][name] = _parse(types[name], raw.strip(), key)
    return Config.from_dict(d)


def _build(cls, d: dict, section: str):
    if not isinstance(d, dict):
        raise TypeError(f"config.{section}: expected a dict, got {type(d).__name__}")
    types = typing.get_type_hints(cls)
    unknown = set(d) - set(types)
    if unknown:
        raise ValueError(f"config.{section}: unknown key(s) {sorted(unknown)}")
    kw = {}
    for k, v in d.items():
        t = types[k]
        if t is tuple:
            v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        elif t is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        elif t is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        if t in (int, float, str, bool) and not (isinstance(v, t) and not (t is int and isinstance(v, bool))):
            raise TypeError(f"config.{section}.{k}: expected {t.__name__}, got {v!r}")
        kw[k] = v
    return cls(**kw)


def _parse(t, raw: str, key: str):
    try:
        if t is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if t is int:
            return int(raw)
        if t is float:
            return float(raw)
        if t is str:
            return raw
        if t is tuple:  # "4,8" or "[4, 8]" -> numbers
            vals = json.loads(raw) if raw.startswith("[") else [json.loads(x) for x in raw.split(",") if x]
            return tuple(vals if isinstance(vals, list) else [vals])
    except ValueError:
        pass
    raise ValueError(f"--set: cannot parse {raw!r} for {key} (expected {getattr(t, '__name__', t)})")


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
