"""Every op against the independent complex128 oracle (tests/oracle.py), plus MRI invariants."""
import numpy as np
import pytest
import torch

import flat.ops as fo
from flat.ops.table import INT, MASK, OPS
from tests import oracle
from tests.helpers import assert_rel_close, call_public, random_sens, variant_label

SHAPES = [(1, 3, 8, 8), (2, 4, 9, 7), (2, 2, 10, 12), (1, 3, 7, 10)]  # even, odd, mixed H/W
DTYPES = [torch.complex128, torch.complex64]


def make(B, C, H, W, dtype, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = lambda *s: torch.randn(*s, dtype=torch.complex128, generator=g)  # noqa: E731
    x, v, ahy = c(B, H, W), c(B, H, W), c(B, H, W)
    y, k = c(B, C, H, W), c(B, C, H, W)
    S = random_sens(B, C, H, W, generator=g)
    if mask_kind == "column":
        mask = torch.rand(W, generator=g) < 0.5
    elif mask_kind == "batch_column":
        mask = (torch.rand(B, W, generator=g) < 0.5).float()
    else:  # 2-D mask
        mask = (torch.rand(B, 1, H, W, generator=g) < 0.4).double()
    t = lambda a: a.to(dtype)  # noqa: E731
    return dict(x=t(x), v=t(v), ahy=t(ahy), y=t(y), k=t(k), S=t(S), mask=mask,
                np=dict(x=x.numpy(), v=v.numpy(), ahy=ahy.numpy(), y=y.numpy(), k=k.numpy(), S=S.numpy(),
                        M=oracle.full_mask(mask.numpy(), B, H, W)))


CASES = [(s, d, m) for s in SHAPES for d in DTYPES for m in ("column", "batch_column", "2d")]


@pytest.mark.parametrize("shape,dtype,mask_kind", CASES)
def test_ops_match_numpy_oracle(shape, dtype, mask_kind):
    d = make(*shape, dtype, mask_kind)
    n = d["np"]
    B = shape[0]
    dt = torch.linspace(0.1, 0.3, B, dtype=torch.float64)  # per-sample (B,) tensor
    lam = 2.5
    # table argument -> (value for flat.ops, value for the oracle); variant 1 passes dt as a float
    values = {"image": "x", "velocity": "v", "kspace": "y", "sens": "S", "ahy": "ahy", "kstate": "k",
              "image_update": "x", "x": "k"}
    checks = {}
    for spec in OPS:
        for i, variant in enumerate(spec.variants):
            pub, orc = [], []
            for arg in spec.args:
                if arg.name in variant:
                    pub.append(None), orc.append(None)
                elif arg.kind == MASK:
                    pub.append(d["mask"]), orc.append(n["M"])
                elif arg.name == "dt":
                    pub.append(dt if i == 0 else 0.2), orc.append(dt.numpy() if i == 0 else 0.2)
                elif arg.name == "lam":
                    pub.append(lam), orc.append(lam)
                elif arg.kind == INT:
                    pub.append(arg.default), orc.append(arg.default)
                else:
                    pub.append(d[values[arg.name]]), orc.append(n[values[arg.name]])
            checks[variant_label(spec, i)] = (call_public(spec, pub), getattr(oracle, spec.name)(*orc))
    for name, (got, want) in checks.items():
        assert got.dtype == (dtype if name != "rss" else dtype.to_real()), f"{name}: dtype {got.dtype}"
        assert_rel_close(got, torch.from_numpy(np.ascontiguousarray(want)), dtype=dtype, name=name)
    assert len(checks) == sum(len(s.variants) for s in OPS)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask_kind", ["column", "2d"])
def test_adjointness(shape, mask_kind):
    """<A x, k> = <x, Aᴴ k> and <E x, k> = <x, Eᴴ k> for the unmasked expand/reduce pair."""
    d = make(*shape, torch.complex128, mask_kind, seed=1)
    x, k, S, m = d["x"], d["k"], d["S"], d["mask"]
    lhs = torch.vdot(fo.sense_forward(x, S, m).flatten(), k.flatten())
    rhs = torch.vdot(x.flatten(), fo.sense_adjoint(k, S, m).flatten())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    lhs = torch.vdot(fo.sens_expand(x, S).flatten(), k.flatten())
    rhs = torch.vdot(x.flatten(), fo.sens_reduce(k, S).flatten())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_fft_round_trip_and_unitarity():
    x = torch.randn(2, 3, 9, 6, dtype=torch.complex128)
    assert_rel_close(fo.ifft2c(fo.fft2c(x)), x, rtol=1e-14)
    assert torch.allclose(fo.fft2c(x).norm(), x.norm(), rtol=1e-13)


def test_dc_gradient_is_gradient_of_data_term():
    """Aᴴ(Ax − y) equals autograd's gradient of ½‖Ax − My‖² (PyTorch's conj-Wirtinger convention)."""
    d = make(2, 3, 8, 9, torch.complex128, "column", seed=2)
    x = d["x"].clone().requires_grad_()
    y_masked = d["y"] * d["mask"].double()
    loss = 0.5 * (fo.sense_forward(x, d["S"], d["mask"]) - y_masked).abs().pow(2).sum()
    (g,) = torch.autograd.grad(loss, x)
    assert_rel_close(g, fo.dc_gradient(d["x"], d["y"], d["S"], d["mask"]))


def test_masked_zeros_are_positive():
    """M ⊙ k gives +0.0 where M = 0, even where k is negative (0.0 * -x = -0.0 otherwise)."""
    x = -torch.ones(1, 4, 4, dtype=torch.complex64)
    S = torch.ones(1, 1, 4, 4, dtype=torch.complex64)
    k = fo.sense_forward(x, S, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    zeros = torch.view_as_real(k)[..., [1, 3], :]
    assert (zeros == 0).all() and not torch.signbit(zeros).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_layout_round_trip(dtype):
    """fastMRI's real layout in -> same layout out, same numbers as the complex path."""
    B, C, H, W = 2, 3, 8, 6
    cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
    d = make(B, C, H, W, cdt, "column", seed=3)
    R = torch.view_as_real
    x_r = R(d["x"]).unsqueeze(1)  # (B, 1, H, W, 2)
    mask_fastmri = d["mask"].float().reshape(1, 1, W, 1)  # fastMRI's per-slice mask shape
    pairs = {
        "fft2c": (fo.fft2c(R(d["k"])), R(fo.fft2c(d["k"]))),
        "sense_forward": (fo.sense_forward(x_r, R(d["S"]), mask_fastmri), R(fo.sense_forward(d["x"], d["S"], d["mask"]))),
        "sense_adjoint": (fo.sense_adjoint(R(d["k"]), R(d["S"]), mask_fastmri),
                          R(fo.sense_adjoint(d["k"], d["S"], d["mask"])).unsqueeze(1)),
        "flow_step": (fo.flow_step(x_r, R(d["v"]).unsqueeze(1), R(d["y"]), R(d["S"]), mask_fastmri, 0.1, 3.0),
                      R(fo.flow_step(d["x"], d["v"], d["y"], d["S"], d["mask"], 0.1, 3.0)).unsqueeze(1)),
        "kspace_flow_step": (fo.kspace_flow_step(R(d["k"]), x_r, R(d["y"]), R(d["S"]), mask_fastmri, 0.1, 3.0),
                             R(fo.kspace_flow_step(d["k"], d["x"], d["y"], d["S"], d["mask"], 0.1, 3.0))),
        "rss": (fo.rss(R(d["k"]), dim=1, real_layout=True), fo.rss(d["k"], dim=1)),
    }
    for name, (got, want) in pairs.items():
        assert got.dtype == dtype and got.shape == want.shape, f"{name}: {got.dtype} {tuple(got.shape)}"
        assert_rel_close(got, want, rtol=1e-6 if dtype == torch.float32 else 1e-14, name=name)


def test_mask_forms_agree():
    """Every accepted column-mask form gives the same result as (W,)."""
    d = make(2, 3, 8, 6, torch.complex128, "column", seed=4)
    m = d["mask"]
    want = fo.normal(d["x"], d["S"], m)
    for form in (m.reshape(1, 6), m.expand(2, 6), m.reshape(1, 1, 1, 6), m.reshape(1, 1, 6, 1),
                 m.reshape(1, 1, 1, 6, 1), m.reshape(1, 1, 1, 6).expand(1, 1, 8, 6), m.double()):
        assert_rel_close(fo.normal(d["x"], d["S"], form), want, name=str(tuple(form.shape)))


def test_complex128_coefficients_not_rounded():
    """dt·lam must stay float64 with complex128 data: a float32 product would err by ~1e-8."""
    d = make(1, 2, 8, 8, torch.complex128, "column", seed=5)
    n = d["np"]
    dt, lam = 0.1234567890123, 7.654321098765
    got = fo.flow_step(d["x"], d["v"], d["y"], d["S"], d["mask"], dt, lam)
    want = oracle.flow_step(n["x"], n["v"], n["y"], n["S"], n["M"], dt, lam)
    assert_rel_close(got, torch.from_numpy(want), rtol=1e-13)


def test_image_with_singleton_coil_dim_keeps_its_rank():
    d = make(2, 3, 8, 6, torch.complex128, "column", seed=6)
    out = fo.normal(d["x"].unsqueeze(1), d["S"], d["mask"])
    assert out.shape == (2, 1, 8, 6)
    assert_rel_close(out[:, 0], fo.normal(d["x"], d["S"], d["mask"]))
