"""Kernel backends' backward implementations wrapped as opaque ``torch.library`` custom ops.

flat/ops/library.py registers each ``flat::<op>`` autograd formula as a Python function that calls the
backend's ``<op>_backward``. AOT autograd (torch.compile, opcheck's aot_dispatch tests) traces that
function with fake tensors, and a Triton or CuPy launch cannot run on fake tensors. So every kernel
backward is itself an opaque custom op with a fake implementation: ``flat_<backend>::<op>_backward``
(the reference backward is plain PyTorch and is traced as it is).

Schema: ``(grad, inputs: Tensor?[], needs: bool[]) -> Tensor[]``; a gradient that is not produced
comes back as an empty tensor and is turned into ``None`` again here. Which gradients exist is a
pure function of (needs, which inputs are None) — ``_produced`` — shared by the real and fake paths.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from flat.ops.table import lookup


def _produced(op: str, inputs, needs) -> list[bool]:
    """Which gradients the backward returns: asked for, for a differentiable argument that is
    given, and that enters the op (flow_step's y does not when Aᴴy is given)."""
    spec = lookup(op)
    given = {a.name: t is not None for a, t in zip(spec.args, inputs)}
    return [
        bool(n) and given[a.name] and a.differentiable and not (a.unused_if and given[a.unused_if])
        for a, n in zip(spec.args, needs)
    ]


def wrap_backward(backend: str, op: str, fn: Callable) -> Callable:
    """Register ``fn`` (canonical backward) as ``flat_<backend>::<op>_backward``; return the caller."""
    name = f"flat_{backend}::{op}_backward"

    @torch.library.custom_op(name, mutates_args=())
    def _bw(grad: Tensor, inputs: List[Optional[Tensor]], needs: List[bool]) -> List[Tensor]:
        grads = fn(grad, tuple(inputs), tuple(needs))
        res = []
        for g, t, p in zip(grads, inputs, _produced(op, inputs, needs)):
            if p:
                res.append(g if g is not None else torch.zeros_like(t))
            else:
                res.append(grad.new_empty(0))
        return res

    @_bw.register_fake
    def _(grad, inputs, needs):
        return [
            torch.empty_like(t, memory_format=torch.contiguous_format) if p else grad.new_empty(0)
            for t, p in zip(inputs, _produced(op, inputs, needs))
        ]

    def call(grad, inputs, needs):
        outs = _bw(grad, list(inputs), [bool(n) for n in needs])
        return tuple(g if p else None for g, p in zip(outs, _produced(op, inputs, needs)))

    return call
