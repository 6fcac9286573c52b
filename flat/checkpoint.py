"""The checkpoint format, written and read here only.

A checkpoint is a plain dict of tensors, numbers and strings, saved with ``torch.save`` and loaded
with ``torch.load(weights_only=True)`` (no code runs on load), written whole or not at all
(:func:`flat.io.atomic_path`). Two kinds, both with ``"config": Config.to_dict()`` so that the
file alone rebuilds its model:

- ``flat-model`` (``model.pt``, what ``flat recon`` loads): ``kind, version, config, model`` (the
  state dict) and ``meta`` (global_step, elapsed_s, history);
- ``flat-train-state`` (``last.pt``, what a resumed run loads): ``kind, version, config, model,
  optimizer, epoch, step_in_epoch, global_step, elapsed_s, history, rng`` (torch's CPU RNG state).

A run resumes only from a state whose config matches its own, except for bookkeeping keys
(:func:`run_identity`).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from flat.io import atomic_path

CHECKPOINT_KINDS = ("flat-model", "flat-train-state")
STATE_FILE = "last.pt"  # the training state in a run folder
MODEL_FILE = "model.pt"  # the final weights + config in a run folder
BEST_FILE = "best.pt"  # the weights + config of the best validation SSIM so far (same format)

# bookkeeping keys that may change between a run and its resumption
_BOOKKEEPING = ("threads", "log_every", "checkpoint_every", "val_every", "workers")


def load_weights_only(path: str | os.PathLike, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(weights_only=True)`` (no code runs from the file) with one-line errors that
    name the file; ``what`` starts the message ("checkpoint", "varnet", ...)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code objects, ...
        if not zipfile.is_zipfile(path):  # torch.save writes a zip: anything else is not a torch file
            raise ValueError(f"{what}: {path}: not a torch checkpoint file (empty, truncated or "
                             "corrupt?; read with weights_only=True)") from None
        raise ValueError(f"{what}: cannot load {path} safely (weights_only): {exc}") from None


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A FLAT checkpoint, loaded with :func:`load_weights_only`."""
    ckpt = load_weights_only(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint: {path} is not a FLAT checkpoint (expected kind in {CHECKPOINT_KINDS})")
    return ckpt


def save_model(path, model, cfg, meta: dict | None = None) -> None:
    """Write a ``flat-model`` checkpoint atomically (config + weights + metadata)."""
    with atomic_path(path) as tmp:
        torch.save({"kind": "flat-model", "version": 1, "config": cfg.to_dict(),
                    "model": model.state_dict(), "meta": meta or {}}, tmp)


def save_train_state(path, *, cfg, model, optimizer, epoch: int, step_in_epoch: int, global_step: int,
                     elapsed_s: float, history: list) -> None:
    """Write a ``flat-train-state`` checkpoint atomically; it records torch's RNG state now."""
    with atomic_path(path) as tmp:
        torch.save({"kind": "flat-train-state", "version": 1, "config": cfg.to_dict(),
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": epoch, "step_in_epoch": step_in_epoch,
                    "global_step": global_step, "elapsed_s": elapsed_s, "history": history,
                    "rng": torch.get_rng_state()}, tmp)


def run_identity(cfg_dict) -> dict | None:
    """The part of a config that defines a run (what must match to resume it)."""
    if not isinstance(cfg_dict, dict):
        return None
    try:  # keys added since the run began take their defaults (what that run used)
        from flat.config import Config

        cfg_dict = Config.from_dict(cfg_dict).to_dict()
    except (TypeError, ValueError):
        pass
    d = {k: dict(v) for k, v in cfg_dict.items()}
    for k in _BOOKKEEPING:
        d.get("train", {}).pop(k, None)
    return d


def read_train_state(path: str | os.PathLike, cfg, map_location="cpu") -> dict:
    """The training state at ``path``, checked to belong to a run of ``cfg`` (the error names the
    run folder as ``--out``)."""
    ck = read_checkpoint(path, map_location=map_location)
    if run_identity(ck.get("config")) != run_identity(cfg.to_dict()):
        raise ValueError(f"--out: {Path(path).parent} holds a run with a different config; use a new --out "
                         f"or the same --config/--set as before")
    return ck
