"""``torch.library`` registration of every op of the table in the namespace ``flat``.

For each :class:`~flat.ops.table.OpSpec` this registers ``torch.ops.flat.<name>``: the schema
(canonical tensors plus a trailing ``backend`` string), a functional implementation that
dispatches to the backend's function (mutates nothing, never aliases an input), a fake
implementation for tracing, and an analytic backward dispatched to the same backend's
``<name>_backward``. ``dt``/``lam`` are tensors here so that ``torch.compile`` does not specialise
(and recompile) on their values (docs/operators.md). :mod:`flat.ops` validates user input and
converts layouts before calling these.
"""
from __future__ import annotations

import torch
from torch import Tensor

from flat.ops.backends import get_impl, resolve
from flat.ops.table import OPS, OpSpec

LIB = "flat"


def _impl(backend: str, op: str, device: torch.device):
    if backend == "auto":
        backend = resolve("auto", device.type)
    return get_impl(backend, op)


def _full_args(spec: OpSpec, args: tuple) -> tuple[tuple, str]:
    """(canonical inputs with schema defaults filled in, backend) from a dispatcher call."""
    n = len(spec.args)
    inputs = list(args[:n]) + [a.default for a in spec.args[len(args):]]
    backend = args[n] if len(args) > n else "auto"
    return tuple(inputs), backend


def _forward(spec: OpSpec):
    def forward(*args):
        inputs, backend = _full_args(spec, args)
        missing = [name for name in spec.one_of if inputs[spec.arg_names.index(name)] is None]
        if spec.one_of and len(missing) == len(spec.one_of):
            raise ValueError(f"{spec.name}: give one of {', '.join(spec.one_of)} (all are None)")
        return _impl(backend, spec.name, inputs[0].device)(*inputs)

    forward.__name__ = spec.name
    return forward


def _register_autograd(spec: OpSpec) -> None:
    """Autograd for one op: saves the inputs, calls the backend's ``<name>_backward``."""

    def setup_context(ctx, inputs, output):
        inputs, backend = _full_args(spec, tuple(inputs))
        ctx.save_for_backward(*(x if isinstance(x, Tensor) else None for x in inputs))
        ctx.plain = [None if isinstance(x, Tensor) else x for x in inputs]
        ctx.backend = backend

    def backward(ctx, grad):
        inputs = tuple(p if p is not None else t for t, p in zip(ctx.saved_tensors, ctx.plain))
        needs = tuple(ctx.needs_input_grad[: len(spec.args)])
        fn = _impl(ctx.backend, spec.name + "_backward", grad.device)
        # Lazy conjugates must be materialised before kernels see raw pointers (docs/operators.md).
        grads = fn(grad.resolve_conj(), inputs, needs)
        return (*grads, None)

    torch.library.register_autograd(f"{LIB}::{spec.name}", backward, setup_context=setup_context)


def _register(spec: OpSpec) -> None:
    op = torch.library.custom_op(f"{LIB}::{spec.name}", _forward(spec), mutates_args=(), schema=spec.schema())
    op.register_fake(lambda *args: spec.fake(*_full_args(spec, args)[0]))
    _register_autograd(spec)


for _spec in OPS:
    _register(_spec)
