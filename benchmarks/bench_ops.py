"""Throughput and memory of the data-consistency ops, every variant against the reference path.

Ops: ``flow_step`` (with Aᴴy precomputed, as the model calls it), ``normal`` and
``kspace_flow_step``; forward, and forward+backward (gradients for the state and the update).

Variants
--------
reference  ``flat.ops.<op>(..., backend="reference")``: the public op, algebraic form (docs/operators.md, the column-mask identity)
compile    ``torch.compile(flat.ops.reference.<op>, fullgraph=True)``: the same math traced by
           Inductor (compiled once per case; compile time excluded, reported as ``compile_s``)
literal    the fastMRI-style form on complex tensors: fftshift-based fft2c/ifft2c, the 2-D
           transform for every mask, Aᴴ(Ax − y) in one pass so Aᴴy is recomputed every step:
           x + dt·(v − lam·Σ_c conj(S_c)·ifft2c(M·(fft2c(S_c·x) − y_c)))  
fastmri    the same, written as fastMRI writes it: real layout (..., 2), roll-by-cat shifts,
           complex_mul on real pairs (fastmri.fft2c / complex_mul / VarNet sens_expand/reduce)
triton     ``backend="triton"`` on CUDA tensors (skipped on the CPU: only the interpreter runs there)
cupy       ``backend="cupy"`` (CUDA only)

Every variant's output (and gradients) are checked against the reference before timing: a fast
wrong answer is not a result.
"""
from __future__ import annotations

import time

import pytest
import torch

import workloads as W

fo = pytest.importorskip("flat.ops", reason="flat.ops is not importable")
from flat.ops import reference as R  # noqa: E402
from flat.ops.backends import implemented_ops, unavailable_reason  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    # Inductor falls back to eager kernels for complex ops; that fallback is what we measure.
    "ignore:Torchinductor does not support code generation for complex operators"
)

VARIANTS = ("reference", "compile", "literal", "fastmri", "triton", "cupy")
CHECK_RTOL = 1e-4  # complex64 variants vs the complex64 reference: FFT rounding is ~1e-6


# ---------------------------------------------------------------- literal forms (complex tensors)
_fft2c, _ifft2c = R.fft2c, R.ifft2c  # the literal fftshift form of fastMRI's fft2c/ifft2c


def literal_normal(x, S, M4):
    return (S.conj() * _ifft2c(M4 * _fft2c(S * x[:, None]))).sum(1)


def literal_flow_step(x, v, y, S, M4, dt, lam):
    r = (S.conj() * _ifft2c(M4 * (_fft2c(S * x[:, None]) - y))).sum(1)  # Aᴴ(Ax − y), Aᴴy recomputed
    return x + dt * (v - lam * r)


def literal_kspace_flow_step(k, z, y, S, M4, dt, lam):
    return k - dt * lam * M4 * (k - y) + dt * _fft2c(S * z[:, None])


# ---------------------------------------------------------------- fastMRI's own formulation (real layout)
def _fm_roll_one_dim(x, shift, dim):
    shift = shift % x.size(dim)
    if shift == 0:
        return x
    left = x.narrow(dim, 0, x.size(dim) - shift)
    right = x.narrow(dim, x.size(dim) - shift, shift)
    return torch.cat((right, left), dim=dim)


def _fm_fftshift(x, dims):
    for d in dims:
        x = _fm_roll_one_dim(x, x.shape[d] // 2, d)
    return x


def _fm_ifftshift(x, dims):
    for d in dims:
        x = _fm_roll_one_dim(x, (x.shape[d] + 1) // 2, d)
    return x


def _fm_fft2c(data, inverse=False):
    data = _fm_ifftshift(data, (-3, -2))
    f = torch.fft.ifftn if inverse else torch.fft.fftn
    data = torch.view_as_real(f(torch.view_as_complex(data), dim=(-2, -1), norm="ortho"))
    return _fm_fftshift(data, (-3, -2))


def _fm_mul(x, y):
    re = x[..., 0] * y[..., 0] - x[..., 1] * y[..., 1]
    im = x[..., 0] * y[..., 1] + x[..., 1] * y[..., 0]
    return torch.stack((re, im), dim=-1)


def _fm_conj(x):
    return torch.stack((x[..., 0], -x[..., 1]), dim=-1)


def _fm_expand(x, S):  # (B, 1, H, W, 2), (B, C, H, W, 2) -> coil k-space
    return _fm_fft2c(_fm_mul(x, S))


def _fm_reduce(k, S):  # -> (B, 1, H, W, 2)
    return _fm_mul(_fm_fft2c(k, inverse=True), _fm_conj(S)).sum(dim=1, keepdim=True)


def fastmri_normal(x, S, M5):
    return _fm_reduce(M5 * _fm_expand(x, S), S)


def fastmri_flow_step(x, v, y, S, M5, dt, lam):
    return x + dt * (v - lam * _fm_reduce(M5 * (_fm_expand(x, S) - y), S))


def fastmri_kspace_flow_step(k, z, y, S, M5, dt, lam):
    return k - dt * lam * M5 * (k - y) + dt * _fm_expand(z, S)


# ---------------------------------------------------------------- one callable per (op, mode, variant, input set)
_GRAD_ARGS = {"flow_step": ("image", "velocity"), "normal": ("image",), "kspace_flow_step": ("kstate", "image_update")}


def _canon_mask(t, wl):
    """The (Bm, Hm, W) mask the backend implementations take (see flat.backends)."""
    return t["mask"].reshape(wl.B, 1, wl.W) if wl.mask == "column" else t["mask"][:, 0]


def _real_img(x):  # (B, H, W) complex -> fastMRI's (B, 1, H, W, 2)
    return torch.view_as_real(x)[:, None]


def _build(op, mode, variant, t, wl, compiled=None):
    """(zero-arg callable, function mapping its result to complex tensors for checking)."""
    grads = mode == "fwd+bwd"
    names = _GRAD_ARGS[op]
    fm = variant == "fastmri"
    leaves = {}
    for n in names:
        v = t[n]
        if fm:
            v = (_real_img(v) if v.ndim == 3 else torch.view_as_real(v)).clone()
        leaves[n] = v.detach().clone().requires_grad_(grads)
    a = {**t, **leaves}
    if fm:
        for n in ("velocity", "image_update", "image", "ahy"):
            if n not in leaves:
                a[n] = _real_img(t[n])
        for n in ("kspace", "sens", "kstate"):
            if n not in leaves:
                a[n] = torch.view_as_real(t[n])
        a["mask5"] = t["mask4"][..., None]
    dt, lam = t["dt"], t["lam"]
    m = _canon_mask(t, wl)

    if variant in ("reference", "triton", "cupy"):
        be = variant
        fwd = {
            "flow_step": lambda: fo.flow_step(a["image"], a["velocity"], None, a["sens"], a["mask"], dt, lam,
                                              ahy=a["ahy"], backend=be),
            "normal": lambda: fo.normal(a["image"], a["sens"], a["mask"], backend=be),
            "kspace_flow_step": lambda: fo.kspace_flow_step(a["kstate"], a["image_update"], a["kspace"], a["sens"],
                                                            a["mask"], dt, lam, backend=be),
        }[op]
    elif variant == "compile":
        fwd = {
            "flow_step": lambda: compiled(a["image"], a["velocity"], None, a["sens"], m, dt, lam, a["ahy"]),
            "normal": lambda: compiled(a["image"], a["sens"], m),
            "kspace_flow_step": lambda: compiled(a["kstate"], a["image_update"], a["kspace"], a["sens"], m, dt, lam),
        }[op]
    elif variant == "literal":
        M4 = t["mask4"]
        fwd = {
            "flow_step": lambda: literal_flow_step(a["image"], a["velocity"], a["kspace"], a["sens"], M4, dt, lam),
            "normal": lambda: literal_normal(a["image"], a["sens"], M4),
            "kspace_flow_step": lambda: literal_kspace_flow_step(a["kstate"], a["image_update"], a["kspace"],
                                                                 a["sens"], M4, dt, lam),
        }[op]
    elif variant == "fastmri":
        M5 = a["mask5"]
        fwd = {
            "flow_step": lambda: fastmri_flow_step(a["image"], a["velocity"], a["kspace"], a["sens"], M5, dt, lam),
            "normal": lambda: fastmri_normal(a["image"], a["sens"], M5),
            "kspace_flow_step": lambda: fastmri_kspace_flow_step(a["kstate"], a["image_update"], a["kspace"],
                                                                 a["sens"], M5, dt, lam),
        }[op]
    else:
        raise ValueError(variant)

    def to_complex(x):
        if not fm:
            return x
        x = torch.view_as_complex(x.contiguous())
        return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 and op != "kspace_flow_step" else x

    if not grads:
        return fwd, lambda out: (to_complex(out),)
    g_name = "grad_kspace" if op == "kspace_flow_step" else "grad_image"
    g = t[g_name]
    if fm:
        g = torch.view_as_real(g) if g.ndim == 4 else _real_img(g)
    inputs = [leaves[n] for n in names]

    def fwd_bwd():
        return torch.autograd.grad(fwd(), inputs, g)

    def unpack(gs):
        out = []
        for n, gr in zip(names, gs):
            c = to_complex(gr)
            out.append(c[:, 0] if fm and c.ndim == 4 and t[n].ndim == 3 else c)
        return tuple(out)

    return fwd_bwd, unpack


def _rel_err(got, want):
    return float((got - want).abs().norm() / want.abs().norm().clamp_min(1e-30))


# ---------------------------------------------------------------- inputs, cached per workload
_CACHE: dict = {}


def _input_sets(bench, wl):
    key = (wl, bench.device.type)
    if key not in _CACHE:
        _CACHE.clear()  # keep one workload resident (GPU sizes are large)
        first = W.make_inputs(wl, bench.device, seed=0)
        n = bench.n_sets(W.set_bytes(first))
        _CACHE[key] = [first] + [W.make_inputs(wl, bench.device, seed=i) for i in range(1, n)]
    return _CACHE[key]


def _cases():
    out = []
    for wl in W.grid(W.bench_device()):
        for op in W.OPS:
            for mode in W.MODES:
                for variant in VARIANTS:  # reference first: speedups are filled in as we go
                    out.append(pytest.param(wl, op, mode, variant, id=f"{op}-{mode}-{wl.name}-{wl.shape}-{variant}"))
    return out


@pytest.mark.parametrize("wl,op,mode,variant", _cases())
def test_op(bench, wl, op, mode, variant):
    key = dict(op=op, mode=mode, variant=variant, shape=wl.shape)
    dev = bench.device.type
    note = None
    if variant in ("triton", "cupy"):
        reason = unavailable_reason(variant, dev)
        if reason is None and dev == "cpu":
            reason = ("Triton on CPU tensors only runs under TRITON_INTERPRET=1, a correctness tool; "
                      "the interpreter is not benchmarked")
        if reason is not None:
            bench.skip(f"{variant}: {reason}", **key)
        # A backend runs ops it does not implement on the reference path: timing that would
        # only re-measure the reference under another name.
        done = implemented_ops(variant)
        if op not in done:
            bench.skip(f"{variant}: does not implement {op} (falls back to the reference path)", **key)
        if mode == "fwd+bwd" and op + "_backward" not in done:  # still timed: the forward is its own
            note = f"{op}_backward runs on the reference path"

    sets = _input_sets(bench, wl)
    extra = {"workload": wl.name, "B": wl.B, "C": wl.C, "H": wl.H, "W": wl.W, "mask": wl.mask,
             "sampled_fraction": W.sampled_fraction(sets[0]["mask"])}
    if note:
        extra["note"] = note
    compiled = None
    if variant == "compile":
        torch._dynamo.reset()  # one compiled graph per case; keeps clear of the recompile limit
        compiled = torch.compile(getattr(R, op), fullgraph=True, dynamic=False)
    calls = []
    for i, t in enumerate(sets):
        fn, unpack = _build(op, mode, variant, t, wl, compiled)
        if i == 0:
            t0 = time.perf_counter()
            got = unpack(fn())
            if dev == "cuda":
                torch.cuda.synchronize()
            if variant == "compile":
                extra["compile_s"] = time.perf_counter() - t0
            ref_fn, ref_unpack = _build(op, mode, "reference", t, wl)
            want = ref_unpack(ref_fn())
            errs = [_rel_err(gx, wx) for gx, wx in zip(got, want)]
            extra["rel_err_vs_reference"] = max(errs)
            assert max(errs) <= CHECK_RTOL, f"{variant} disagrees with the reference: rel errors {errs}"
        calls.append(fn)

    floor = W.floor_bytes(op, mode, wl, extra["sampled_fraction"])
    bench.run(calls, floor_bytes=floor, extra=extra, **key)
