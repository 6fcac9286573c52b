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
(see :mod:`flat.ops.backends`). Bad input raises ``TypeError``/``ValueError`` naming the argument.
"""
from __future__ import annotations

import torch

from flat.ops import library as _library  # noqa: F401  (registers torch.ops.flat.*)
from flat.ops.backends import BackendUnavailableError, available_backends, use_backend
from flat.ops.checks import (
    HALF, backend_for, check_norm, check_shape, coil_layout, coils_arg, common_dtype_device, image_arg, image_layout, canonical_mask,
    restore, scalar_arg, to_complex,
)
from flat.ops.table import NAMES

__all__ = [*NAMES, "available_backends", "use_backend", "BackendUnavailableError"]

_OPS = torch.ops.flat

# ---------------------------------------------------------------- public ops
def fft2c(x, *, norm="ortho", backend=None):
    """Centered orthonormal 2-D FFT over (H, W): ``fftshift(fft2(ifftshift(x)))`` (docs/operators.md).

    ``norm`` is accepted for fastMRI's ``fft2c_new(data, norm="ortho")``; "ortho" is the only value.
    """
    check_norm(norm)
    xc, lay = to_complex("x", x, tuple(range(2, 9)), "(..., H, W)")
    return restore(_OPS.fft2c(xc, backend_for(backend, xc.device)), lay)


def ifft2c(x, *, norm="ortho", backend=None):
    """Centered orthonormal 2-D inverse FFT over (H, W); ``norm`` as for :func:`fft2c`."""
    check_norm(norm)
    xc, lay = to_complex("x", x, tuple(range(2, 9)), "(..., H, W)")
    return restore(_OPS.ifft2c(xc, backend_for(backend, xc.device)), lay)


def _image_and_sens(image, sens):
    x, lay = image_arg("image", image)
    s, _ = coils_arg("sens", sens)
    dtype, device = common_dtype_device({"image": x, "sens": s})
    B, C, H, W = s.shape
    check_shape("image", x, (B, H, W), "sens (B, H, W) =")
    return x.to(dtype), s.to(dtype), lay, device


def _kspace_and_sens(kspace, sens):
    k, lay = coils_arg("kspace", kspace)
    s, _ = coils_arg("sens", sens)
    dtype, device = common_dtype_device({"kspace": k, "sens": s})
    check_shape("sens", s, k.shape, "kspace")
    return k.to(dtype), s.to(dtype), lay, device


def sens_expand(image, sens, *, backend=None):
    """Coil k-space from an image: ``fft2c(S ⊙ x)`` -> (B, C, H, W)."""
    x, s, _, device = _image_and_sens(image, sens)
    return restore(_OPS.sens_expand(x, s, backend_for(backend, device)), coil_layout(image, s))


def sens_reduce(kspace, sens, *, backend=None):
    """Coil combination: ``Σ_c conj(S_c) ⊙ ifft2c(k_c)`` -> image (B, H, W)."""
    k, s, lay, device = _kspace_and_sens(kspace, sens)
    return restore(_OPS.sens_reduce(k, s, backend_for(backend, device)), image_layout(lay, k))


def sense_forward(image, sens, mask, *, backend=None):
    """``A x = M ⊙ fft2c(S ⊙ x)`` -> masked k-space (B, C, H, W); masked entries are +0.0."""
    x, s, _, device = _image_and_sens(image, sens)
    B, C, H, W = s.shape
    m = canonical_mask(mask, B, H, W, s.dtype, device)
    return restore(_OPS.sense_forward(x, s, m, backend_for(backend, device)), coil_layout(image, s))


def sense_adjoint(kspace, sens, mask, *, backend=None):
    """``Aᴴ k = Σ_c conj(S_c) ⊙ ifft2c(M ⊙ k_c)`` -> image (B, H, W)."""
    k, s, lay, device = _kspace_and_sens(kspace, sens)
    B, C, H, W = k.shape
    m = canonical_mask(mask, B, H, W, k.dtype, device)
    return restore(_OPS.sense_adjoint(k, s, m, backend_for(backend, device)), image_layout(lay, k))


def normal(image, sens, mask, *, backend=None):
    """``Aᴴ A x`` -> image."""
    x, s, lay, device = _image_and_sens(image, sens)
    B, C, H, W = s.shape
    m = canonical_mask(mask, B, H, W, s.dtype, device)
    return restore(_OPS.normal(x, s, m, backend_for(backend, device)), lay)


def dc_gradient(image, kspace, sens, mask, *, backend=None):
    """``Aᴴ (A x − y)``: the gradient of ½‖Ax − y‖² -> image."""
    x, s, lay, device = _image_and_sens(image, sens)
    y, _ = coils_arg("kspace", kspace)
    check_shape("kspace", y, s.shape, "sens")
    dtype, device = common_dtype_device({"image": x, "kspace": y, "sens": s})
    B, C, H, W = s.shape
    m = canonical_mask(mask, B, H, W, dtype, device)
    out = _OPS.dc_gradient(x.to(dtype), y.to(dtype), s.to(dtype), m, backend_for(backend, device))
    return restore(out, lay)


def flow_step(image, velocity, kspace, sens, mask, dt, lam, *, ahy=None, backend=None):
    """One Euler step of the conditional flow: ``x + dt·(v − lam·Aᴴ(A x − y))``.

    ``ahy`` is ``Aᴴy`` precomputed (it is the same at every cascade); ``kspace`` may then be None.
    """
    x, s, lay, device = _image_and_sens(image, sens)
    B, C, H, W = s.shape
    v, _ = image_arg("velocity", velocity)
    check_shape("velocity", v, x.shape, "image")
    named = {"image": x, "velocity": v, "sens": s}
    y = a = None
    if kspace is not None:
        y, _ = coils_arg("kspace", kspace)
        check_shape("kspace", y, s.shape, "sens")
        named["kspace"] = y
    if ahy is not None:
        a, _ = image_arg("ahy", ahy)
        check_shape("ahy", a, x.shape, "image")
        named["ahy"] = a
    if y is None and a is None:
        raise ValueError("kspace: is None, so ahy (the precomputed Aᴴy) must be given")
    dtype, device = common_dtype_device(named)
    m = canonical_mask(mask, B, H, W, dtype, device)
    out = _OPS.flow_step(
        x.to(dtype), v.to(dtype), None if y is None else y.to(dtype), s.to(dtype), m,
        scalar_arg("dt", dt, B, dtype, device), scalar_arg("lam", lam, B, dtype, device),
        None if a is None else a.to(dtype), backend_for(backend, device),
    )
    return restore(out, lay)


def kspace_flow_step(kstate, image_update, kspace, sens, mask, dt, lam, *, backend=None):
    """E2E-VarNet form: ``k − dt·lam·M ⊙ (k − y) + dt·fft2c(S ⊙ z)`` -> k-space (B, C, H, W)."""
    k, lay = coils_arg("kstate", kstate)
    z, _ = image_arg("image_update", image_update)
    y, _ = coils_arg("kspace", kspace)
    s, _ = coils_arg("sens", sens)
    B, C, H, W = k.shape
    check_shape("kspace", y, k.shape, "kstate")
    check_shape("sens", s, k.shape, "kstate")
    check_shape("image_update", z, (B, H, W), "kstate (B, H, W) =")
    dtype, device = common_dtype_device({"kstate": k, "image_update": z, "kspace": y, "sens": s})
    m = canonical_mask(mask, B, H, W, dtype, device)
    out = _OPS.kspace_flow_step(
        k.to(dtype), z.to(dtype), y.to(dtype), s.to(dtype), m,
        scalar_arg("dt", dt, B, dtype, device), scalar_arg("lam", lam, B, dtype, device), backend_for(backend, device),
    )
    return restore(out, lay)


def rss(x, dim=1, *, real_layout=False, backend=None):
    """Root-sum-of-squares coil combination ``sqrt(Σ |x|²)`` over ``dim`` (real output).

    The dtype decides: complex input is combined as complex, real input as plain real values (coil
    magnitudes, or anything else; as fastMRI's ``rss``). ``real_layout=True`` says a real tensor is
    fastMRI's real layout, its trailing dim of 2 holding (real, imaginary) (fastMRI's
    ``rss_complex``); ``dim`` indexes the given tensor and may not be that trailing dim.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype in HALF:
        raise TypeError(f"x: half precision ({x.dtype}) is not supported")
    if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim: {dim!r} is out of range for x of shape {tuple(x.shape)}")
    dim = dim % x.ndim
    if not isinstance(real_layout, bool):
        raise TypeError(f"real_layout: expected True or False, got {real_layout!r}")
    if real_layout:
        if x.is_complex() or x.ndim < 2 or x.shape[-1] != 2:
            raise ValueError(f"real_layout: x of shape {tuple(x.shape)}, {x.dtype} is not fastMRI's real layout "
                             "(a real tensor with a trailing dim of 2)")
        if dim == x.ndim - 1:
            raise ValueError(f"dim: {dim} is the trailing complex dim of x {tuple(x.shape)} (real layout)")
        x, _ = to_complex("x", x, (x.ndim - 1,), "(..., 2)")
    elif not (x.is_complex() or x.is_floating_point()):
        raise TypeError(f"x: expected a floating or complex tensor, got {x.dtype}")
    return _OPS.rss(x, dim, backend_for(backend, x.device))


