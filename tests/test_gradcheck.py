"""Analytic backward of every op against finite differences (torch.autograd.gradcheck, complex128)."""
import pytest
import torch
from torch.autograd import gradcheck

import flat.ops as fo
from flat.ops.table import OPS, SCALAR, lookup
from tests.helpers import call_public, random_sens, variant_label

B, C, H, W = 2, 2, 5, 4


def _masks(g):
    return {"column": torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64).reshape(1, 1, W),
            "2d": (torch.rand(B, H, W, generator=g) < 0.5).double()}


def _cases():
    """(op, variant, mask kind, dt/lam shape) for every op of the table."""
    cases = []
    for spec in OPS:
        scalars = [(), (B,)] if any(a.kind == SCALAR for a in spec.args) else [()]
        for i in range(len(spec.variants)):
            for mask_kind in (["column", "2d"] if spec.has_mask else [None]):
                for shape in scalars:
                    cases.append(pytest.param(spec.name, i, mask_kind, shape,
                                              id=f"{variant_label(spec, i)}-{mask_kind}-{len(shape)}d"))
    return cases


@pytest.mark.parametrize("op,variant,mask_kind,scalar_shape", _cases())
def test_analytic_backward(op, variant, mask_kind, scalar_shape):
    """Every differentiable input of every op (table order), through flat.ops."""
    spec = lookup(op)
    g = torch.Generator().manual_seed(0)
    mask = _masks(g)[mask_kind] if mask_kind else None
    args = spec.sample(B, C, H, W, mask, generator=g, variant=spec.variants[variant], scalar_shape=scalar_shape)
    free = [i for i, (a, t) in enumerate(zip(spec.args, args)) if a.differentiable and t is not None]

    def f(*leaves):
        full = list(args)
        for i, t in zip(free, leaves):
            full[i] = t
        return call_public(spec, full)

    assert gradcheck(f, tuple(args[i].detach().requires_grad_() for i in free))


def test_rss():
    x = torch.randn(B, C, H, W, dtype=torch.complex128, requires_grad=True)
    assert gradcheck(lambda x: fo.rss(x, dim=1), (x,))
    r = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)  # plain real data
    assert gradcheck(lambda r: fo.rss(r, dim=0), (r,))


def test_real_layout_gradients():
    """Gradients come back in fastMRI's real layout when inputs are given in it."""
    g = torch.Generator().manual_seed(3)
    x = torch.view_as_real(torch.randn(B, H, W, dtype=torch.complex128, generator=g)).unsqueeze(1).requires_grad_()
    s = torch.view_as_real(random_sens(B, C, H, W, generator=g)).requires_grad_()
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert gradcheck(lambda x, s: fo.sense_forward(x, s, mask), (x, s))
