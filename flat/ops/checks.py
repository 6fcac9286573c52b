"""Input checks and layout handling of the public ops: user tensors in, canonical tensors out.

Canonical tensors (docs/operators.md): images ``(B, H, W)`` complex, k-space and coil maps
``(B, C, H, W)`` complex of one dtype, masks ``(Bm, Hm, W)`` real, ``dt``/``lam`` real tensors of
shape ``()`` or ``(B,)``. Every failure names the argument and the shape or type seen.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
import torch

from flat.ops.backends import resolve

HALF = (torch.float16, torch.bfloat16, torch.complex32)


# ---------------------------------------------------------------- layout handling
class Layout(NamedTuple):
    real: bool  # fastMRI real layout (trailing dim of 2)
    shape: tuple  # the shape the user gave, to restore on output


def to_complex(name: str, t, ranks: tuple[int, ...], what: str):
    """Validate one tensor argument and return (complex view, layout); ``ranks`` are complex ranks."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype in HALF:
        raise TypeError(f"{name}: half precision ({t.dtype}) is not supported; use complex64 or complex128")
    if t.is_complex():
        if t.ndim not in ranks:
            raise ValueError(f"{name}: expected {what}, got shape {tuple(t.shape)}")
        return t, Layout(False, tuple(t.shape))
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a complex tensor (or float with a trailing dim of 2), got {t.dtype}")
    if t.ndim - 1 not in ranks or t.shape[-1] != 2:
        raise TypeError(
            f"{name}: real tensor of shape {tuple(t.shape)} where complex data is needed; pass complex64/"
            f"complex128, or fastMRI's real layout with a trailing dim of 2 ({what} + (2,))"
        )
    if t.stride(-1) != 1 or any(s % 2 for s in t.stride()[:-1]):
        t = t.contiguous()
    return torch.view_as_complex(t), Layout(True, tuple(t.shape))


def restore(out: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Return ``out`` in the layout (and rank, e.g. (B, 1, H, W)) the user gave."""
    if layout.real:
        return torch.view_as_real(out).reshape(layout.shape)
    return out.reshape(layout.shape)


def common_dtype_device(named: dict[str, torch.Tensor]) -> tuple[torch.dtype, torch.device]:
    """Common complex dtype (complex128 wins) and the single device of all tensor arguments."""
    devices = {n: t.device for n, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        seen = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"mixed devices: {seen}; move all tensors to one device")
    dtype = torch.complex128 if any(t.dtype == torch.complex128 for t in named.values() if t is not None) else torch.complex64
    return dtype, next(iter(devices.values()))


def image_arg(name, t):
    x, lay = to_complex(name, t, (3, 4), "an image (B, H, W) or (B, 1, H, W)")
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name}: expected an image (B, 1, H, W), got shape {tuple(lay.shape)}")
        x = x[:, 0]
    return x, lay


def coils_arg(name, t):
    return to_complex(name, t, (4,), "(B, C, H, W)")


def check_shape(name, t, want, ref_name):
    if tuple(t.shape) != tuple(want):
        raise ValueError(
            f"{name}: shape {tuple(t.shape)} does not match {ref_name} {tuple(want)} (complex view)"
        )


def canonical_mask(mask, B, H, W, dtype, device):
    """Canonical mask (Bm, Hm, W), real, Bm in (1, B), Hm in (1, H); Hm == 1 is a column mask."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"mask: must be bool or real, got {mask.dtype}")
    if mask.device != device:
        raise ValueError(f"mixed devices: mask on {mask.device}, data on {device}")
    s = tuple(mask.shape)
    canon = None
    if mask.ndim == 1 and s == (W,):
        canon = (1, 1, W)
    elif mask.ndim == 2 and s[1] == W:  # (B, W)
        canon = (s[0], 1, W)
    elif mask.ndim == 3 and s[2] == W:  # (B, Hm, W)
        canon = s
    elif mask.ndim == 4 and s[1] == 1 and s[3] == W:  # (B, 1, Hm, W)
        canon = (s[0], s[2], W)
    elif mask.ndim == 4 and s[0] == 1 and s[2] == W and s[3] == 1:  # fastMRI per slice (1, Hm, W, 1)
        canon = (1, s[1], W)
    elif mask.ndim == 5 and s[1] == 1 and s[3] == W and s[4] == 1:  # fastMRI batched (B, 1, Hm, W, 1)
        canon = (s[0], s[2], W)
    if canon is None or canon[0] not in (1, B) or canon[1] not in (1, H):
        raise ValueError(
            f"mask: shape {s} is not broadcastable to k-space (B, C, H, W) = ({B}, C, {H}, {W}); "
            f"expected (W,), (B, W), (B|1, 1, 1|H, W) or fastMRI's (1, 1, W, 1) / (B, 1, 1|H, W, 1)"
        )
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    return mask.reshape(canon).to(real)


def scalar_arg(name, value, B, dtype, device):
    """dt/lam as a real tensor of shape () or (B,) in the data's precision (no float32 rounding).

    Python and NumPy real scalars (``np.float32(2)``) are floats; NumPy arrays are not accepted
    (pass a tensor)."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name}: expected a float or a real tensor of shape () or ({B},), got {type(value).__name__}")
    if not isinstance(value, torch.Tensor):
        return torch.tensor(float(value), dtype=real, device=device)
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name}: must be real, got {value.dtype}")
    if value.ndim == 1 and value.shape[0] == 1 and B != 1:
        value = value.reshape(())
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != B):
        raise ValueError(f"{name}: expected shape () or ({B},), got {tuple(value.shape)}")
    if value.device != device:
        if value.ndim != 0:
            raise ValueError(f"mixed devices: {name} on {value.device}, data on {device}")
        value = value.to(device)
    return value.to(real)


def check_norm(norm) -> None:
    if norm != "ortho":
        raise ValueError(f"norm: only 'ortho' is supported (the centered orthonormal FFT), got {norm!r}")


def backend_for(backend, device) -> str:
    return resolve(backend, device.type)


# ---------------------------------------------------------------- layout helpers for outputs
def coil_layout(image_arg, s: torch.Tensor) -> Layout:
    """Coil output (B, C, H, W) for image input, in the image argument's layout."""
    real = not image_arg.is_complex()
    return Layout(real, tuple(s.shape) + ((2,) if real else ()))


def image_layout(coil_layout: Layout, k: torch.Tensor) -> Layout:
    """Image output (B, H, W) for coil input; real layout gives fastMRI's (B, 1, H, W, 2)."""
    B, _, H, W = k.shape
    return Layout(True, (B, 1, H, W, 2)) if coil_layout.real else Layout(False, (B, H, W))


# ---------------------------------------------------------------- one wrapper for every table op
def canonical_args(spec, values: dict):
    """Validate the user's arguments of table op ``spec`` and convert them to canonical tensors.

    The coil maps fix (B, C, H, W); every other coil stack must match them, every
    image must be (B, H, W) (or (B, 1, H, W), or fastMRI's real layout of either), the mask must
    broadcast, dt/lam be () or (B,). Returns (canonical arguments in table order, a function that
    puts the op's output back in the layout the user gave).
    """
    from flat.ops.table import COILS, IMAGE, INT, MASK, SCALAR

    given = [a for a in spec.args if values[a.name] is not None or a.kind == INT]
    for a in spec.args:
        if values[a.name] is None and not a.optional:
            raise TypeError(f"{a.name}: expected a tensor, got None")
    if spec.one_of and all(values[n] is None for n in spec.one_of):
        first, *rest = spec.one_of
        raise ValueError(f"{first}: is None, so {' or '.join(rest)} must be given")
    tensors, layouts = {}, {}
    for a in given:
        if a.kind == IMAGE:
            tensors[a.name], layouts[a.name] = image_arg(a.name, values[a.name])
        elif a.kind == COILS:
            tensors[a.name], layouts[a.name] = coils_arg(a.name, values[a.name])
    # the coil maps fix the geometry; ops without maps (fft-like) take their first coil stack
    ref = "sens" if "sens" in tensors else next(a.name for a in given if a.kind == COILS)
    B, C, H, W = tensors[ref].shape
    for name, t in tensors.items():
        kind = next(a.kind for a in spec.args if a.name == name)
        if name != ref and kind == COILS:
            check_shape(name, t, tensors[ref].shape, ref)
        elif kind == IMAGE:
            check_shape(name, t, (B, H, W), f"{ref} (B, H, W) =")
    dtype, device = common_dtype_device(tensors)
    out = []
    for a in spec.args:
        v = values[a.name]
        if a.kind == INT:
            out.append(v)
        elif v is None:
            out.append(None)
        elif a.kind == MASK:
            out.append(canonical_mask(v, B, H, W, dtype, device))
        elif a.kind == SCALAR:
            out.append(scalar_arg(a.name, v, B, dtype, device))
        else:
            out.append(tensors[a.name].to(dtype))

    first = spec.args[0]
    if spec.out == COILS:  # coils from an image: in the image argument's layout
        image = next(a.name for a in spec.args if a.kind == IMAGE)
        lay = coil_layout(values[image], tensors[ref])
    elif spec.out == IMAGE:  # an image from coils: fastMRI's (B, 1, H, W, 2) for the real layout
        lay = image_layout(layouts[first.name], tensors[first.name])
    else:  # the layout of the first argument
        lay = layouts[first.name]
    return tuple(out), device, lambda result: restore(result, lay)
