"""Kernel backends' backward implementations wrapped as opaque ``torch.library`` custom ops.

flat/_library.py registers each ``flat::<op>`` autograd formula as a Python function that calls the
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

# index of the mask (never differentiated) in each op's inputs
_MASK_INDEX = {
    "flow_step": 4, "normal": 2, "dc_gradient": 3, "kspace_flow_step": 4,
    "sense_forward": 2, "sense_adjoint": 2,
}


def _produced(op: str, inputs, needs) -> list[bool]:
    out = []
    for i, (t, n) in enumerate(zip(inputs, needs)):
        ok = bool(n) and t is not None and i != _MASK_INDEX[op]
        if op == "flow_step" and i == 2 and inputs[7] is not None:
            ok = False  # y does not enter the step when Aᴴy is given
        out.append(ok)
    return out


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
