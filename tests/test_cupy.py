"""The CuPy backend (flat_kernels/cupy): CPU checks here, device checks under the ``gpu`` marker.

CPU (every CI run)
  * ``import flat; import flat.ops`` (and a refused ``backend="cupy"`` call) leave CuPy unimported;
    ``backend="cupy"`` on a CPU machine raises BackendUnavailableError saying why (one subprocess).
  * The kernels of ``flat_kernels/cuda/dc_fused.cu`` are compiled **for the host** with g++ through a
    tiny shim (``__global__`` -> plain function, a 1x1x1 grid: every kernel is a grid-stride loop),
    and the backend's own orchestration (``flat_kernels/cupy/_engine.py``) drives them with
    ``numpy.fft`` standing in for cuFFT (in place, unscaled, exactly the cuFFT contract). Every op and
    backward is compared with the reference (complex128), outputs poisoned with NaN so that an
    unwritten element fails. This checks the kernels' index arithmetic (shifts, odd sizes, mask
    broadcasting, per-batch dt/lam), the scales and the backward formulas without a GPU; it does not
    check NVRTC, cuFFT or the CuPy/torch glue, which the ``gpu`` tests below do.

GPU (marker ``gpu``; skipped without CUDA; run by .github/workflows/gpu.yml and scripts/gpu_check.sh)
  * every op and gradient against the reference in complex128 and complex64, small sizes and the
    real knee (15x640x368) / brain (4-20 x 640x320) sizes, B in {1, 8}, column and 2-D masks;
  * against the Triton backend when it is available; gradcheck in complex128;
  * torch's current stream is honoured (side stream), CUDA-graph capture and replay with changing dt/lam.
"""
from __future__ import annotations

import ctypes
import importlib.util
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import flat.ops.reference as ref
from flat.ops.table import OPS
from tests.helpers import RTOL, assert_rel_close, call_public, random_sens, variant_label

ROOT = pathlib.Path(__file__).resolve().parent.parent
CU = ROOT / "flat_kernels" / "cuda" / "dc_fused.cu"
ENGINE_PY = ROOT / "flat_kernels" / "cupy" / "_engine.py"


# ====================================================================== CPU: lazy import, refusal
def _run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cupy_is_imported_lazily_and_refused_without_a_gpu():
    """`import flat, flat.ops` leaves CuPy out; on a CPU machine backend="cupy" refuses, saying why."""
    r = _run_py(
        """
        import sys, torch
        import flat, flat.ops as fo, flat.backends
        from flat.backends import BackendUnavailableError
        fo.available_backends()
        bad = sorted(m for m in sys.modules if m == "cupy" or m.startswith(("cupy.", "cupyx")))
        assert not bad, f"importing flat imported {bad}"
        assert "flat_kernels.cupy" not in sys.modules
        print("IMPORT-OK")
        if torch.cuda.is_available():
            raise SystemExit(0)  # the refusal is for machines without a GPU
        x = torch.randn(1, 4, 6, dtype=torch.complex64)
        S = torch.randn(1, 2, 4, 6, dtype=torch.complex64)
        m = torch.ones(6)
        try:
            fo.normal(x, S, m, backend="cupy")
        except BackendUnavailableError as e:
            print("REASON:", e)
        else:
            raise SystemExit("backend='cupy' ran on a CPU machine")
        try:
            with fo.use_backend("cupy"):
                fo.flow_step(x, x, None, S, m, 0.1, 1.0, ahy=x)
        except BackendUnavailableError as e:
            print("REASON:", e)
        else:
            raise SystemExit("use_backend('cupy') ran on a CPU machine")
        assert "cupy" not in sys.modules and "flat_kernels.cupy" not in sys.modules, "refusal imported cupy"
        """
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "IMPORT-OK" in r.stdout
    if torch.cuda.is_available():
        return
    reasons = [line for line in r.stdout.splitlines() if line.startswith("REASON")]
    assert len(reasons) == 2, r.stdout
    for line in reasons:
        assert "'cupy'" in line and "unavailable" in line, line
        # the reason names what is missing: the package, or a CUDA GPU / CUDA tensors
        assert "not installed" in line or "CUDA" in line, line


# ====================================================================== CPU: host-compiled kernels
_SHIM = r"""
// Host shim: the CUDA kernels as plain C++ functions. The launch geometry is a set of globals that
// the test sets before each call; calling a kernel once per (block, thread) of a grid executes that
// grid sequentially, which is exact for these kernels (no shared memory, no inter-thread traffic,
// every output element owned by one thread).
#include <cstddef>
struct flat_sim_dim3 { unsigned int x, y, z; };
static flat_sim_dim3 threadIdx = {0u, 0u, 0u};
static flat_sim_dim3 blockIdx = {0u, 0u, 0u};
static flat_sim_dim3 blockDim = {1u, 1u, 1u};
static flat_sim_dim3 gridDim = {1u, 1u, 1u};
extern "C" void flat_sim_set(unsigned gx, unsigned gy, unsigned bx, unsigned bix, unsigned biy, unsigned tix) {
    gridDim.x = gx; gridDim.y = gy; blockDim.x = bx;
    blockIdx.x = bix; blockIdx.y = biy; threadIdx.x = tix;
}
#define __global__
#define __device__
#define __forceinline__ inline
"""


def _load_engine_module():
    # Loaded by path: importing the package flat_kernels.cupy would import CuPy.
    spec = importlib.util.spec_from_file_location("flat_cupy_engine_under_test", ENGINE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ENGINE_CLASS = _load_engine_module().Engine


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++/clang++) to build the kernels for the CPU check")
    d = tmp_path_factory.mktemp("cuhost")
    (d / "shim.h").write_text(_SHIM)
    src = d / "kernels.cpp"
    src.write_text(f'#include "shim.h"\n#include "{CU}"\n')
    so = d / "libflatkernels.so"
    r = subprocess.run([cxx, "-std=c++14", "-O1", "-Wall", "-Werror", "-fPIC", "-shared", str(src), "-o", str(so)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"host build of {CU.name} failed:\n{r.stderr}"
    return ctypes.CDLL(str(so))


class NumpyRuntime:
    """The engine's runtime contract on the CPU: numpy.fft in place of cuFFT, host-built kernels."""

    xp = np

    def __init__(self, lib, signatures, grid=(1, 1), block=1):
        self.lib = lib
        self.sigs = signatures
        self.grid, self.block = grid, block  # emulated launch geometry (each thread run in turn)
        self.launched = []

    def empty(self, shape, dtype):
        return np.full(tuple(shape), np.nan, dtype=dtype)  # poisoned: unwritten elements fail

    def fft(self, buf, axes, inverse):
        assert buf.flags.c_contiguous and buf.dtype in (np.complex64, np.complex128)
        assert tuple(axes) in ((-1,), (-2, -1))
        out = np.fft.ifftn(buf, axes=axes, norm="forward") if inverse else np.fft.fftn(buf, axes=axes, norm="backward")
        assert out.dtype == buf.dtype
        buf[...] = out

    def launch(self, name, dtype, B, HW, args):
        dtype = np.dtype(dtype)
        suffix, real, creal = {
            np.dtype(np.complex64): ("c64", np.float32, ctypes.c_float),
            np.dtype(np.complex128): ("c128", np.float64, ctypes.c_double),
        }[dtype]
        assert [k for k, _ in args] == [k for _, k in self.sigs[name]]
        cargs = []
        for (pname, kind), (_, v) in zip(self.sigs[name], args):
            if kind in ("ptr", "rptr"):
                if v is None:
                    cargs.append(ctypes.c_void_p(None))
                    continue
                assert isinstance(v, np.ndarray) and v.flags.c_contiguous, f"{name}.{pname}: not a C-contiguous array"
                want = dtype if kind == "ptr" else np.dtype(real)
                assert v.dtype == want, f"{name}.{pname}: dtype {v.dtype}, kernel expects {want}"
                cargs.append(ctypes.c_void_p(v.ctypes.data))
            elif kind == "int":
                cargs.append(ctypes.c_int(int(v)))
            else:
                cargs.append(creal(float(v)))
        fn = getattr(self.lib, f"flat_{name}_{suffix}")
        fn.restype = None
        (gx, gy), bx = self.grid, self.block
        for biy in range(gy):
            for bix in range(gx):
                for tix in range(bx):
                    self.lib.flat_sim_set(gx, gy, bx, bix, biy, tix)
                    fn(*cargs)
        self.launched.append(name)


@pytest.fixture(scope="module")
def engine(host_lib):
    mod = _load_engine_module()
    return mod.Engine(NumpyRuntime(host_lib, mod.SIGNATURES))


@pytest.fixture(scope="module")
def engine_grid(host_lib):
    """Same, but every launch runs as a 3x1 grid of 4-thread blocks (grid-stride loops exercised:
    fewer threads than pixels, fewer batch blocks than B)."""
    mod = _load_engine_module()
    return mod.Engine(NumpyRuntime(host_lib, mod.SIGNATURES, grid=(3, 1), block=4))


def test_kernel_signatures_match_source():
    """The engine's argument table lists every extern "C" kernel parameter in the source order."""
    mod = _load_engine_module()
    src = CU.read_text()
    assert "FLAT_INSTANTIATE(c64, float)" in src and "FLAT_INSTANTIATE(c128, double)" in src
    for name, sig in mod.SIGNATURES.items():
        assert f"void flat_{name}_##SUF(" in src, f"kernel flat_{name}_<suffix> not in {CU.name}"
        start = src.index(f"void flat_{name}_##SUF(")
        params = src[start:src.index(")", start)].split("(", 1)[1]
        names = [p.replace("\\", " ").split()[-1].strip("*") for p in params.split(",") if p.strip()]
        assert names == [p for p, _ in sig], f"{name}: source {names} vs engine table {[p for p, _ in sig]}"


SIM_SHAPES = [(2, 3, 6, 8), (1, 2, 5, 7), (2, 2, 7, 10)]  # even; odd H and W; odd H, W % 4 == 2
SIM_DTYPES = [torch.complex64, torch.complex128]
SIM_MASKS = ["column", "batch_column", "2d"]


def _inputs(B, C, H, W, dtype, mask_kind, per_batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = lambda *s: torch.randn(*s, dtype=torch.complex128, generator=g)  # noqa: E731
    real = torch.float64
    if mask_kind == "column":
        mask = (torch.rand(1, 1, W, generator=g) < 0.5).to(real)
    elif mask_kind == "batch_column":
        mask = (torch.rand(B, 1, W, generator=g) < 0.5).to(real) * 1.5  # non-binary weights too
    else:
        mask = (torch.rand(B, H, W, generator=g) < 0.4).to(real)
    mask[..., W // 2] = 1.0
    dt = torch.linspace(0.1, 0.3, B, dtype=real) if per_batch else torch.tensor(0.2, dtype=real)
    lam = torch.linspace(2.0, 3.0, B, dtype=real) if per_batch else torch.tensor(2.5, dtype=real)
    d128 = dict(x=c(B, H, W), v=c(B, H, W), ahy=c(B, H, W), g=c(B, H, W), y=c(B, C, H, W), k=c(B, C, H, W),
                gk=c(B, C, H, W), S=random_sens(B, C, H, W, generator=g), mask=mask, dt=dt, lam=lam)
    rdt = torch.float32 if dtype == torch.complex64 else torch.float64
    low = {n: t.to(dtype if t.is_complex() else rdt) for n, t in d128.items()}
    # the oracle sees exactly the (rounded) values the kernels see
    d128 = {n: t.to(torch.complex128 if t.is_complex() else torch.float64) for n, t in low.items()}
    return low, d128


def _np(t):
    return None if t is None else t.contiguous().numpy()


# short names of _inputs for the table's arguments
SHORT = {"image": "x", "velocity": "v", "kspace": "y", "sens": "S", "mask": "mask", "dt": "dt", "lam": "lam",
         "ahy": "ahy", "kstate": "k", "image_update": "x"}
ENGINE_OPS = [spec for spec in OPS if hasattr(ENGINE_CLASS, spec.name)]  # what the CuPy engine implements
BACKWARD_SPECS = [spec for spec in ENGINE_OPS if hasattr(ENGINE_CLASS, spec.name + "_backward")]
BACKWARD_CASES = [variant_label(spec, i) for spec in BACKWARD_SPECS for i in range(len(spec.variants))]


def _forward_calls(d):
    """{label: canonical arguments in table order} for every op and variant the engine implements."""
    return {
        variant_label(spec, i): tuple(None if a.name in variant else d[SHORT[a.name]] for a in spec.args)
        for spec in ENGINE_OPS for i, variant in enumerate(spec.variants)
    }


def _backward_grad(op, d):
    return d["gk"] if op == "kspace_flow_step" else d["g"]


@pytest.mark.parametrize("mask_kind", SIM_MASKS)
@pytest.mark.parametrize("dtype", SIM_DTYPES, ids=["c64", "c128"])
@pytest.mark.parametrize("shape", SIM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_host_kernels_forward_match_reference(engine, shape, dtype, mask_kind):
    low, d128 = _inputs(*shape, dtype, mask_kind, per_batch=(shape[0] > 1))
    calls_low, calls_128 = _forward_calls(low), _forward_calls(d128)
    for name, args in calls_low.items():
        op = name.split("[")[0]
        got = getattr(engine, op)(*(_np(a) for a in args))
        assert got.dtype == np.dtype(str(dtype).split(".")[1]), f"{name}: dtype {got.dtype}"
        want = getattr(ref, op)(*calls_128[name])
        assert_rel_close(torch.from_numpy(np.array(got)), want, dtype=dtype, name=f"{name}")


@pytest.mark.parametrize("mask_kind", SIM_MASKS)
def test_host_kernels_with_a_multi_thread_grid(engine_grid, mask_kind):
    """Every op and backward with a multi-block, multi-thread launch: no element missed or doubled."""
    low, d128 = _inputs(2, 3, 7, 10, torch.complex64, mask_kind, per_batch=True)
    calls_low, calls_128 = _forward_calls(low), _forward_calls(d128)
    for name, args in calls_low.items():
        op = name.split("[")[0]
        got = getattr(engine_grid, op)(*(_np(a) for a in args))
        assert_rel_close(torch.from_numpy(np.array(got)), getattr(ref, op)(*calls_128[name]),
                         dtype=torch.complex64, name=f"grid {name}")
    for name in BACKWARD_CASES:
        op = name.split("[")[0]
        needs = tuple(i != MASK_POS[op] for i in range(NEEDS[op]))
        got = getattr(engine_grid, op + "_backward")(_np(_backward_grad(op, low)),
                                                     tuple(_np(a) for a in calls_low[name]), needs)
        want = getattr(ref, op + "_backward")(_backward_grad(op, d128), calls_128[name], needs)
        for i, (a, b) in enumerate(zip(got, want)):
            assert (a is None) == (b is None), f"grid {name} grad[{i}]"
            if b is not None:
                assert_rel_close(torch.from_numpy(np.array(a)), b, rtol=RTOL[torch.complex64],
                                 name=f"grid {name} grad[{i}]")


NEEDS = {spec.name: len(spec.args) for spec in BACKWARD_SPECS}
MASK_POS = {spec.name: spec.mask_index for spec in BACKWARD_SPECS}


@pytest.mark.parametrize("mask_kind", SIM_MASKS)
@pytest.mark.parametrize("dtype", SIM_DTYPES, ids=["c64", "c128"])
@pytest.mark.parametrize("shape", SIM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_host_kernels_backward_match_reference(engine, shape, dtype, mask_kind):
    low, d128 = _inputs(*shape, dtype, mask_kind, per_batch=(shape[0] > 1))
    calls_low, calls_128 = _forward_calls(low), _forward_calls(d128)
    for name in BACKWARD_CASES:
        op = name.split("[")[0]
        n = NEEDS[op]
        subsets = [tuple(i != MASK_POS[op] for i in range(n))]  # everything but the mask
        subsets += [tuple(i == j for i in range(n)) for j in range(n) if j != MASK_POS[op]]  # one at a time
        for needs in subsets:
            g_low, g128 = _backward_grad(op, low), _backward_grad(op, d128)
            got = getattr(engine, op + "_backward")(_np(g_low), tuple(_np(a) for a in calls_low[name]), needs)
            want = getattr(ref, op + "_backward")(g128, calls_128[name], needs)
            assert len(got) == len(want) == n, name
            for i, (a, b) in enumerate(zip(got, want)):
                label = f"{name} grad[{i}] needs={needs}"
                if b is None:
                    assert a is None, f"{label}: expected None"
                    continue
                assert a is not None, f"{label}: missing"
                a = torch.from_numpy(np.array(a))
                assert tuple(a.shape) == tuple(b.shape), f"{label}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
                tol = RTOL[dtype]
                assert_rel_close(a, b, rtol=tol, name=label)


def test_host_kernels_masked_zeros_are_positive(engine):
    """k-space outputs carry +0.0 (never -0.0) where the mask is zero (docs/operators.md)."""
    low, _ = _inputs(2, 3, 6, 8, torch.complex64, "2d", per_batch=True)
    out = engine.sense_forward(_np(-low["x"]), _np(low["S"]), _np(low["mask"]))
    zero = np.broadcast_to(_np(low["mask"])[:, None] == 0, out.shape)
    assert zero.any()
    assert (out[zero] == 0).all()
    assert not np.signbit(out.real[zero]).any() and not np.signbit(out.imag[zero]).any()


def test_host_kernels_column_mask_uses_1d_transforms(engine):
    """A column mask takes the 1-D path along W (docs/operators.md, the column-mask identity), a 2-D mask the 2-D path."""
    calls = []
    rt = engine.rt
    orig = rt.fft

    def spy(buf, axes, inverse):
        calls.append(tuple(axes))
        return orig(buf, axes, inverse)

    rt.fft = spy
    try:
        low, _ = _inputs(1, 2, 6, 8, torch.complex64, "column", per_batch=False)
        engine.normal(_np(low["x"]), _np(low["S"]), _np(low["mask"]))
        assert calls == [(-1,), (-1,)]
        calls.clear()
        low, _ = _inputs(1, 2, 6, 8, torch.complex64, "2d", per_batch=False)
        engine.normal(_np(low["x"]), _np(low["S"]), _np(low["mask"]))
        assert calls == [(-2, -1), (-2, -1)]
    finally:
        rt.fft = orig


# ====================================================================== GPU (marker gpu)
DEV, CUPY = "cuda", "cupy"  # module constants so the test logic can be dry-run elsewhere


def _cuda_backends():
    import flat.backends as fb

    return fb.available_backends()


def _make(B, C, H, W, dtype, mask_kind, device, seed=0, per_batch=True):
    g = torch.Generator(device="cpu").manual_seed(seed)
    c = lambda *s: torch.randn(*s, dtype=torch.complex128, generator=g)  # noqa: E731
    S = random_sens(B, C, H, W, generator=g)
    if mask_kind == "column":
        mask = torch.rand(W, generator=g) < 0.3
        mask[W // 2 - 8: W // 2 + 8] = True
    elif mask_kind == "batch_column":
        mask = (torch.rand(B, W, generator=g) < 0.3).float()
    else:
        mask = (torch.rand(B, 1, H, W, generator=g) < 0.3).double()
    dt = torch.linspace(0.1, 0.3, B, dtype=torch.float64) if per_batch and B > 1 else 0.2
    lam = 2.5
    d = dict(x=c(B, H, W), v=c(B, H, W), ahy=c(B, H, W), y=c(B, C, H, W), k=c(B, C, H, W), S=S)
    low = {n: t.to(device=device, dtype=dtype) for n, t in d.items()}
    hi = {n: t.to(device=device) for n, t in d.items()}
    for dd in (low, hi):
        dd["mask"] = mask.to(device)
        dd["dt"] = dt.to(device) if isinstance(dt, torch.Tensor) else dt
        dd["lam"] = lam
    return low, hi


def _table_calls(d, backend, specs, scalars=None):
    """{label: call} through flat.ops for every op and variant of ``specs``, arguments from ``d`` by
    the short names of SHORT (``scalars`` may replace dt/lam)."""
    calls = {}
    for spec in specs:
        for i, variant in enumerate(spec.variants):
            args = tuple(None if a.name in variant else (scalars or d)[SHORT[a.name]] if a.name in ("dt", "lam")
                         else d[SHORT[a.name]] for a in spec.args)
            calls[variant_label(spec, i)] = lambda spec=spec, args=args: call_public(spec, args, backend)
    return calls


def _ops_calls(fo, d, backend):
    return _table_calls(d, backend, ENGINE_OPS)


GPU_SMALL = [(1, 3, 8, 8), (2, 4, 9, 7), (2, 2, 10, 12), (1, 3, 7, 10), (2, 3, 16, 46), (1, 2, 12, 367)]


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", SIM_MASKS)
@pytest.mark.parametrize("dtype", SIM_DTYPES, ids=["c64", "c128"])
@pytest.mark.parametrize("shape", GPU_SMALL, ids=lambda s: "x".join(map(str, s)))
def test_gpu_forward_small(shape, dtype, mask_kind):
    import flat.ops as fo

    low, hi = _make(*shape, dtype, mask_kind, DEV)
    got, want = _ops_calls(fo, low, CUPY), _ops_calls(fo, hi, "reference")
    for name in got:
        out = got[name]()
        assert out.dtype == dtype and out.device.type == DEV, name
        assert_rel_close(out.cpu(), want[name]().cpu(), dtype=dtype, name=f"cupy {name}")


REAL_SIZES = [(1, 15, 640, 368), (8, 15, 640, 368), (1, 4, 640, 320), (8, 20, 640, 320)]


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", ["column", "2d"])
@pytest.mark.parametrize("shape", REAL_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_forward_real_sizes(shape, mask_kind):
    """complex64 kernels against the complex128 reference at knee/brain sizes (fresh inputs)."""
    import flat.ops as fo

    low, hi = _make(*shape, torch.complex64, mask_kind, DEV, seed=sum(shape))
    got, want = _ops_calls(fo, low, CUPY), _ops_calls(fo, hi, "reference")
    for name in BACKWARD_CASES:
        w = want[name]()
        assert_rel_close(got[name](), w, dtype=torch.complex64, name=f"cupy {name} {shape}")
        del w
    torch.cuda.empty_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 4, 9, 7), (1, 15, 640, 368), (2, 8, 640, 320)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_matches_triton(shape):
    if "triton" not in _cuda_backends():
        pytest.skip("the triton backend is not available on this machine")
    import flat.ops as fo

    low, _ = _make(*shape, torch.complex64, "column", DEV, seed=7)
    a, b = _ops_calls(fo, low, CUPY), _ops_calls(fo, low, "triton")
    for name in BACKWARD_CASES:
        assert_rel_close(a[name](), b[name](), rtol=2e-5, name=f"cupy vs triton {name}")


def _grad_inputs(low):
    out = {}
    for n, t in low.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() or isinstance(t, torch.Tensor) and t.is_complex():
            out[n] = t.detach().clone().requires_grad_(n != "mask")
        else:
            out[n] = t
    return out


def _losses(fo, d, backend):
    """Scalar losses through every fused op, so backward reaches every input."""
    dt = d["dt"] if isinstance(d["dt"], torch.Tensor) else torch.tensor(d["dt"], device=d["x"].device)
    lam = torch.tensor(2.5, dtype=torch.float64, device=d["x"].device)
    return _table_calls(d, backend, BACKWARD_SPECS, scalars={"dt": dt, "lam": lam}), (dt, lam)


@pytest.mark.gpu
@pytest.mark.parametrize("shape,dtype", [((2, 3, 9, 7), torch.complex128), ((2, 3, 9, 7), torch.complex64),
                                         ((1, 15, 640, 368), torch.complex64)],
                         ids=["small-c128", "small-c64", "knee-c64"])
@pytest.mark.parametrize("mask_kind", ["column", "2d"])
def test_gpu_gradients_match_reference(shape, dtype, mask_kind):
    import flat.ops as fo

    low, _ = _make(*shape, dtype, mask_kind, DEV, seed=3)
    grads = {}
    for backend in (CUPY, "reference"):
        d = _grad_inputs(low)
        if isinstance(d["dt"], torch.Tensor):
            d["dt"] = d["dt"].detach().clone().to(torch.float64).requires_grad_(True)
        losses, (dt, lam) = _losses(fo, d, backend)
        if not dt.requires_grad:
            dt.requires_grad_(True)
        lam.requires_grad_(True)
        for name, f in losses.items():
            out = f()
            w = torch.randn(out.shape, dtype=out.dtype, device=out.device,
                            generator=torch.Generator(device=DEV).manual_seed(11))
            leaves = [d[n] for n in ("x", "v", "y", "k", "S", "ahy")] + [dt, lam]
            gs = torch.autograd.grad((out * w.conj()).real.sum(), leaves, allow_unused=True)
            grads[(backend, name)] = gs
    names = ("x", "v", "y", "k", "S", "ahy", "dt", "lam")
    for name in BACKWARD_CASES:
        for i, (a, b) in enumerate(zip(grads[(CUPY, name)], grads[("reference", name)])):
            assert (a is None) == (b is None), f"{name} grad {names[i]}: {a is None} vs {b is None}"
            if a is not None:
                assert_rel_close(a, b, rtol=RTOL[dtype] * (10 if names[i] in ("dt", "lam") else 1),
                                 name=f"cupy {name} grad {names[i]}")


@pytest.mark.gpu
@pytest.mark.parametrize("shape,dtype", [((1, 15, 640, 368), torch.complex64), ((2, 20, 64, 320), torch.complex64),
                                         ((2, 4, 9, 367), torch.complex128), ((2, 3, 8, 202), torch.complex64)],
                         ids=["knee-c64", "brain-c64", "367-c128", "202-c64"])
def test_gpu_fused_grad_sens_route(shape, dtype, monkeypatch):
    """Column mask, learned maps: the backward of flow_step / normal is one flat_row_grad launch
    (docs/row_kernel.md, "The fused backward") — recorded at the runtime — and its grad_x, grad_S,
    grad_dt, grad_lam match the reference (the tolerances of test_gpu_gradients_match_reference)."""
    import flat.ops as fo
    from flat_kernels.cupy._runtime import CupyRuntime

    launched = []
    orig = CupyRuntime.launch_rows

    def recording(self, name, *args, **kw):
        launched.append(name)
        return orig(self, name, *args, **kw)

    monkeypatch.setattr(CupyRuntime, "launch_rows", recording)
    low, _ = _make(*shape, dtype, "column", DEV, seed=5)
    for case in ("flow_step(ahy)", "flow_step", "normal"):
        grads = {}
        for backend in (CUPY, "reference"):
            d = {n: low[n].detach().clone().requires_grad_(True) for n in ("x", "v", "S", "ahy")}
            dt = torch.tensor(0.2, dtype=torch.float64, device=DEV, requires_grad=True)
            lam = torch.tensor(2.5, dtype=torch.float64, device=DEV, requires_grad=True)
            if case == "normal":
                out, leaves = fo.normal(d["x"], d["S"], low["mask"], backend=backend), [d["x"], d["S"]]
            else:
                ahy = d["ahy"] if case == "flow_step(ahy)" else None
                y = None if ahy is not None else low["y"]
                out = fo.flow_step(d["x"], d["v"], y, d["S"], low["mask"], dt, lam, ahy=ahy, backend=backend)
                leaves = [d["x"], d["S"], dt, lam]
            w = torch.randn(out.shape, dtype=out.dtype, device=DEV, generator=torch.Generator(device=DEV).manual_seed(1))
            launched.clear()
            grads[backend] = torch.autograd.grad((out * w.conj()).real.sum(), leaves)
            if backend == CUPY:
                assert launched.count("row_grad") == 1, (case, launched)  # the fused route, not cuFFT stacks
        for i, (a, b) in enumerate(zip(grads[CUPY], grads["reference"])):
            assert_rel_close(a, b, rtol=RTOL[dtype] * (10 if i >= 2 else 1), name=f"cupy fused {case} grad[{i}]")


@pytest.mark.gpu
def test_gpu_gradcheck_complex128():
    import flat.ops as fo

    low, _ = _make(1, 2, 5, 6, torch.complex128, "column", DEV, seed=5)
    x, v, y, S, ahy = (low[n].detach().clone().requires_grad_(True) for n in ("x", "v", "y", "S", "ahy"))
    dt = torch.tensor(0.3, dtype=torch.float64, device=DEV, requires_grad=True)
    lam = torch.tensor(1.7, dtype=torch.float64, device=DEV, requires_grad=True)
    m = low["mask"]
    f = lambda x, v, y, S, dt, lam: fo.flow_step(x, v, y, S, m, dt, lam, backend=CUPY)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, v, y, S, dt, lam))
    g = lambda x, v, S, ahy, dt, lam: fo.flow_step(x, v, None, S, m, dt, lam, ahy=ahy, backend=CUPY)  # noqa: E731
    assert torch.autograd.gradcheck(g, (x, v, S, ahy, dt, lam))
    k = low["k"].detach().clone().requires_grad_(True)
    h = lambda k, x, y, S, dt, lam: fo.kspace_flow_step(k, x, y, S, m, dt, lam, backend=CUPY)  # noqa: E731
    assert torch.autograd.gradcheck(h, (k, x, y, S, dt, lam))
    n = lambda x, y, S: fo.dc_gradient(x, y, S, m, backend=CUPY)  # noqa: E731
    assert torch.autograd.gradcheck(n, (x, y, S))


@pytest.mark.gpu
def test_gpu_runs_on_torch_current_stream():
    """Work issued under torch.cuda.stream(s) is ordered on s (no race with a producer on s)."""
    import flat.ops as fo

    low, hi = _make(2, 8, 640, 320, torch.complex64, "column", DEV, seed=9)
    want = fo.flow_step(hi["x"], hi["v"], hi["y"], hi["S"], hi["mask"], hi["dt"], hi["lam"], backend="reference")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        x = torch.zeros_like(low["x"])
        x.copy_(low["x"])  # produced on s; the kernel must see it without any synchronisation
        out = fo.flow_step(x, low["v"], low["y"], low["S"], low["mask"], low["dt"], low["lam"], backend="cupy")
    torch.cuda.current_stream().wait_stream(s)
    assert_rel_close(out, want, dtype=torch.complex64, name="flow_step on a side stream")


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_with_changing_dt_lam():
    import flat.ops as fo

    low, hi = _make(1, 15, 640, 368, torch.complex64, "column", DEV, seed=4)
    dt = torch.tensor(0.1, dtype=torch.float32, device="cuda")
    lam = torch.tensor(1.0, dtype=torch.float32, device="cuda")
    args = (low["x"], low["v"], low["y"], low["S"], low["mask"])
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (plans, NVRTC) outside the capture
        for _ in range(2):
            fo.flow_step(*args, dt, lam, backend="cupy")
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fo.flow_step(*args, dt, lam, backend="cupy")
    for dtv, lamv in ((0.1, 1.0), (0.25, 3.0), (0.05, 0.5)):
        dt.fill_(dtv)
        lam.fill_(lamv)
        graph.replay()
        torch.cuda.synchronize()
        want = fo.flow_step(hi["x"], hi["v"], hi["y"], hi["S"], hi["mask"], dtv, lamv, backend="reference")
        assert_rel_close(out, want, dtype=torch.complex64, name=f"graph replay dt={dtv} lam={lamv}")


@pytest.mark.gpu
def test_gpu_backend_is_listed_and_imports_cupy_lazily():
    import flat.backends as fb

    assert "cupy" in fb.available_backends()
    assert set(fb.implemented_ops("cupy")) >= {
        "normal", "dc_gradient", "flow_step", "kspace_flow_step",
        "normal_backward", "dc_gradient_backward", "flow_step_backward", "kspace_flow_step_backward",
    }


# ====================================================================== CPU: the GPU CI wiring
def test_gpu_workflow_and_check_script_are_wired():
    wf = (ROOT / ".github" / "workflows" / "gpu.yml").read_text()
    assert "runs-on: [self-hosted, linux, x64, gpu]" in wf
    assert "scripts/gpu_check.sh" in wf
    sh = ROOT / "scripts" / "gpu_check.sh"
    text = sh.read_text()
    for needle in ("nvidia-smi", "pytest -m gpu", "[test,triton,cupy]", "benchmarks/bench_ops.py",
                   "torch.cuda.is_available()"):
        assert needle in text, f"scripts/gpu_check.sh lacks {needle!r}"
    bash = shutil.which("bash")
    if bash:
        r = subprocess.run([bash, "-n", str(sh)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    ci = (ROOT / ".ci" / "run").read_text()
    assert "gpu_check" not in ci and "-m gpu" not in ci, ".ci/run must stay CPU-only"
