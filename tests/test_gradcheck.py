"""Analytic backward of every op against finite differences (torch.autograd.gradcheck, complex128)."""
import pytest
import torch
from torch.autograd import gradcheck

import flat.ops as fo
from tests.helpers import random_sens

B, C, H, W = 2, 2, 5, 4


def inputs(mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = lambda *s: torch.randn(*s, dtype=torch.complex128, generator=g).requires_grad_()  # noqa: E731
    mask = (torch.tensor([1.0, 0.0, 1.0, 1.0]) if mask_kind == "column"
            else (torch.rand(B, 1, H, W, generator=g) < 0.5).double())
    return dict(x=c(B, H, W), v=c(B, H, W), ahy=c(B, H, W), y=c(B, C, H, W), k=c(B, C, H, W),
                S=random_sens(B, C, H, W, generator=g).requires_grad_(), mask=mask)


def real(*shape, value=0.3):
    return (torch.full(shape, value, dtype=torch.float64) + 0.1 * torch.rand(shape, dtype=torch.float64)).requires_grad_()


@pytest.mark.parametrize("mask_kind", ["column", "2d"])
def test_linear_ops(mask_kind):
    d = inputs(mask_kind)
    m = d["mask"]
    assert gradcheck(fo.fft2c, (d["k"],))
    assert gradcheck(fo.ifft2c, (d["k"],))
    assert gradcheck(fo.sens_expand, (d["x"], d["S"]))
    assert gradcheck(fo.sens_reduce, (d["k"], d["S"]))
    assert gradcheck(lambda x, s: fo.sense_forward(x, s, m), (d["x"], d["S"]))
    assert gradcheck(lambda k, s: fo.sense_adjoint(k, s, m), (d["k"], d["S"]))
    assert gradcheck(lambda x, s: fo.normal(x, s, m), (d["x"], d["S"]))
    assert gradcheck(lambda x, y, s: fo.dc_gradient(x, y, s, m), (d["x"], d["y"], d["S"]))


@pytest.mark.parametrize("mask_kind", ["column", "2d"])
@pytest.mark.parametrize("scalar_shape", [(), (B,)])
def test_flow_step(mask_kind, scalar_shape):
    d = inputs(mask_kind, seed=1)
    m = d["mask"]
    dt, lam = real(*scalar_shape, value=0.3), real(*scalar_shape, value=2.0)
    f = lambda x, v, y, s, dt, lam: fo.flow_step(x, v, y, s, m, dt, lam)  # noqa: E731
    assert gradcheck(f, (d["x"], d["v"], d["y"], d["S"], dt, lam))
    g = lambda x, v, s, dt, lam, ahy: fo.flow_step(x, v, None, s, m, dt, lam, ahy=ahy)  # noqa: E731
    assert gradcheck(g, (d["x"], d["v"], d["S"], dt, lam, d["ahy"]))


@pytest.mark.parametrize("mask_kind", ["column", "2d"])
@pytest.mark.parametrize("scalar_shape", [(), (B,)])
def test_kspace_flow_step(mask_kind, scalar_shape):
    d = inputs(mask_kind, seed=2)
    m = d["mask"]
    dt, lam = real(*scalar_shape, value=0.3), real(*scalar_shape, value=2.0)
    f = lambda k, z, y, s, dt, lam: fo.kspace_flow_step(k, z, y, s, m, dt, lam)  # noqa: E731
    assert gradcheck(f, (d["k"], d["x"], d["y"], d["S"], dt, lam))


def test_rss():
    x = torch.randn(B, C, H, W, dtype=torch.complex128, requires_grad=True)
    assert gradcheck(lambda x: fo.rss(x, dim=1), (x,))
    r = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)  # plain real data
    assert gradcheck(lambda r: fo.rss(r, dim=0), (r,))


def test_real_layout_gradients():
    """Gradients come back in fastMRI's real layout when inputs are given in it."""
    d = inputs("column", seed=3)
    x = torch.view_as_real(d["x"].detach()).unsqueeze(1).requires_grad_()
    s = torch.view_as_real(d["S"].detach()).requires_grad_()
    assert gradcheck(lambda x, s: fo.sense_forward(x, s, d["mask"]), (x, s))
