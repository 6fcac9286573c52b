"""Drop-in MRI operators (SPEC §2): centered FFT, SENSE forward/adjoint, the fused flow step.

>>> import flat.ops as fo
>>> x_next = fo.flow_step(x, v, y, sens, mask, dt=0.2, lam=5.0)   # x + dt·(v − lam·Aᴴ(Ax − y))

Conventions (fastMRI's): ``fft2c``/``ifft2c`` are centered and orthonormal over (H, W); k-space is
``(B, C, H, W)`` with W the phase-encode (subsampled) axis; images ``(B, H, W)``; coil maps
``(B, C, H, W)``. Every op takes complex tensors (complex64/complex128) *or* fastMRI's real layout
with a trailing dim of 2 (k-space ``(B, C, H, W, 2)``, image ``(B, 1, H, W, 2)``) and returns its
result in the layout of its first argument; complex128 in gives complex128 out. Masks are bool or
float: a column mask ``(W,)``, ``(B, W)``, ``(B|1, 1, 1, W)``, fastMRI's ``(1, 1, W, 1)`` /
``(B, 1, 1, W, 1)``, or a 2-D mask ``(B|1, 1, H, W)``. ``dt``/``lam`` are floats or real tensors of
shape ``()`` or ``(B,)`` and may require grad.

Each op calls a ``torch.library`` custom op ``torch.ops.flat.<name>`` (functional, with a fake
implementation and an analytic backward), so it works under ``torch.compile(fullgraph=True)``.
``backend=`` picks the implementation: ``"reference"``, ``"triton"``, ``"cupy"`` or ``"auto"``
(see :mod:`flat.backends`). Bad input raises ``TypeError``/``ValueError`` naming the argument.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from flat import _library  # noqa: F401  (registers torch.ops.flat.*)
from flat.backends import BackendUnavailableError, available_backends, resolve, use_backend

__all__ = [
    "fft2c", "ifft2c", "sens_expand", "sens_reduce", "sense_forward", "sense_adjoint", "normal",
    "dc_gradient", "flow_step", "kspace_flow_step", "rss", "available_backends", "use_backend",
    "BackendUnavailableError",
]

_OPS = torch.ops.flat
_HALF = (torch.float16, torch.bfloat16, torch.complex32)


# ---------------------------------------------------------------- layout handling
class _Layout(NamedTuple):
    real: bool  # fastMRI real layout (trailing dim of 2)
    shape: tuple  # the shape the user gave, to restore on output


def _to_complex(name: str, t, ranks: tuple[int, ...], what: str):
    """Validate one tensor argument and return (complex view, layout); ``ranks`` are complex ranks."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype in _HALF:
        raise TypeError(f"{name}: half precision ({t.dtype}) is not supported; use complex64 or complex128")
    if t.is_complex():
        if t.ndim not in ranks:
            raise ValueError(f"{name}: expected {what}, got shape {tuple(t.shape)}")
        return t, _Layout(False, tuple(t.shape))
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a complex tensor (or float with a trailing dim of 2), got {t.dtype}")
    if t.ndim - 1 not in ranks or t.shape[-1] != 2:
        raise TypeError(
            f"{name}: real tensor of shape {tuple(t.shape)} where complex data is needed; pass complex64/"
            f"complex128, or fastMRI's real layout with a trailing dim of 2 ({what} + (2,))"
        )
    if t.stride(-1) != 1 or any(s % 2 for s in t.stride()[:-1]):
        t = t.contiguous()
    return torch.view_as_complex(t), _Layout(True, tuple(t.shape))


def _restore(out: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """Return ``out`` in the layout (and rank, e.g. (B, 1, H, W)) the user gave."""
    if layout.real:
        return torch.view_as_real(out).reshape(layout.shape)
    return out.reshape(layout.shape)


def _common(named: dict[str, torch.Tensor]) -> tuple[torch.dtype, torch.device]:
    """Common complex dtype (complex128 wins) and the single device of all tensor arguments."""
    devices = {n: t.device for n, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        seen = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"mixed devices: {seen}; move all tensors to one device")
    dtype = torch.complex128 if any(t.dtype == torch.complex128 for t in named.values() if t is not None) else torch.complex64
    return dtype, next(iter(devices.values()))


def _image(name, t):
    x, lay = _to_complex(name, t, (3, 4), "an image (B, H, W) or (B, 1, H, W)")
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name}: expected an image (B, 1, H, W), got shape {tuple(lay.shape)}")
        x = x[:, 0]
    return x, lay


def _coils(name, t):
    return _to_complex(name, t, (4,), "(B, C, H, W)")


def _check_shape(name, t, want, ref_name):
    if tuple(t.shape) != tuple(want):
        raise ValueError(
            f"{name}: shape {tuple(t.shape)} does not match {ref_name} {tuple(want)} (complex view)"
        )


def _mask(mask, B, H, W, dtype, device):
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


def _scalar(name, value, B, dtype, device):
    """dt/lam as a real tensor of shape () or (B,) in the data's precision (no float32 rounding)."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
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


def _backend(backend, device) -> str:
    return resolve(backend, device.type)


# ---------------------------------------------------------------- public ops
def fft2c(x, *, backend=None):
    """Centered orthonormal 2-D FFT over (H, W): ``fftshift(fft2(ifftshift(x)))`` (SPEC §1)."""
    xc, lay = _to_complex("x", x, tuple(range(2, 9)), "(..., H, W)")
    return _restore(_OPS.fft2c(xc, _backend(backend, xc.device)), lay)


def ifft2c(x, *, backend=None):
    """Centered orthonormal 2-D inverse FFT over (H, W)."""
    xc, lay = _to_complex("x", x, tuple(range(2, 9)), "(..., H, W)")
    return _restore(_OPS.ifft2c(xc, _backend(backend, xc.device)), lay)


def _image_and_sens(image, sens):
    x, lay = _image("image", image)
    s, _ = _coils("sens", sens)
    dtype, device = _common({"image": x, "sens": s})
    B, C, H, W = s.shape
    _check_shape("image", x, (B, H, W), "sens (B, H, W) =")
    return x.to(dtype), s.to(dtype), lay, device


def _kspace_and_sens(kspace, sens):
    k, lay = _coils("kspace", kspace)
    s, _ = _coils("sens", sens)
    dtype, device = _common({"kspace": k, "sens": s})
    _check_shape("sens", s, k.shape, "kspace")
    return k.to(dtype), s.to(dtype), lay, device


def sens_expand(image, sens, *, backend=None):
    """Coil k-space from an image: ``fft2c(S ⊙ x)`` -> (B, C, H, W)."""
    x, s, _, device = _image_and_sens(image, sens)
    return _restore(_OPS.sens_expand(x, s, _backend(backend, device)), _coil_layout(image, s))


def sens_reduce(kspace, sens, *, backend=None):
    """Coil combination: ``Σ_c conj(S_c) ⊙ ifft2c(k_c)`` -> image (B, H, W)."""
    k, s, lay, device = _kspace_and_sens(kspace, sens)
    return _restore(_OPS.sens_reduce(k, s, _backend(backend, device)), _image_layout(lay, k))


def sense_forward(image, sens, mask, *, backend=None):
    """``A x = M ⊙ fft2c(S ⊙ x)`` -> masked k-space (B, C, H, W); masked entries are +0.0."""
    x, s, _, device = _image_and_sens(image, sens)
    B, C, H, W = s.shape
    m = _mask(mask, B, H, W, s.dtype, device)
    return _restore(_OPS.sense_forward(x, s, m, _backend(backend, device)), _coil_layout(image, s))


def sense_adjoint(kspace, sens, mask, *, backend=None):
    """``Aᴴ k = Σ_c conj(S_c) ⊙ ifft2c(M ⊙ k_c)`` -> image (B, H, W)."""
    k, s, lay, device = _kspace_and_sens(kspace, sens)
    B, C, H, W = k.shape
    m = _mask(mask, B, H, W, k.dtype, device)
    return _restore(_OPS.sense_adjoint(k, s, m, _backend(backend, device)), _image_layout(lay, k))


def normal(image, sens, mask, *, backend=None):
    """``Aᴴ A x`` -> image."""
    x, s, lay, device = _image_and_sens(image, sens)
    B, C, H, W = s.shape
    m = _mask(mask, B, H, W, s.dtype, device)
    return _restore(_OPS.normal(x, s, m, _backend(backend, device)), lay)


def dc_gradient(image, kspace, sens, mask, *, backend=None):
    """``Aᴴ (A x − y)``: the gradient of ½‖Ax − y‖² -> image."""
    x, s, lay, device = _image_and_sens(image, sens)
    y, _ = _coils("kspace", kspace)
    _check_shape("kspace", y, s.shape, "sens")
    dtype, device = _common({"image": x, "kspace": y, "sens": s})
    B, C, H, W = s.shape
    m = _mask(mask, B, H, W, dtype, device)
    out = _OPS.dc_gradient(x.to(dtype), y.to(dtype), s.to(dtype), m, _backend(backend, device))
    return _restore(out, lay)


def flow_step(image, velocity, kspace, sens, mask, dt, lam, *, ahy=None, backend=None):
    """One Euler step of the conditional flow: ``x + dt·(v − lam·Aᴴ(A x − y))``.

    ``ahy`` is ``Aᴴy`` precomputed (it is the same at every cascade); ``kspace`` may then be None.
    """
    x, s, lay, device = _image_and_sens(image, sens)
    B, C, H, W = s.shape
    v, _ = _image("velocity", velocity)
    _check_shape("velocity", v, x.shape, "image")
    named = {"image": x, "velocity": v, "sens": s}
    y = a = None
    if kspace is not None:
        y, _ = _coils("kspace", kspace)
        _check_shape("kspace", y, s.shape, "sens")
        named["kspace"] = y
    if ahy is not None:
        a, _ = _image("ahy", ahy)
        _check_shape("ahy", a, x.shape, "image")
        named["ahy"] = a
    if y is None and a is None:
        raise ValueError("kspace: is None, so ahy (the precomputed Aᴴy) must be given")
    dtype, device = _common(named)
    m = _mask(mask, B, H, W, dtype, device)
    out = _OPS.flow_step(
        x.to(dtype), v.to(dtype), None if y is None else y.to(dtype), s.to(dtype), m,
        _scalar("dt", dt, B, dtype, device), _scalar("lam", lam, B, dtype, device),
        None if a is None else a.to(dtype), _backend(backend, device),
    )
    return _restore(out, lay)


def kspace_flow_step(kstate, image_update, kspace, sens, mask, dt, lam, *, backend=None):
    """E2E-VarNet form: ``k − dt·lam·M ⊙ (k − y) + dt·fft2c(S ⊙ z)`` -> k-space (B, C, H, W)."""
    k, lay = _coils("kstate", kstate)
    z, _ = _image("image_update", image_update)
    y, _ = _coils("kspace", kspace)
    s, _ = _coils("sens", sens)
    B, C, H, W = k.shape
    _check_shape("kspace", y, k.shape, "kstate")
    _check_shape("sens", s, k.shape, "kstate")
    _check_shape("image_update", z, (B, H, W), "kstate (B, H, W) =")
    dtype, device = _common({"kstate": k, "image_update": z, "kspace": y, "sens": s})
    m = _mask(mask, B, H, W, dtype, device)
    out = _OPS.kspace_flow_step(
        k.to(dtype), z.to(dtype), y.to(dtype), s.to(dtype), m,
        _scalar("dt", dt, B, dtype, device), _scalar("lam", lam, B, dtype, device), _backend(backend, device),
    )
    return _restore(out, lay)


def rss(x, dim=1, *, backend=None):
    """Root-sum-of-squares coil combination ``sqrt(Σ |x|²)`` over ``dim`` (real output).

    Complex input, fastMRI's real layout (``dim`` indexes the given tensor; it may not be the
    trailing complex dim), or plain real data (e.g. coil magnitudes).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype in _HALF:
        raise TypeError(f"x: half precision ({x.dtype}) is not supported")
    if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim: {dim!r} is out of range for x of shape {tuple(x.shape)}")
    dim = dim % x.ndim
    if not x.is_complex() and x.ndim >= 2 and x.shape[-1] == 2 and x.is_floating_point():
        if dim == x.ndim - 1:
            raise ValueError(f"dim: {dim} is the trailing complex dim of x {tuple(x.shape)} (real layout)")
        x, _ = _to_complex("x", x, (x.ndim - 1,), "(..., 2)")
    elif not (x.is_complex() or x.is_floating_point()):
        raise TypeError(f"x: expected a floating or complex tensor, got {x.dtype}")
    return _OPS.rss(x, dim, _backend(backend, x.device))


# ---------------------------------------------------------------- layout helpers for outputs
def _coil_layout(image_arg, s: torch.Tensor) -> _Layout:
    """Coil output (B, C, H, W) for image input, in the image argument's layout."""
    real = not image_arg.is_complex()
    return _Layout(real, tuple(s.shape) + ((2,) if real else ()))


def _image_layout(coil_layout: _Layout, k: torch.Tensor) -> _Layout:
    """Image output (B, H, W) for coil input; real layout gives fastMRI's (B, 1, H, W, 2)."""
    B, _, H, W = k.shape
    return _Layout(True, (B, 1, H, W, 2)) if coil_layout.real else _Layout(False, (B, H, W))
