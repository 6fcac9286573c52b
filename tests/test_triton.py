"""The Triton backend (flat_kernels/triton) against a complex128 oracle and the reference backend.

On the CPU the kernels run under TRITON_INTERPRET=1 (set by conftest.py), so shapes stay tiny
(docs/kernels.md, testing): even W, W % 4 == 2 and odd W; odd H; B = 1 and 2; shared and per-sample masks;
column masks (at these widths, none 16·N2, on the 2-D path; the row kernel of monarch.py is
tested in tests/test_kernel_resources.py) and 2-D masks (torch.fft + Triton prologue/epilogue). Every kernel
output is poisoned with NaN before its launch (``_common._POISON``), so an element a kernel forgets
to write fails the comparison.

The oracle is tests/oracle.py: the literal fastMRI formulas in complex128 (torch.fft with explicit
fftshift / ifftshift, anchored to numpy below); gradients of the oracle come from autograd through
it, so they check the hand-written backward kernels independently of flat/ops/reference.py. The ops
and their arguments come from the op table (flat/ops/table.py).

GPU tests (marker ``gpu``) run the knee and brain sizes and CUDA-graph capture; skipped without CUDA.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import flat.ops as fo  # noqa: E402
from flat import backends  # noqa: E402

from flat.ops.table import MASK, OPS, lookup  # noqa: E402

from . import oracle  # noqa: E402
from .helpers import RTOL, assert_rel_close, call_public, column_mask, rel_err, variant_label  # noqa: E402

C64, C128 = torch.complex64, torch.complex128
REAL = {C64: torch.float32, C128: torch.float64}


@pytest.fixture(autouse=True)
def _poison_outputs():
    from flat_kernels.triton import _common

    old = _common._POISON["on"]
    _common._POISON["on"] = True
    yield
    _common._POISON["on"] = old


# ---------------------------------------------------------------- the oracle (tests/oracle.py) and the op table
_D = oracle.AX


def ORACLE(op):
    return getattr(oracle, op)


def _call(op, args, backend):
    """Call flat.ops.<op> with its canonical arguments in table order (mask (Bm, Hm, W))."""
    spec = lookup(op)
    args = tuple(a[:, None] if arg.kind == MASK else a for arg, a in zip(spec.args, args))
    return call_public(spec, args, backend)


# ---------------------------------------------------------------- cases
# (B, C, H, W, mask kind, per-sample mask, dt/lam shape)
CASES = [
    pytest.param(2, 3, 5, 8, "col", True, "B", id="col-B2-W8"),
    pytest.param(1, 2, 4, 6, "col", False, "0", id="col-B1-W6"),  # W % 4 == 2
    pytest.param(2, 2, 3, 7, "col", False, "0", id="col-B2-W7-sharedmask"),  # odd W and H
    pytest.param(1, 2, 3, 46, "col", True, "B", id="col-B1-W46"),  # W ≠ 16·N2: a column mask on the 2-D path
    pytest.param(2, 2, 5, 10, "2d", True, "B", id="2d-B2-W10"),
    pytest.param(1, 3, 5, 7, "2d", False, "0", id="2d-B1-W7"),
]
BIG = [  # odd W: a 512-wide tile row; H = 5 > the 2-row tile of the 2-D kernels
    pytest.param(1, 2, 5, 367, "col", False, "0", id="col-W367"),
    pytest.param(1, 2, 5, 367, "2d", True, "0", id="2d-W367"),
]


def make_inputs(B, C, H, W, kind, per_sample, sshape, dtype):
    rd = REAL[dtype]
    Bm = B if per_sample else 1
    if kind == "col":
        M = column_mask(Bm, W, frac=0.4).reshape(Bm, 1, W)
    else:
        M = (torch.rand(Bm, H, W) < 0.4).double()
        M[:, H // 2, W // 2] = 1
    def c(*s):
        return torch.randn(*s, dtype=C128).to(dtype)
    shape = (B,) if sshape == "B" else ()
    return dict(
        x=c(B, H, W), v=c(B, H, W), y=c(B, C, H, W), S=(c(B, C, H, W) / np.sqrt(C)), ahy=c(B, H, W),
        k=c(B, C, H, W), z=c(B, H, W), M=M.to(rd),
        dt=(torch.rand(shape, dtype=torch.float64) * 0.9 + 0.1).to(rd),
        lam=(torch.rand(shape, dtype=torch.float64) * 2 + 0.5).to(rd),
    )


# short names of make_inputs for the table's arguments
SHORT = {"image": "x", "velocity": "v", "kspace": "y", "sens": "S", "mask": "M", "dt": "dt", "lam": "lam",
         "ahy": "ahy", "kstate": "k", "image_update": "z"}
# every op (and variant) the Triton backend implements itself, with its inputs by short name
OP_ARGS = {
    variant_label(spec, i): tuple(None if a.name in variant else SHORT[a.name] for a in spec.args)
    for spec in OPS if spec.name in backends.implemented_ops("triton")
    for i, variant in enumerate(spec.variants)
}
DIFFERENTIABLE = {"x", "v", "y", "S", "ahy", "k", "z", "dt", "lam"}


def _args(inp, names, transform=lambda n, t: t):
    return tuple(None if n is None else transform(n, inp[n]) for n in names)


# ---------------------------------------------------------------- numerics
def test_oracle_fft_matches_numpy():
    """Anchor the oracle: torch's centered FFT above equals numpy's, odd and even sizes."""
    for H, W in ((4, 6), (5, 7), (3, 8)):
        a = np.random.default_rng(0).standard_normal((2, H, W)) + 1j * np.random.default_rng(1).standard_normal((2, H, W))
        want = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=_D), norm="ortho"), axes=_D)
        assert_rel_close(oracle.fft2c(torch.from_numpy(a)), torch.from_numpy(want), rtol=1e-14, name="fft2c")


def _check_forward(case, dtype):
    inp = make_inputs(*case, dtype)
    inp128 = {k: (v.to(C128) if v.is_complex() else v.double()) for k, v in inp.items()}
    for name, names in OP_ARGS.items():
        op = name.split("[")[0]
        got = _call(op, _args(inp, names), "triton")
        ref = _call(op, _args(inp, names), "reference")
        want = ORACLE(op)(*_args(inp128, names))
        assert got.dtype == dtype, f"{name}: {got.dtype} != {dtype}"
        assert_rel_close(got, want, dtype=dtype, name=f"{name} vs complex128 oracle")
        assert_rel_close(got, ref, dtype=dtype, name=f"{name} vs reference backend")


@pytest.mark.parametrize("dtype", [C64, C128], ids=["c64", "c128"])
@pytest.mark.parametrize("B,C,H,W,kind,per_sample,sshape", CASES + BIG)
def test_forward(B, C, H, W, kind, per_sample, sshape, dtype):
    _check_forward((B, C, H, W, kind, per_sample, sshape), dtype)


def _grads(op, inp, names, G, backend, oracle=False):
    """Gradients of L = Re Σ conj(G)·op(...) w.r.t. every differentiable input, in input order."""
    leaves = {}

    def leaf(n, t):
        if n not in DIFFERENTIABLE:
            return t
        t = (t.to(C128) if t.is_complex() else t.double()) if oracle else t
        leaves[n] = t.detach().clone().requires_grad_(True)
        return leaves[n]

    args = _args(inp, names, leaf)
    out = ORACLE(op)(*args) if oracle else _call(op, args, backend)
    loss = (G.to(out.dtype).conj() * out).real.sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads))


def _reduction_scale(op, inp, names, n, G):
    """Σ_i |G_i|·|∂out_i/∂θ| per entry of θ = dt or lam (complex128, forward-mode AD on the oracle).

    grad_θ = Re Σ_i conj(G_i)·∂out_i/∂θ is a reduction over every output element; near
    cancellation its own value can be far below its terms, so its achievable accuracy in a given
    precision is eps·(sum of |terms|), not eps·|value| (the backward error of a dot product).
    """
    inp128 = {k: (v.to(C128) if v.is_complex() else v.double()) for k, v in inp.items()}
    args = list(_args(inp128, names))
    i = names.index(n)

    def f(t):
        return ORACLE(op)(*args[:i], t, *args[i + 1:])

    theta = inp128[n]
    _, D = torch.func.jvp(f, (theta,), (torch.ones_like(theta),))
    terms = (G.abs() * D.abs()).reshape(D.shape[0], -1).sum(1)
    return terms.sum() if theta.ndim == 0 else terms


def assert_scalar_close(got, want, scale, dtype, name):
    err = ((got.double() - want.double()).abs() / scale).max().item()
    assert err <= RTOL[dtype], f"{name}: error {err:.3g} of the reduction's scale > {RTOL[dtype]:.1g} (got {got}, want {want})"


@pytest.mark.parametrize("dtype", [C64, C128], ids=["c64", "c128"])
@pytest.mark.parametrize("B,C,H,W,kind,per_sample,sshape", CASES)
def test_gradients(B, C, H, W, kind, per_sample, sshape, dtype):
    """Every gradient of every Triton op against autograd through the oracle and the reference."""
    inp = make_inputs(B, C, H, W, kind, per_sample, sshape, dtype)
    for name, names in OP_ARGS.items():
        op = name.split("[")[0]
        out_shape = (B, C, H, W) if op in ("sense_forward", "kspace_flow_step") else (B, H, W)
        G = torch.randn(out_shape, dtype=C128)
        got = _grads(op, inp, names, G, "triton")
        ref = _grads(op, inp, names, G, "reference")
        want = _grads(op, inp, names, G, None, oracle=True)
        assert set(got) == set(want)
        for n in want:
            assert got[n].shape == inp[n].shape, f"{name}: grad {n} shape {tuple(got[n].shape)}"
            assert got[n].dtype == inp[n].dtype, f"{name}: grad {n} dtype {got[n].dtype}"
            if n in ("dt", "lam"):
                scale = _reduction_scale(op, inp, names, n, G)
                assert_scalar_close(got[n], want[n], scale, dtype, f"{name}: grad {n} vs oracle")
                assert_scalar_close(got[n], ref[n], scale, dtype, f"{name}: grad {n} vs reference")
                continue
            assert_rel_close(got[n], want[n], dtype=got[n].dtype, name=f"{name}: grad {n} vs oracle")
            assert_rel_close(got[n], ref[n], dtype=got[n].dtype, name=f"{name}: grad {n} vs reference")


@pytest.mark.parametrize("kind", ["col", "2d"])
def test_partial_needs_and_weighted_mask(kind):
    """Only some inputs require grad (each constexpr branch of the backward kernels), and a
    non-binary mask: parity with the reference backend (which defines weighted-mask semantics)."""
    inp = make_inputs(2, 2, 4, 6, kind, True, "B", C128)
    inp["M"] = inp["M"] * torch.rand(inp["M"].shape, dtype=torch.float64).add(0.5)  # weights in (0.5, 1.5)
    for name, names in OP_ARGS.items():
        op = name.split("[")[0]
        assert_rel_close(_call(op, _args(inp, names), "triton"), _call(op, _args(inp, names), "reference"),
                         name=f"{name} weighted mask")
    for name, wanted in (("flow_step", {"x"}), ("flow_step", {"S"}), ("flow_step", {"dt", "lam"}),
                         ("flow_step", {"y", "v"}), ("flow_step[ahy]", {"ahy", "S"}), ("flow_step[ahy]", {"lam"})):
        names = OP_ARGS[name]
        G = torch.randn(2, 4, 6, dtype=C128)
        res = {}
        for be in ("triton", "reference"):
            leaves = {n: inp[n].clone().requires_grad_(n in wanted) for n in names if n is not None}
            out = _call("flow_step", tuple(None if n is None else leaves[n] for n in names), be)
            req = [leaves[n] for n in sorted(wanted)]
            res[be] = torch.autograd.grad((G.conj() * out).real.sum(), req)
        assert len(res["triton"]) == len(wanted)
        for n, a, b in zip(sorted(wanted), res["triton"], res["reference"]):
            assert_rel_close(a, b, name=f"{name} needs={sorted(wanted)}: grad {n}")


@pytest.mark.parametrize("kind", ["col", "2d"])
def test_empty_and_full_masks(kind):
    """An empty mask (AᴴA x = 0) and a fully sampled one (AᴴA x = Σ|S_c|²·x)."""
    inp = make_inputs(2, 2, 4, 6, kind, True, "B", C128)
    for fill in (0.0, 1.0):
        inp["M"] = torch.full_like(inp["M"], fill)
        inp128 = dict(inp)
        for name in ("flow_step", "normal", "dc_gradient"):
            names = OP_ARGS[name]
            assert_rel_close(_call(name, _args(inp, names), "triton"), ORACLE(name)(*_args(inp128, names)),
                             name=f"{name} mask={fill}")
    want = (inp["S"].abs() ** 2).sum(1) * inp["x"]
    assert_rel_close(_call("normal", _args(inp, OP_ARGS["normal"]), "triton"), want, name="normal, full mask")


def test_masked_zeros_are_positive():
    """Masked k-space entries are +0.0, never -0.0 (docs/operators.md), in sense_forward and grad_y."""
    inp = make_inputs(1, 2, 4, 8, "2d", False, "0", C64)
    out = fo.sense_forward(inp["x"], inp["S"], inp["M"][:, None], backend="triton")
    masked = (inp["M"][:, None] == 0).expand(out.shape)
    for part in (out.real, out.imag):
        assert (part[masked] == 0).all() and not torch.signbit(part[masked]).any()
    y = inp["y"].clone().requires_grad_(True)
    gy, = torch.autograd.grad(
        fo.dc_gradient(inp["x"], y, inp["S"], inp["M"][:, None], backend="triton").abs().sum(), y
    )
    for part in (gy.real, gy.imag):
        assert not torch.signbit(part[masked]).any()


def test_poison_hook_is_live():
    """The NaN poisoning that the parity tests rely on really is switched on."""
    from flat_kernels.triton import _common as cm

    assert torch.isnan(torch.view_as_real(cm.empty_complex((3,), torch.zeros(1, dtype=C64)))).all()


@pytest.mark.parametrize("kind", ["col", "2d"])
def test_gradcheck_complex128(kind):
    """torch.autograd.gradcheck (fast mode) through the custom op and the Triton backward."""
    inp = make_inputs(1, 2, 3, 6, kind, False, "0", C128)

    def f(x, S, dt):
        return fo.flow_step(x, inp["v"], inp["y"], S, inp["M"][:, None], dt, inp["lam"], backend="triton")

    args = tuple(inp[n].clone().requires_grad_(True) for n in ("x", "S", "dt"))
    assert torch.autograd.gradcheck(f, args, fast_mode=True)


def test_registration_and_precision_modes():
    ops = backends.implemented_ops("triton")
    for op in ("flow_step", "normal", "dc_gradient", "kspace_flow_step", "sense_forward", "sense_adjoint"):
        assert op in ops and op + "_backward" in ops
    import flat_kernels.triton as ft

    assert ft.get_precision() == "tf32x3"  # the default keeps the 1e-5 contract (docs/kernels.md, precision)
    with pytest.raises(ValueError, match="precision"):
        ft.set_precision("bf16")
    ft.set_precision("tf32")
    try:
        assert ft.get_precision() == "tf32"
    finally:
        ft.set_precision("tf32x3")


def test_lazy_conj_inputs():
    """Lazily conjugated inputs (docs/operators.md, custom-op pitfalls) are resolved before the kernels see pointers."""
    inp = make_inputs(1, 2, 4, 6, "col", False, "0", C128)
    xc = inp["x"].conj()
    assert xc.is_conj()
    got = fo.normal(xc, inp["S"], inp["M"][:, None], backend="triton")
    assert_rel_close(got, ORACLE("normal")(xc.resolve_conj(), inp["S"], inp["M"]), name="normal(conj x)")


@pytest.mark.parametrize("kind", ["col", "2d"])
def test_opcheck(kind):
    """torch.library.opcheck on the custom ops running the Triton backend (the backward is itself
    the opaque custom op flat_triton::<op>_backward, so AOT autograd can trace it)."""
    inp = make_inputs(1, 2, 3, 6, kind, False, "0", C128)
    r = {n: (inp[n].clone().requires_grad_(True) if n in ("x", "S", "dt", "ahy", "k") else inp[n]) for n in inp}
    M = inp["M"]
    torch.library.opcheck(torch.ops.flat.flow_step.default,
                          (r["x"], r["v"], r["y"], r["S"], M, r["dt"], r["lam"], None, "triton"))
    torch.library.opcheck(torch.ops.flat.flow_step.default,
                          (r["x"], r["v"], None, r["S"], M, r["dt"], r["lam"], r["ahy"], "triton"))
    torch.library.opcheck(torch.ops.flat.kspace_flow_step.default,
                          (r["k"], r["x"], r["y"], r["S"], M, r["dt"], r["lam"], "triton"))


def test_compile_three_steps_one_frame():
    """torch.compile(fullgraph=True) over three flow steps with changing dt: one compiled frame,
    forward and gradient equal to eager (the Triton backward traced as a custom op)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    inp = make_inputs(1, 2, 4, 6, "col", False, "0", C128)

    def loop(x, S, dts):
        for dt in dts:
            x = fo.flow_step(x, inp["v"], inp["y"], S, inp["M"][:, None], dt, inp["lam"], backend="triton")
        return x

    cnt = CompileCounterWithBackend("inductor")
    torch._dynamo.reset()
    compiled = torch.compile(loop, backend=cnt, fullgraph=True)
    frames = []
    for vals in ((0.1, 0.2, 0.3), (0.5, 0.25, 0.125)):
        dts = [torch.tensor(v, dtype=torch.float64) for v in vals]
        x = inp["x"].clone().requires_grad_(True)
        S = inp["S"].clone().requires_grad_(True)
        out = compiled(x, S, dts)
        gx, gS = torch.autograd.grad(out.abs().pow(2).sum(), (x, S))
        x2 = inp["x"].clone().requires_grad_(True)
        S2 = inp["S"].clone().requires_grad_(True)
        want = loop(x2, S2, dts)
        wx, wS = torch.autograd.grad(want.abs().pow(2).sum(), (x2, S2))
        assert_rel_close(out, want, name="compiled forward")
        assert_rel_close(gx, wx, name="compiled grad x")
        assert_rel_close(gS, wS, name="compiled grad S")
        frames.append(cnt.frame_count)
    # With a cold inductor cache torch 2.13 also counts one empty frame (`def forward(self): pass`,
    # seen with the reference backend too), so count the graphs that hold the ops.
    real = [g for g in cnt.graphs if "flow_step" in g.code]
    assert len(real) == 1, f"{len(real)} compiled graphs with the flow steps"
    assert frames[1] == frames[0], f"new dt values recompiled: frames {frames}"


def test_kernels_compile_for_sm90():
    """The real compiler (not the interpreter) accepts the kernels: compile representative variants
    for sm_90 with Triton's bundled ptxas, in a subprocess without TRITON_INTERPRET (aot_check.py).
    Shared memory must fit an H100 (227 KB) and nothing may spill: the 2-D path's kernels
    (complex64) and the row kernels (monarch.py) at the opt-in tf32 precision, which the model of
    tests/test_kernel_resources.py does not compile."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    select = ["expand c64", "mid c64", "reduce c64", "bwd2d c64", "kspace c64", "kbwd c64", "c64 tf32 knee"]
    code = ("import json; from flat_kernels.triton.aot_check import compile_report; "
            f"print('ROWS' + json.dumps(compile_report(90, {select!r})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("ROWS")]
    assert res.returncode == 0 and line, res.stderr[-3000:]
    rows = json.loads(line[0][4:])
    assert sorted(r["kernel"] for r in rows) == sorted(
        [f"{k} c64" for k in ("expand", "mid", "reduce", "bwd2d", "kspace", "kbwd")]
        + [f"monarch.{k} c64 tf32 knee" for k in ("row_fwd", "row_bwd.1", "row_bwd.2", "row_bwd.3")]), rows
    for r in rows:
        assert r["ok"], r
        assert r["stack"] == 0, f"{r['kernel']} spills {r['stack']} bytes"


# ---------------------------------------------------------------- GPU (marker gpu; skipped without CUDA)
GPU_SIZES = [
    pytest.param(1, 15, 640, 368, id="knee-B1"),
    pytest.param(8, 15, 640, 368, id="knee-B8"),
    pytest.param(1, 4, 640, 320, id="brain4-B1"),
    pytest.param(2, 20, 640, 320, id="brain20-B2"),
]


def _gpu_inputs(B, C, H, W, kind, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rd = REAL[dtype]

    def c(*s):
        return torch.randn(*s, dtype=dtype, device="cuda", generator=g)

    if kind == "col":
        M = (torch.rand(1, 1, W, device="cuda", generator=g) < 0.25).to(rd)
        M[..., W // 2 - 13: W // 2 + 13] = 1  # ~8 % ACS
    else:
        M = (torch.rand(1, H, W, device="cuda", generator=g) < 0.25).to(rd)
    S = c(B, C, H, W)
    S = S / S.abs().pow(2).sum(1, keepdim=True).sqrt()
    return dict(x=c(B, H, W), v=c(B, H, W), y=c(B, C, H, W), S=S, M=M,
                dt=torch.full((B,), 0.2, dtype=rd, device="cuda"), lam=torch.tensor(3.0, dtype=rd, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["col", "2d"])
@pytest.mark.parametrize("B,C,H,W", GPU_SIZES)
def test_gpu_parity_real_sizes(B, C, H, W, kind):
    """Knee/brain sizes, fresh inputs: Triton complex64 (default tf32x3) and complex128 vs the
    reference in complex128, forward and the gradients of x, S, dt, lam."""
    for dtype, seed in ((C64, 1), (C128, 2)):
        inp = _gpu_inputs(B, C, H, W, kind, dtype, seed)
        inp128 = {k: (v.to(C128) if v.is_complex() else v.double()) for k, v in inp.items()}
        names = ("x", "v", "y", "S", "M", "dt", "lam", None)
        got = _call("flow_step", _args(inp, names), "triton")
        want = _call("flow_step", _args(inp128, names), "reference")
        assert_rel_close(got, want, dtype=dtype, name=f"flow_step {dtype}")
        for op, nm in (("normal", ("x", "S", "M")), ("kspace_flow_step", ("y", "x", "y", "S", "M", "dt", "lam"))):
            assert_rel_close(_call(op, _args(inp, nm), "triton"), _call(op, _args(inp128, nm), "reference"),
                             dtype=dtype, name=f"{op} {dtype}")
        G = torch.randn(B, H, W, dtype=C128, device="cuda")
        gt = _grads("flow_step", inp, names, G, "triton")
        gr = _grads("flow_step", inp128, names, G, "reference")
        for n in ("x", "S", "dt", "lam"):
            assert_rel_close(gt[n], gr[n], dtype=gt[n].dtype, name=f"grad {n} {dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["col", "2d"])
def test_gpu_cuda_graph_changing_dt(kind):
    """Capture three flow steps in a CUDA graph; replay with new dt/lam values copied into the
    static inputs; each replay matches an eager complex128 reference run with those values."""
    B, C, H, W = 1, 15, 640, 368
    inp = _gpu_inputs(B, C, H, W, kind, C64, 3)
    ahy = fo.sense_adjoint(inp["y"], inp["S"], inp["M"][:, None], backend="triton")
    dt = torch.full((B,), 0.1, device="cuda")
    lam = torch.tensor(1.0, device="cuda")

    def steps():
        x = inp["x"]
        for _ in range(3):
            x = fo.flow_step(x, inp["v"], None, inp["S"], inp["M"][:, None], dt, lam, ahy=ahy, backend="triton")
        return x

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up: compiles kernels, fills the DFT-table cache
        steps()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = steps()
    for dt_v, lam_v in ((0.1, 1.0), (0.35, 2.0), (0.05, 10.0)):
        dt.fill_(dt_v)
        lam.fill_(lam_v)
        graph.replay()
        torch.cuda.synchronize()
        x = inp["x"].to(C128)
        a128 = ahy.to(C128)
        for _ in range(3):
            x = fo.flow_step(x, inp["v"].to(C128), None, inp["S"].to(C128), inp["M"][:, None].double(),
                             dt_v, lam_v, ahy=a128, backend="reference")
        assert rel_err(out, x) <= 1e-5, f"graph replay dt={dt_v} lam={lam_v}: {rel_err(out, x):.3g}"


@pytest.mark.gpu
def test_gpu_tf32_is_opt_in_and_bounded():
    """tf32 (opt-in) is measurably less accurate than the default but bounded (~3e-4 per transform)."""
    import flat_kernels.triton as ft

    inp = _gpu_inputs(1, 15, 640, 368, "col", C64, 4)
    inp128 = {k: (v.to(C128) if v.is_complex() else v.double()) for k, v in inp.items()}
    names = ("x", "S", "M")
    want = _call("normal", _args(inp128, names), "reference")
    err3 = rel_err(_call("normal", _args(inp, names), "triton"), want)
    ft.set_precision("tf32")
    try:
        err1 = rel_err(_call("normal", _args(inp, names), "triton"), want)
    finally:
        ft.set_precision("tf32x3")
    assert err3 <= 1e-5 and err1 <= 2e-3, (err3, err1)
