"""Drop-in MRI operators (docs/operators.md): centered FFT, SENSE forward/adjoint, the fused flow step.

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

import inspect

import torch

from flat.ops import library as _library  # noqa: F401  (registers torch.ops.flat.*)
from flat.ops.backends import BackendUnavailableError, available_backends, use_backend
from flat.ops.checks import HALF, backend_for, canonical_args, check_norm, restore, to_complex
from flat.ops.table import NAMES, OPS

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


def _public(spec):
    """``flat.ops.<name>`` for a table op: check and convert the arguments (flat/ops/checks.py),
    call ``torch.ops.flat.<name>``, give the result back in the user's layout. Required arguments
    are positional, those with a default (``ahy``) keyword-only, as is ``backend``."""
    P = inspect.Parameter
    params = [P(a.name, P.POSITIONAL_OR_KEYWORD) for a in spec.args if not a.has_default]
    params += [P(a.name, P.KEYWORD_ONLY, default=a.default) for a in spec.args if a.has_default]
    sig = inspect.Signature([*params, P("backend", P.KEYWORD_ONLY, default=None)])
    custom_op = getattr(_OPS, spec.name)

    def op(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        backend = values.pop("backend")
        canon, device, back_to_user_layout = canonical_args(spec, values)
        return back_to_user_layout(custom_op(*canon, backend_for(backend, device)))

    op.__name__ = op.__qualname__ = spec.name
    op.__module__ = __name__
    op.__signature__ = sig
    op.__doc__ = spec.doc
    return op


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


# every op of the table but the three with layouts of their own (fft2c, ifft2c: any rank; rss)
for _spec in OPS:
    if _spec.name not in globals():
        globals()[_spec.name] = _public(_spec)
