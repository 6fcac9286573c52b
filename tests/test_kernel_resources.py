"""Compiled resources and numerics of the Triton row kernels (flat_kernels/triton/monarch.py), and the
compile-time model (flat_kernels/roofline.py).

The interpreter proves numerics but accepts code the real compiler spills or rejects, so the
shipped row-kernel variants are compiled for sm_90 on the CPU (Triton's bundled ptxas, in a
subprocess without TRITON_INTERPRET) and must report zero spill stores and loads, fit shared
memory, and keep at least one CTA per SM. CI compiles every modelled launch (forward and the
backward's passes, complex64 and complex128, knee and brain) two at a time; ``-m slow`` adds the
other forward flag sets. The Triton 3.6.0 pass of .ci/run runs the same compile under that Triton,
where the complex128 launches have the measured spills of ``KNOWN_SPILLS``.

The parity tests run the factored-DFT kernels under the interpreter against the complex128 oracle
of tests/test_triton.py, at widths W = 16·N2 (N2 = 3, 5, 23 — the knee's 368), plus column masks
of the widths that take the 2-D path instead (odd W = 367, W = 2·101).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from . import oracle  # noqa: E402
from .helpers import RTOL, assert_rel_close, column_mask  # noqa: E402

C64, C128 = torch.complex64, torch.complex128

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile_in_subprocess(code: str, timeout: int = 900) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("ROWS")]
    assert res.returncode == 0 and line, res.stderr[-3000:]
    return json.loads(line[0][4:])


_CODE = """
import json, concurrent.futures as cf
from flat_kernels import roofline as rl
vs = [v for v in rl._triton_variants(quick={quick}) if {select}]
with cf.ProcessPoolExecutor(2) as ex:
    res = list(ex.map(rl._compile_variant, vs))
rows = []
for v, r in zip(vs, res):
    r.pop("sass", None)
    r["label"] = v["label"]
    if "error" not in r:
        r["ctas"] = rl.occupancy(r["regs"], r["threads"], r["shared"])
    rows.append(r)
print("ROWS" + json.dumps(rows))
"""


# Spill bytes (stores, loads) of shipped launches under an older Triton (.ci/run sets
# FLAT_TRITON_COMPAT and shadows the pinned Triton), measured with its bundled ptxas for sm_90.
# Triton 3.6.0 emits the fp64 products as m16n8k16 DMMA (the pinned 3.9: m8n8k4) and the complex128
# forward and backward passes 1–2 then exceed 255 registers in every launch configuration tried
# (flat_kernels/NOTES.md, "Row kernel tiles"). Pinned exactly: any other spill, or a change of
# these, fails; everything not listed must not spill.
KNOWN_SPILLS = {"3.6.0": {
    f"monarch.{k} c128 ieee {wl}": sp for wl in ("knee", "brain")
    for k, sp in (("row_fwd", (152, 172)), ("row_bwd.1", (172, 144)), ("row_bwd.2", (116, 120)))}}


def _check(rows):
    assert rows
    known = KNOWN_SPILLS.get(os.environ.get("FLAT_TRITON_COMPAT", ""), {})
    for r in rows:
        assert "error" not in r, f"{r['label']}: {r.get('error')}"
        assert (r["spill_st"], r["spill_ld"]) == known.get(r["label"], (0, 0)), (
            f"{r['label']}: {r['spill_st']} B spill stores, {r['spill_ld']} B spill loads ({r['regs']} registers)")
        assert r["shared"] <= 227 * 1024, f"{r['label']}: {r['shared']} B shared memory > 227 KB"
        assert r["ctas"] >= 1, f"{r['label']}: no CTA fits an SM ({r['regs']} registers, {r['shared']} B shared)"


# CI: complex64 at knee and brain, complex128 at brain (C = 20, the larger coil count); the slow
# test adds complex128 at knee and the other flag sets (about a minute more on 2 cores).
CI_SELECT = "'c64' in v['label'] or 'brain' in v['label']"


def test_row_kernels_compile_for_sm90_without_spills():
    """The launches the Triton launchers make for knee W = 368 and brain W = 320 (forward and each
    pass of the full backward): no spills, shared memory within 227 KB, at least one CTA per SM."""
    rows = _compile_in_subprocess(_CODE.format(quick=True, select=CI_SELECT))
    kinds = {r["label"].split()[0] for r in rows}
    assert kinds == {"monarch.row_fwd", "monarch.row_bwd.1", "monarch.row_bwd.2", "monarch.row_bwd.3"}, kinds
    assert {tuple(r["label"].split()[1::2]) for r in rows} == {("c64", "knee"), ("c64", "brain"), ("c128", "brain")}
    _check(rows)


@pytest.mark.slow
def test_every_row_variant_compiles_for_sm90_without_spills():
    """Every flag set (Aᴴy from y, normal), knee and brain."""
    _check(_compile_in_subprocess(_CODE.format(quick=False, select="True")))


def test_sass_loop_counter_on_a_known_kernel():
    """The model's SASS reader: loops are backward branches, nesting is counted, tensor-core
    instructions carry their shapes' flops (one HMMA.1688 = 2·16·8·8)."""
    from flat_kernels import roofline as rl

    sass = """
        .text.k:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   HMMA.1688.F32.TF32 R4, R8, R12, R4 ;
.L_x_0:
        /*0020*/                   FFMA R1, R2, R3, R1 ;
        /*0030*/               @P0 BRA `(.L_x_0) ;
        /*0040*/               @P1 BRA `(.L_x_1) ;
        /*0050*/                   EXIT ;
.L_x_2:
        /*0060*/                   BRA `(.L_x_2);
"""
    funcs = rl.parse_sass(sass)
    c = rl.count_sass(*funcs["k"])
    assert c["loop_depths"] == [1, 2]
    assert c["by_depth"][1]["tf32"] == 2 * 16 * 8 * 8 and c["by_depth"][1]["mma"] == 1
    assert c["by_depth"][2]["fp32"] == 1
    assert c["by_depth"][0]["all"] == 3  # MOV, EXIT and the trap branch after EXIT (not a loop)
    assert c["n_loops"] == 2
    assert rl.occupancy(255, 256, 40 * 1024) == 1 and rl.occupancy(128, 128, 0) == 4


def test_mma_flops_per_sass_opcode():
    """Tensor-core flops per instruction from both spellings nvdisasm uses: digits for HMMA, "x"
    separators for DMMA (m8n8k4 under Triton 3.9, m16n8k16 under 3.6); an unknown shape is refused."""
    from flat_kernels import roofline as rl

    assert rl._mma_flops("HMMA.1688.F32.TF32") == ("tf32", 2.0 * 16 * 8 * 8)
    assert rl._mma_flops("HMMA.16816.F32.BF16") == ("bf16", 2.0 * 16 * 8 * 16)
    assert rl._mma_flops("DMMA.8x8x4") == ("fp64_tc", 2.0 * 8 * 8 * 4)
    assert rl._mma_flops("DMMA.16x8x16") == ("fp64_tc", 2.0 * 16 * 8 * 16)
    with pytest.raises(ValueError, match="HMMA.999"):
        rl._mma_flops("HMMA.999.F32")


# ---------------------------------------------------------------- numerics (interpreter)
# (B, C, H, W, per-sample mask, dt/lam per sample): W = 16·N2 takes monarch.py, others the 2-D path
MONARCH = [
    pytest.param(2, 3, 2, 48, True, True, id="W48-C3"),  # N2 = 3
    pytest.param(1, 3, 2, 80, False, False, id="W80-C3"),  # N2 = 5
    pytest.param(1, 2, 2, 368, True, True, id="W368-C2"),  # the knee width, N2 = 23 (prime)
]
FALLBACK = [
    pytest.param(1, 2, 3, 367, False, False, id="W367-prime"),
    pytest.param(1, 5, 2, 202, True, True, id="W202-2x101"),
]


@pytest.fixture
def poison():
    """Kernel outputs filled with NaN before each launch: an element a kernel skips fails the check."""
    from flat_kernels.triton import _common

    old = _common._POISON["on"]
    _common._POISON["on"] = True
    yield
    _common._POISON["on"] = old


def _inputs(B, C, H, W, per_sample, per_b, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    rd = torch.float32 if dtype == C64 else torch.float64

    def c(*s):
        return torch.randn(*s, dtype=C128, generator=g).to(dtype)

    M = column_mask(B if per_sample else 1, W, frac=0.4, generator=g).reshape(-1, 1, W).to(rd)
    shape = (B,) if per_b else ()
    return dict(x=c(B, H, W), v=c(B, H, W), y=c(B, C, H, W), S=c(B, C, H, W) / C ** 0.5, ahy=c(B, H, W), M=M,
                dt=(torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.1).to(rd),
                lam=(torch.rand(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(rd))


def _to128(t):
    return t.to(C128) if t.is_complex() else t.double()


def test_width_routing():
    """W = 16·N2 takes the factored row kernel; other widths the 2-D path (no row kernel)."""
    from flat_kernels.triton import _ops, monarch

    assert _ops.row_module(368) is monarch and _ops.row_module(320) is monarch and _ops.row_module(48) is monarch
    assert _ops.row_module(367) is None and _ops.row_module(202) is None and _ops.row_module(372) is None
    # the _mt_ kernels (complex64 tf32x3 only) from Triton 3.9 on: 3.6.0 spills them (NOTES.md)
    import triton

    new = tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 9)
    assert monarch.MT_ROW == new
    for kind in ("fwd", "bwd"):
        assert monarch.kernel_name(kind, "fp32", "tf32x3") == (f"_mt_{kind}_kernel" if new else f"_mn_{kind}_kernel")
        assert monarch.kernel_name(kind, "fp32", "ieee") == monarch.kernel_name(kind, "fp64", "ieee") == f"_mn_{kind}_kernel"


@pytest.mark.parametrize("dtype", [C64, C128], ids=["c64", "c128"])
@pytest.mark.parametrize("B,C,H,W,per_sample,per_b", MONARCH + FALLBACK)
def test_row_forward_vs_oracle(B, C, H, W, per_sample, per_b, dtype, poison):
    """flow_step (Aᴴy from y, and precomputed), normal, dc_gradient vs the complex128 oracle."""
    import flat.ops as fo

    i = _inputs(B, C, H, W, per_sample, per_b, dtype)
    o = {k: _to128(v) for k, v in i.items()}
    cases = {
        "flow_step": (fo.flow_step(i["x"], i["v"], i["y"], i["S"], i["M"], i["dt"], i["lam"], backend="triton"),
                      oracle.flow_step(o["x"], o["v"], o["y"], o["S"], o["M"], o["dt"], o["lam"])),
        "flow_step[ahy]": (
            fo.flow_step(i["x"], i["v"], None, i["S"], i["M"], i["dt"], i["lam"], ahy=i["ahy"], backend="triton"),
            oracle.flow_step(o["x"], o["v"], None, o["S"], o["M"], o["dt"], o["lam"], ahy=o["ahy"])),
        "normal": (fo.normal(i["x"], i["S"], i["M"], backend="triton"), oracle.normal(o["x"], o["S"], o["M"])),
        "dc_gradient": (fo.dc_gradient(i["x"], i["y"], i["S"], i["M"], backend="triton"),
                        oracle.dc_gradient(o["x"], o["y"], o["S"], o["M"])),
    }
    for name, (got, want) in cases.items():
        assert got.dtype == dtype
        assert_rel_close(got, want, dtype=dtype, name=f"{name} W={W} vs oracle")


@pytest.mark.parametrize("dtype", [C64, C128], ids=["c64", "c128"])
@pytest.mark.parametrize("B,C,H,W,per_sample,per_b", MONARCH[:1] + MONARCH[2:] + FALLBACK[1:])
def test_row_gradients_vs_oracle(B, C, H, W, per_sample, per_b, dtype, poison):
    """Gradients of x, v, y, S, dt, lam of flow_step through the row backward kernels vs autograd
    through the oracle. dt/lam are reductions over every output element: their error is held to
    the reduction's scale Σ|G|·|∂out/∂θ| (backward error of a dot product), as in test_triton."""
    import flat.ops as fo

    i = _inputs(B, C, H, W, per_sample, per_b, dtype, seed=1)
    G = torch.randn(B, H, W, dtype=C128, generator=torch.Generator().manual_seed(2))
    names = ("x", "v", "y", "S", "dt", "lam")

    def grads(fn, d):
        leaves = {n: d[n].detach().clone().requires_grad_(True) for n in names}
        out = fn(*(leaves[n] for n in names))
        return dict(zip(names, torch.autograd.grad((G.to(out.dtype).conj() * out).real.sum(), list(leaves.values()))))

    got = grads(lambda x, v, y, S, dt, lam: fo.flow_step(x, v, y, S, i["M"], dt, lam, backend="triton"), i)
    o = {k: _to128(v) for k, v in i.items()}
    want = grads(lambda x, v, y, S, dt, lam: oracle.flow_step(x, v, y, S, o["M"], dt, lam), o)
    r = oracle.normal(o["x"], o["S"], o["M"]) - oracle.sense_adjoint(o["y"], o["S"], o["M"])
    per = (lambda t: t.reshape(-1, 1, 1)) if per_b else (lambda t: t)
    terms = {"dt": G.abs() * (o["v"] - per(o["lam"]) * r).abs(), "lam": G.abs() * (per(o["dt"]) * r).abs()}
    for n in names:
        assert got[n].shape == i[n].shape and got[n].dtype == i[n].dtype, n
        if n in ("dt", "lam"):
            scale = terms[n].reshape(B, -1).sum(1) if per_b else terms[n].sum()
            err = ((got[n].double() - want[n]).abs() / scale).max().item()
            assert err <= RTOL[dtype], f"grad {n} W={W}: error {err:.3g} of the reduction's scale"
        else:
            assert_rel_close(got[n], want[n], dtype=got[n].dtype, name=f"grad {n} W={W} vs oracle")


def test_factored_dft_tables():
    """monarch.tables: planes [re, im], zero padding beyond N2, and F16, twiddle, F_N2 compose
    to the orthonormal W-point DFT (X[k1 + 16·k2] from z[N2·n1 + n2])."""
    import numpy as np

    from flat_kernels.triton import monarch

    W, N2 = 368, 23
    f1, f2, twr, twi = (t.numpy() for t in monarch.tables(W, torch.float64, torch.device("cpu")))
    assert f1.shape == (2, 16, 16) and f2.shape == (2, 32, 32) and twr.shape == (32, 16)
    assert not f2[:, N2:, :].any() and not f2[:, :, N2:].any() and not twr[N2:].any()
    z = np.random.default_rng(1).standard_normal(W) + 1j * np.random.default_rng(2).standard_normal(W)
    F1 = f1[0] + 1j * f1[1]
    F2 = (f2[0] + 1j * f2[1])[:N2, :N2]
    tw = (twr + 1j * twi)[:N2]
    Y = (z.reshape(16, N2).T @ F1) * tw  # [n2, k1]
    X = (Y.T @ F2)  # [k1, k2]
    got = X.T.reshape(-1)  # k = k1 + 16·k2
    assert np.abs(got - np.fft.fft(z, norm="ortho")).max() <= 1e-13


def test_split_tables():
    """monarch.split_tables: Gauss planes (Tr, Ti − Tr, −(Tr + Ti)) of the float64 tables, each as
    hi + lo with both halves tf32 values (low 13 mantissa bits zero) summing to the plane to 2^-22."""
    import numpy as np

    from flat_kernels.triton import monarch

    W = 368
    f1, f2, twr, twi = (t.numpy() for t in monarch.tables(W, torch.float64, torch.device("cpu")))
    g1, g2, tr, ti = (t.numpy() for t in monarch.split_tables(W, torch.device("cpu")))
    assert np.array_equal(tr, twr.astype(np.float32)) and np.array_equal(ti, twi.astype(np.float32))
    for f, g in ((f1, g1), (f2, g2)):
        want = np.stack([f[0], f[1] - f[0], -(f[0] + f[1])])
        assert g.shape == (6,) + f.shape[1:] and g.dtype == np.float32
        assert not (g.view(np.uint32) & np.uint32(0x1FFF)).any()
        got = g[0::2].astype(np.float64) + g[1::2]
        assert (np.abs(got - want) <= 2.0 ** -21 * np.abs(want)).all()  # 11 + 11 significant bits
        assert np.abs(g[1::2]).max() <= 2.0 ** -11 * np.abs(want).max()  # hi rounded to nearest


# ---------------------------------------------------------------- tf32x3 error, emulated in numpy
def _tf32(a):
    """Round float32 to tf32 (10 explicit mantissa bits, round to nearest) as cvt.rna.tf32.f32."""
    import numpy as np

    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def _trunc(a):
    """float32 with the low 13 mantissa bits cleared: what an mma .tf32 operand keeps of an fp32 value."""
    import numpy as np

    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return (u & np.uint32(0xFFFFE000)).view(np.float32)


def _gauss_split_cmm(x, F, conj):
    """monarch._gmm emulated: Gauss' three products with the table planes (Fr, Fi − Fr, −(Fr + Fi))
    pre-split in float64 as monarch._hi_lo does, the data split as monarch._split does (hi rounded to
    tf32, the remainder truncated by the tensor cores), each product a_lo·b_hi + a_hi·b_lo + a_hi·b_hi
    with fp32 accumulation."""
    import numpy as np

    def planes(p):
        hi = _tf32(p.astype(np.float32))
        return hi, _tf32((p - hi.astype(np.float64)).astype(np.float32))

    def dot3(a, pl, acc):
        a = a.astype(np.float32)
        ah = _tf32(a)
        al = _trunc(a - ah)  # the tensor cores truncate the fp32 remainder
        bh, bl = pl
        return ((acc + al @ bh) + ah @ bl) + ah @ bh

    P0, P1, P2 = planes(F.real), planes(F.imag - F.real), planes(-(F.real + F.imag))
    xr, xi = x.real.astype(np.float32), x.imag.astype(np.float32)
    t1 = dot3(xr + xi, P0, np.float32(0))
    re, im = (dot3(xi, P1, t1), dot3(xr, P2, t1)) if conj else (dot3(xi, P2, t1), dot3(xr, P1, t1))
    return (re + 1j * im).astype(np.complex64)


def _dot(a, b, mode):
    """tl.dot on the tensor cores, emulated: operands rounded to tf32, products accumulated in fp32.
    tf32x3 = a_hi·b_lo + a_lo·b_hi + a_hi·b_hi (Triton's split)."""
    import numpy as np

    a, b = a.astype(np.float32), b.astype(np.float32)
    if mode == "tf32":
        return _tf32(a) @ _tf32(b)
    ah, bh = _tf32(a), _tf32(b)
    al, bl = _tf32(a - ah), _tf32(b - bh)
    return (ah @ bl + al @ bh) + ah @ bh


def _project_emulated(z, m, mode):
    """monarch._project on rows z (R, W), W = 16·N2, with every tl.dot emulated (numpy float32);
    mode "gauss-split" is monarch._project_t's arithmetic (the same products, transposed tiles)."""
    import numpy as np

    R, W = z.shape
    N2 = W // 16
    a = np.arange(16)
    b = np.arange(N2)
    F1 = np.exp(-2j * np.pi * np.outer(a, a) / 16) / 4
    F2 = np.exp(-2j * np.pi * np.outer(b, b) / N2) / np.sqrt(N2)
    tw = np.exp(-2j * np.pi * np.outer(b, a) / W)  # (n2, k1)

    def cmm(x, F, conj):
        if mode == "gauss-split":
            return _gauss_split_cmm(x, F, conj)
        Fr, Fi = F.real, (-F.imag if conj else F.imag)
        re = _dot(x.real, Fr, mode) - _dot(x.imag, Fi, mode)
        im = _dot(x.real, Fi, mode) + _dot(x.imag, Fr, mode)
        return (re + 1j * im).astype(np.complex64)

    t = z.reshape(R, 16, N2).transpose(0, 2, 1).reshape(R * N2, 16)  # [(r, n2), n1]
    y = cmm(t, F1, False).reshape(R, N2, 16) * tw.astype(np.complex64)  # [(r, n2), k1]
    u = y.transpose(0, 2, 1).reshape(R * 16, N2)  # [(r, k1), n2]
    x = cmm(u, F2, False).reshape(R, 16, N2)  # X[k1 + 16 k2]
    k = a[:, None] + 16 * b[None, :]
    x = x * m[(k + W // 2) % W].astype(np.float32)
    u = cmm(x.reshape(R * 16, N2), F2, True).reshape(R, 16, N2).transpose(0, 2, 1)  # [(r, n2), k1]
    y = (u * np.conj(tw).astype(np.complex64)).reshape(R * N2, 16)
    return cmm(y, F1, True).reshape(R, N2, 16).transpose(0, 2, 1).reshape(R, W)


@pytest.mark.parametrize("W", [368, 320])
def test_factored_projection_tf32x3_error_emulated(W):
    """The interpreter runs tl.dot in exact fp32, so the tensor-core rounding of the default
    complex64 precision is emulated here: the factored projector with tf32x3 stays at fp32-level
    error (≤ 1e-6 relative to complex128; measured ≈ 2e-7), and so does the forward's Gauss product
    with the hand split (measured ≈ 2e-7); plain tf32 is ~1e-3 (why it is opt-in)."""
    import numpy as np

    rng = np.random.default_rng(0)
    z = (rng.standard_normal((8, W)) + 1j * rng.standard_normal((8, W))).astype(np.complex64)
    m = (rng.random(W) < 0.25).astype(np.float64)
    m[W // 2 - 13: W // 2 + 13] = 1
    Fz = np.fft.fft(z.astype(np.complex128), axis=-1, norm="ortho")
    want = np.fft.ifft(np.fft.ifftshift(m) * Fz, axis=-1, norm="ortho")
    err = {mode: np.linalg.norm(_project_emulated(z, m, mode) - want) / np.linalg.norm(want)
           for mode in ("tf32x3", "tf32", "gauss-split")}
    assert err["tf32x3"] <= 1e-6, err
    assert err["gauss-split"] <= 1e-6, err  # the complex64 forward's hand split (_mt_fwd_kernel)
    assert err["tf32"] >= 1e-4, err  # the emulation does round: tf32 alone is visibly worse
