"""torch.compile(fullgraph=True) over the ops: no graph breaks, one compile for changing dt/lam."""
import torch
import torch._dynamo.testing

import flat.ops as fo
from tests.helpers import assert_rel_close, random_sens

B, C, H, W = 2, 3, 8, 6


def _data(dtype=torch.complex64):
    g = torch.Generator().manual_seed(0)
    c = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    return c(B, H, W), c(B, C, H, W), random_sens(B, C, H, W, dtype=dtype, generator=g), torch.rand(W, generator=g) < 0.5


def three_steps(x, y, S, m, dts, lam):
    ahy = fo.sense_adjoint(y, S, m)
    for k in range(3):
        v = 0.1 * x  # stands in for the network
        x = fo.flow_step(x, v, None, S, m, dts[k], lam, ahy=ahy)
    return fo.rss(fo.sens_expand(x, S), dim=1)


def test_fullgraph_compiles_once_for_changing_dt_and_lam():
    x, y, S, m = _data()
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(three_steps, backend=counter, fullgraph=True)
    for dts, lam in (([0.1, 0.2, 0.3], 2.0), ([0.5, 0.3, 0.2], 7.0), ([0.25, 0.25, 0.5], 1.5)):
        dts_t = torch.tensor(dts)
        want = three_steps(x, y, S, m, dts_t, torch.tensor(lam))
        got = f(x, y, S, m, dts_t, torch.tensor(lam))
        assert_rel_close(got, want, rtol=1e-6)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times"


def test_python_float_dt_does_not_recompile():
    """The public wrapper turns float dt/lam into tensors; changing floats must not recompile per value."""
    x, y, S, m = _data()
    counter = torch._dynamo.testing.CompileCounter()

    def step(x, dt, lam):
        return fo.flow_step(x, x, y, S, m, dt, lam)

    f = torch.compile(step, backend=counter, fullgraph=True)
    for dt in (0.1, 0.2, 0.3, 0.4):
        assert_rel_close(f(x, dt, 2.0 * dt), step(x, dt, 2.0 * dt), rtol=1e-6)
    assert counter.frame_count <= 2, f"compiled {counter.frame_count} times for 4 dt values"


def test_inductor_matches_eager_with_gradients():
    """Inductor end to end (forward and backward) equals eager: guards against lazy-conj bugs."""
    x, y, S, m = _data(torch.complex128)
    x.requires_grad_()
    S = S.clone().requires_grad_()
    dts, lam = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    f = torch.compile(three_steps, fullgraph=True)
    out_c = f(x, y, S, m, dts, lam)
    gx_c, gs_c = torch.autograd.grad(out_c.sum(), (x, S))
    out_e = three_steps(x, y, S, m, dts, lam)
    gx_e, gs_e = torch.autograd.grad(out_e.sum(), (x, S))
    assert_rel_close(out_c, out_e, rtol=1e-12)
    assert_rel_close(gx_c, gx_e, rtol=1e-12)
    assert_rel_close(gs_c, gs_e, rtol=1e-12)
