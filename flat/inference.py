"""Loading checkpoints and reconstructing volumes with a trained FLAT / vanilla model.

``flat recon CKPT DATA OUT --method flat`` calls exactly :func:`load_model` and :func:`reconstruct`.
The checkpoint format (plain dicts loaded with ``torch.load(weights_only=True)``) is defined,
written and read in :mod:`flat.checkpoint`; :func:`read_checkpoint` is re-exported here.
"""
from __future__ import annotations

import os

import torch

from flat.checkpoint import CHECKPOINT_KINDS, read_checkpoint  # noqa: F401  (re-exported)
from flat.config import Config
from flat.model import FlatModel


def load_model(path: str | os.PathLike, map_location="cpu"):
    """A :class:`flat.model.FlatModel` in eval mode, rebuilt from the config stored in the checkpoint."""
    ckpt = read_checkpoint(path, map_location)
    if not isinstance(ckpt.get("model"), dict) or not ckpt["model"]:
        raise ValueError(f"checkpoint: {path}: holds no weights (expected a 'model' state dict)")
    try:
        cfg = Config.from_dict(ckpt.get("config"))
    except (TypeError, ValueError) as exc:  # e.g. a key this version does not know
        raise ValueError(f"checkpoint: {path}: {exc}") from None
    model = FlatModel(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint: {path}: weights do not match its config: {str(exc).splitlines()[0]}") from None
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    model.config = cfg  # the whole config (data + train sections) for reporting
    return model


def _check_inputs(masked_kspace, mask):
    if not isinstance(masked_kspace, torch.Tensor) or not masked_kspace.is_complex() or masked_kspace.dim() != 4:
        raise ValueError(f"masked_kspace: expected a complex (S, C, H, W) tensor, got "
                         f"{getattr(masked_kspace, 'dtype', type(masked_kspace).__name__)} "
                         f"{tuple(getattr(masked_kspace, 'shape', ()))}")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 1 or mask.shape[0] != masked_kspace.shape[-1]:
        raise ValueError(f"mask: expected a (W,) = ({masked_kspace.shape[-1]},) column mask, got "
                         f"{tuple(getattr(mask, 'shape', ()))}")


@torch.no_grad()
def reconstruct_trajectory(model, masked_kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: int,
                           *, backend: str | None = None, steps: int | None = None,
                           sens: torch.Tensor | None = None, batch_size: int = 4, forward=None) -> torch.Tensor:
    """Magnitudes of every state x_0 … x_K: (K + 1, S, H, W) float32 in the input's intensity scale.

    ``sens``: optional user coil maps (S, C, H, W) (required by ``model.sens=given`` models);
    ``forward``: called instead of ``model`` with its signature (:func:`flat.capture.make_forward`:
    the cascade compiled or replayed as a CUDA graph)."""
    _check_inputs(masked_kspace, mask)
    if sens is not None and tuple(sens.shape) != tuple(masked_kspace.shape):
        raise ValueError(f"sens: expected shape {tuple(masked_kspace.shape)}, got {tuple(sens.shape)}")
    device = next(model.parameters()).device
    outs = []
    for s in range(0, masked_kspace.shape[0], batch_size):
        k = masked_kspace[s:s + batch_size].to(device=device, dtype=torch.complex64)
        maps = None if sens is None else sens[s:s + batch_size].to(device)
        out = (forward or model)(k, mask.to(device), int(num_low_frequencies), sens=maps, steps=steps,
                                 backend=backend)
        outs.append(torch.stack([out.magnitude(i) for i in range(len(out.images))]).float().cpu())
    return torch.cat(outs, dim=1)


@torch.no_grad()
def reconstruct(model, masked_kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: int,
                *, backend: str | None = None, steps: int | None = None,
                sens: torch.Tensor | None = None, forward=None) -> torch.Tensor:
    """Reconstruct one volume: masked k-space (S, C, H, W) complex64, mask (W,) bool ->
    |x_K| (S, H, W) float32 in the input's intensity scale (not cropped).

    ``steps``: another number of Euler steps (shared-weight FLAT models); ``sens``: user coil maps;
    ``forward``: see :func:`reconstruct_trajectory`."""
    was_training = model.training
    model.eval()
    try:
        return reconstruct_trajectory(model, masked_kspace, mask, num_low_frequencies,
                                      backend=backend, steps=steps, sens=sens, forward=forward)[-1].contiguous()
    finally:
        model.train(was_training)
