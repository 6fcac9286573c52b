"""``torch.library`` registration of every op in the namespace ``flat`` (``torch.ops.flat.<name>``).

Each op is functional (mutates nothing, never aliases an input), has a fake implementation for
tracing, and an analytic backward dispatched to the same backend as the forward. The ops take
canonical tensors (see :mod:`flat.backends`); :mod:`flat.ops` validates user input and converts
layouts before calling them. ``dt``/``lam`` are tensors here so that ``torch.compile`` does not
specialise (and recompile) on their values. ``backend`` is a concrete backend name or ``"auto"``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from flat.backends import get_impl, resolve

LIB = "flat"


def _impl(backend: str, op: str, device: torch.device):
    if backend == "auto":
        backend = resolve("auto", device.type)
    return get_impl(backend, op)


def _register_autograd(name: str, n_inputs: int) -> None:
    """Autograd for op ``name``: saves the inputs, calls the backend's ``<name>_backward``."""

    def setup_context(ctx, inputs, output):
        tensors = [x if isinstance(x, Tensor) else None for x in inputs[:n_inputs]]
        ctx.save_for_backward(*tensors)
        ctx.plain = [None if isinstance(x, Tensor) else x for x in inputs[:n_inputs]]
        ctx.backend = inputs[n_inputs]

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        inputs = tuple(p if p is not None else t for t, p in zip(saved, ctx.plain))
        needs = tuple(ctx.needs_input_grad[:n_inputs])
        fn = _impl(ctx.backend, name + "_backward", grad.device)
        # Lazy conjugates must be materialised before kernels see raw pointers (kernels.md §5).
        grads = fn(grad.resolve_conj(), inputs, needs)
        return (*grads, None)

    torch.library.register_autograd(f"{LIB}::{name}", backward, setup_context=setup_context)


def _like(x: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- ops
@torch.library.custom_op(f"{LIB}::fft2c", mutates_args=())
def fft2c(x: Tensor, backend: str = "auto") -> Tensor:
    return _impl(backend, "fft2c", x.device)(x)


@torch.library.custom_op(f"{LIB}::ifft2c", mutates_args=())
def ifft2c(x: Tensor, backend: str = "auto") -> Tensor:
    return _impl(backend, "ifft2c", x.device)(x)


@torch.library.custom_op(f"{LIB}::sens_expand", mutates_args=())
def sens_expand(image: Tensor, sens: Tensor, backend: str = "auto") -> Tensor:
    return _impl(backend, "sens_expand", image.device)(image, sens)


@torch.library.custom_op(f"{LIB}::sens_reduce", mutates_args=())
def sens_reduce(kspace: Tensor, sens: Tensor, backend: str = "auto") -> Tensor:
    return _impl(backend, "sens_reduce", kspace.device)(kspace, sens)


@torch.library.custom_op(f"{LIB}::sense_forward", mutates_args=())
def sense_forward(image: Tensor, sens: Tensor, mask: Tensor, backend: str = "auto") -> Tensor:
    return _impl(backend, "sense_forward", image.device)(image, sens, mask)


@torch.library.custom_op(f"{LIB}::sense_adjoint", mutates_args=())
def sense_adjoint(kspace: Tensor, sens: Tensor, mask: Tensor, backend: str = "auto") -> Tensor:
    return _impl(backend, "sense_adjoint", kspace.device)(kspace, sens, mask)


@torch.library.custom_op(f"{LIB}::normal", mutates_args=())
def normal(image: Tensor, sens: Tensor, mask: Tensor, backend: str = "auto") -> Tensor:
    return _impl(backend, "normal", image.device)(image, sens, mask)


@torch.library.custom_op(f"{LIB}::dc_gradient", mutates_args=())
def dc_gradient(image: Tensor, kspace: Tensor, sens: Tensor, mask: Tensor, backend: str = "auto") -> Tensor:
    return _impl(backend, "dc_gradient", image.device)(image, kspace, sens, mask)


@torch.library.custom_op(f"{LIB}::flow_step", mutates_args=())
def flow_step(
    image: Tensor,
    velocity: Tensor,
    kspace: Optional[Tensor],
    sens: Tensor,
    mask: Tensor,
    dt: Tensor,
    lam: Tensor,
    ahy: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tensor:
    if kspace is None and ahy is None:
        raise ValueError("flow_step: give kspace or its precomputed adjoint ahy (both are None)")
    return _impl(backend, "flow_step", image.device)(image, velocity, kspace, sens, mask, dt, lam, ahy)


@torch.library.custom_op(f"{LIB}::kspace_flow_step", mutates_args=())
def kspace_flow_step(
    kstate: Tensor,
    image_update: Tensor,
    kspace: Tensor,
    sens: Tensor,
    mask: Tensor,
    dt: Tensor,
    lam: Tensor,
    backend: str = "auto",
) -> Tensor:
    return _impl(backend, "kspace_flow_step", kstate.device)(kstate, image_update, kspace, sens, mask, dt, lam)


@torch.library.custom_op(f"{LIB}::rss", mutates_args=())
def rss(x: Tensor, dim: int = 1, backend: str = "auto") -> Tensor:
    return _impl(backend, "rss", x.device)(x, dim)


# ---------------------------------------------------------------- fake (meta) implementations
def _image_of(k: Tensor) -> Tensor:  # (B, C, H, W) -> (B, H, W)
    return k.new_empty(k.shape[:1] + k.shape[2:])


torch.library.register_fake(f"{LIB}::fft2c")(lambda x, backend="auto": _like(x))
torch.library.register_fake(f"{LIB}::ifft2c")(lambda x, backend="auto": _like(x))
torch.library.register_fake(f"{LIB}::sens_expand")(lambda image, sens, backend="auto": _like(sens))
torch.library.register_fake(f"{LIB}::sens_reduce")(lambda kspace, sens, backend="auto": _image_of(kspace))
torch.library.register_fake(f"{LIB}::sense_forward")(lambda image, sens, mask, backend="auto": _like(sens))
torch.library.register_fake(f"{LIB}::sense_adjoint")(lambda kspace, sens, mask, backend="auto": _image_of(kspace))
torch.library.register_fake(f"{LIB}::normal")(lambda image, sens, mask, backend="auto": _like(image))
torch.library.register_fake(f"{LIB}::dc_gradient")(
    lambda image, kspace, sens, mask, backend="auto": _like(image)
)
torch.library.register_fake(f"{LIB}::flow_step")(
    lambda image, velocity, kspace, sens, mask, dt, lam, ahy=None, backend="auto": _like(image)
)
torch.library.register_fake(f"{LIB}::kspace_flow_step")(
    lambda kstate, image_update, kspace, sens, mask, dt, lam, backend="auto": _like(kstate)
)


@torch.library.register_fake(f"{LIB}::rss")
def _rss_fake(x, dim=1, backend="auto"):
    shape = list(x.shape)
    del shape[dim]
    return x.new_empty(shape, dtype=x.real.dtype if x.is_complex() else x.dtype)


# ---------------------------------------------------------------- autograd
for _name, _n in (
    ("fft2c", 1), ("ifft2c", 1), ("sens_expand", 2), ("sens_reduce", 2), ("sense_forward", 3),
    ("sense_adjoint", 3), ("normal", 3), ("dc_gradient", 4), ("flow_step", 8),
    ("kspace_flow_step", 7), ("rss", 2),
):
    _register_autograd(_name, _n)
