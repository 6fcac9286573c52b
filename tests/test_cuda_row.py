"""The one-pass row kernel of the CuPy backend (flat_kernels/cuda/row_step.cu) on the CPU.

The kernel is block-cooperative (shared memory, ``__syncthreads`` between FFT stages), so the host
shim here runs **every thread of a block** as a ``std::thread`` and maps ``__syncthreads`` onto one
``std::barrier`` (C++20): the same source, the same barriers, real concurrency between the threads
of a block (blocks run one after another, as a GPU may schedule them). Shared memory is poisoned with
NaN bytes before every block and outputs with NaN before every launch, so a value read before it is
written, or an output element never written, fails the comparison.

The backend's own orchestration (flat_kernels/cupy/_engine.py) drives the kernels (the forward
flat_row_step and the fused backward flat_row_grad), with numpy.fft and the host-built dc_fused.cu
kernels (tests/test_cupy.py) for the parts that stay on the cuFFT path (Aᴴy from k-space, its q
stack, grad_y, the fallbacks). Checked against the reference backend (flat.ops, complex128) and the
independent oracle (tests/oracle.py): even W, W % 4 == 2, odd W, W with a large prime factor (2·101)
and prime W (367), C = 1, 4, 15, 20, complex64 and complex128, dt/lam per sample, mask shared or per
sample, coil chunks smaller than C, grids and blocks smaller than the work. Not checked here: NVRTC,
the CuPy launch and the speed (GPU tests in tests/test_cupy.py run the same ops with ``backend="cupy"``).
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch

import flat.ops as fo
import flat.ops.reference as ref
from tests import oracle
from tests.helpers import RTOL, assert_rel_close, random_sens
from tests.test_cupy import _SHIM, CU, NumpyRuntime, _load_engine_module

ROW_CU = CU.with_name("row_step.cu")

_ROW_SHIM = r"""
// Host shim for block-cooperative kernels: every thread of a block is a std::thread; __syncthreads is
// a std::barrier over the block's threads; the dynamic shared memory is one buffer per launch,
// re-poisoned (all bytes 0xFF: NaN) before each block.
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
struct flat_sim_dim3 { unsigned int x, y, z; };
static thread_local flat_sim_dim3 threadIdx = {0u, 0u, 0u};
static thread_local flat_sim_dim3 blockIdx = {0u, 0u, 0u};
static flat_sim_dim3 blockDim = {1u, 1u, 1u};
static flat_sim_dim3 gridDim = {1u, 1u, 1u};
static std::barrier<>* flat_sim_barrier = nullptr;
static unsigned char* flat_sim_smem = nullptr;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __syncthreads() flat_sim_barrier->arrive_and_wait()
#define FLAT_ROW_SMEM(p) unsigned char* p = flat_sim_smem
static inline void sincospi(double x, double* s, double* c) { *s = std::sin(M_PI * x); *c = std::cos(M_PI * x); }

template <typename... A, std::size_t... I>
static void flat_sim_call(void (*k)(A...), void** argv, std::index_sequence<I...>) {
    k(*static_cast<A*>(argv[I])...);
}

template <typename... A>
static void flat_sim_launch(void (*k)(A...), unsigned gx, unsigned gy, unsigned bx, std::size_t smem, void** argv) {
    std::vector<unsigned char> mem(smem + 16);
    unsigned char* base = mem.data() + (16 - reinterpret_cast<std::uintptr_t>(mem.data()) % 16) % 16;
    flat_sim_smem = base;
    gridDim = {gx, gy, 1u};
    blockDim = {bx, 1u, 1u};
    std::barrier<> bar(bx);
    flat_sim_barrier = &bar;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < bx; ++t)
        threads.emplace_back([&, t] {
            threadIdx = {t, 0u, 0u};
            for (unsigned by = 0; by < gy; ++by)
                for (unsigned bix = 0; bix < gx; ++bix) {
                    if (t == 0) std::memset(base, 0xFF, smem);
                    bar.arrive_and_wait();
                    blockIdx = {bix, by, 0u};
                    flat_sim_call(k, argv, std::index_sequence_for<A...>{});
                    bar.arrive_and_wait();  // the block is done with its shared memory
                }
        });
    for (auto& th : threads) th.join();
}
"""

_ROW_LAUNCHERS = r"""
extern "C" void flat_sim_row_step_c64(unsigned gx, unsigned gy, unsigned bx, unsigned long smem, void** argv) {
    flat_sim_launch(flat_row_step_c64, gx, gy, bx, smem, argv);
}
extern "C" void flat_sim_row_step_c128(unsigned gx, unsigned gy, unsigned bx, unsigned long smem, void** argv) {
    flat_sim_launch(flat_row_step_c128, gx, gy, bx, smem, argv);
}
extern "C" void flat_sim_row_grad_c64(unsigned gx, unsigned gy, unsigned bx, unsigned long smem, void** argv) {
    flat_sim_launch(flat_row_grad_c64, gx, gy, bx, smem, argv);
}
extern "C" void flat_sim_row_grad_c128(unsigned gx, unsigned gy, unsigned bx, unsigned long smem, void** argv) {
    flat_sim_launch(flat_row_grad_c128, gx, gy, bx, smem, argv);
}
"""
_ROW_OUTPUTS = ("out", "gx_out", "gs_out", "red_out")  # written by the row kernels, NaN before each launch


def _cxx():
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++/clang++) to build the kernels for the CPU check")
    return cxx


def _build(cxx, d, name, text, std):
    src = d / f"{name}.cpp"
    src.write_text(text)
    so = d / f"lib{name}.so"
    r = subprocess.run([cxx, f"-std={std}", "-O2", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-fPIC", "-shared", "-pthread", str(src),
                        "-o", str(so)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"host build of {name} failed:\n{r.stderr}"
    return ctypes.CDLL(str(so))


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    cxx = _cxx()
    d = tmp_path_factory.mktemp("cuhost_row")
    (d / "shim.h").write_text(_SHIM)
    dc = _build(cxx, d, "dcfused", f'#include "shim.h"\n#include "{CU}"\n', "c++14")
    row = _build(cxx, d, "rowstep", _ROW_SHIM + f'#include "{ROW_CU}"\n' + _ROW_LAUNCHERS, "c++20")
    return dc, row


ENG = _load_engine_module()


def threads_ok(nt):
    """The kernels' block reduction scratch (row_grad) is sized for FLAT_ROW_THREADS threads."""
    return 1 <= nt <= ENG.ROW_THREADS


class RowRuntime(NumpyRuntime):
    """NumpyRuntime plus the row-kernel launch (launch_rows / row_smem_limits) on the threaded shim."""

    def __init__(self, dc_lib, row_lib, threads=32, grid=None, limits=(1 << 30,)):
        super().__init__(dc_lib, ENG.SIGNATURES)
        self.row_lib = row_lib
        self.threads, self.row_grid, self.limits = threads, grid, limits
        self.fft_calls = []
        self.row_smem = []

    def fft(self, buf, axes, inverse):
        self.fft_calls.append(tuple(axes))
        super().fft(buf, axes, inverse)

    def row_smem_limits(self, dtype):
        return self.limits

    def launch_rows(self, name, dtype, B, H, smem_bytes, args):
        dtype = np.dtype(dtype)
        suffix, real, creal = {
            np.dtype(np.complex64): ("c64", np.float32, ctypes.c_float),
            np.dtype(np.complex128): ("c128", np.float64, ctypes.c_double),
        }[dtype]
        sig = ENG.ROW_SIGNATURES[name]
        assert [k for k, _ in args] == [k for _, k in sig]
        assert threads_ok(self.threads)
        vals = []
        for (pname, kind), (_, v) in zip(sig, args):
            if pname in _ROW_OUTPUTS and v is not None:  # poisoned (rt.empty): an unwritten element stays NaN
                assert np.isnan(v).all(), f"{name}.{pname}: output not poisoned before the launch"
            if kind in ("ptr", "rptr"):
                if v is None:
                    vals.append(ctypes.c_void_p(None))
                    continue
                assert isinstance(v, np.ndarray) and v.flags.c_contiguous, f"{name}.{pname}: not C-contiguous"
                want = dtype if kind == "ptr" else np.dtype(real)
                assert v.dtype == want, f"{name}.{pname}: dtype {v.dtype}, kernel expects {want}"
                vals.append(ctypes.c_void_p(v.ctypes.data))
            elif kind == "int":
                vals.append(ctypes.c_int(int(v)))
            else:
                vals.append(creal(float(v)))
        argv = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        gx, gy = self.row_grid if self.row_grid is not None else (H, B)
        fn = getattr(self.row_lib, f"flat_sim_{name}_{suffix}")
        fn.restype = None
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong, ctypes.c_void_p]
        fn(gx, gy, self.threads, smem_bytes, argv)
        self.launched.append(name)
        self.row_smem.append(smem_bytes)


# ====================================================================== static checks
def test_row_signature_matches_source():
    src = ROW_CU.read_text()
    for fam in ("STEP", "GRAD"):  # complex64 two blocks per SM, complex128 one (test_cuda_compile.py)
        assert f"FLAT_ROW_{fam}_INSTANTIATE(c64, float, 2)" in src and f"FLAT_ROW_{fam}_INSTANTIATE(c128, double, 1)" in src
    for name, sig in ENG.ROW_SIGNATURES.items():
        start = src.index(f"void __launch_bounds__(FLAT_ROW_THREADS, MINB) flat_{name}_##SUF(")
        params = src[start:src.index(")", src.index("##SUF(", start))].split("(", 2)[2]
        names = [p.replace("\\", " ").split()[-1].strip("*") for p in params.split(",") if p.strip()]
        assert names == [p for p, _ in sig], f"{name}: source {names} vs engine table {[p for p, _ in sig]}"
    assert f"#define FLAT_ROW_THREADS {ENG.ROW_THREADS}" in src


def test_row_radices_factor_w():
    assert ENG.row_radices(368) == [23, 16]
    assert ENG.row_radices(320) == [20, 16]
    assert ENG.row_radices(640) == [20, 2, 16]
    assert ENG.row_radices(100) == [20, 5] and ENG.row_radices(10) == [5, 2]
    assert ENG.row_radices(256) == [16, 16] and ENG.row_radices(64) == [4, 16]
    assert ENG.row_radices(202) == [101, 2]
    assert ENG.row_radices(45) == [3, 3, 5]
    assert ENG.row_radices(367) == [367]
    assert ENG.row_radices(1) == []
    # 368 = 23·16: ld ≡ 23 (mod 16); 320 = 20·16: the radix-20 stage writes padded rows (320 + 16), ≡ 20
    assert ENG.row_ld(368) == 375 and ENG.row_ld(320) == 340 and ENG.row_ld(367) == 367
    for w in range(1, 700):
        assert int(np.prod(ENG.row_radices(w))) == w, w


def test_row_plan_chunks_and_limits():
    # knee complex64: two blocks per SM on Hopper (113 KB), all 15 coils do not fit: 2 chunks of 8
    knee = ENG.row_plan(15, 368, 8, (115712, 232448))
    assert knee == {"Cg": 8, "chunks": 2, "ld": 375, "smem_bytes": 3 * 368 * 8 + 368 * 4 + 8 * (368 + 2 * 375) * 8}
    assert knee["smem_bytes"] <= 115712
    # knee complex128: only the opt-in maximum is tried
    k128 = ENG.row_plan(15, 368, 16, (232448,))
    assert k128["Cg"] * k128["chunks"] >= 15 and k128["smem_bytes"] <= 232448
    # C = 32 still runs (in more chunks); a row that does not fit at all gives None (cuFFT path)
    assert ENG.row_plan(32, 368, 16, (232448,))["chunks"] == 3
    assert ENG.row_plan(4, 8192, 16, (232448,)) is None


def test_row_work_counts():
    w = ENG.row_step_work(1, 15, 640, 368, 8)
    floor = 8 * (15 * 640 * 368 + 4 * 640 * 368) + 4 * 368  # S, x, v, Aᴴy read; out written; mask
    assert w["dram_bytes"] == floor
    assert w["blocks"] == 640 and w["radices"] == [23, 16]
    assert 0.3e9 < w["flops"] < 1e9 and w["smem_traffic_bytes"] > w["dram_bytes"]


# ====================================================================== parity through the engine
def _inputs(B, C, H, W, dtype, per_sample_mask, seed=0, weighted=False):
    g = torch.Generator().manual_seed(seed)
    c = lambda *s: torch.randn(*s, dtype=torch.complex128, generator=g)  # noqa: E731
    Bm = B if per_sample_mask else 1
    mask = (torch.rand(Bm, 1, W, generator=g) < 0.4).double()
    mask[..., W // 2] = 1.0
    if weighted:  # non-binary weights: the reference applies M once in AᴴA (the oracle would square it)
        mask = mask * torch.linspace(0.5, 1.5, W, dtype=torch.float64)
    d = dict(x=c(B, H, W), v=c(B, H, W), ahy=c(B, H, W), g=c(B, H, W), y=c(B, C, H, W),
             S=random_sens(B, C, H, W, generator=g), mask=mask,
             dt=torch.linspace(0.1, 0.3, B, dtype=torch.float64), lam=torch.linspace(2.0, 3.0, B, dtype=torch.float64))
    rdt = torch.float32 if dtype == torch.complex64 else torch.float64
    low = {n: t.to(dtype if t.is_complex() else rdt) for n, t in d.items()}
    # the references see exactly the (rounded) values the kernel sees
    hi = {n: t.to(torch.complex128 if t.is_complex() else torch.float64) for n, t in low.items()}
    return low, hi


def _np(t):
    return None if t is None else t.contiguous().numpy()


def _t(a):
    return torch.from_numpy(np.array(a))


def _omask(d):
    """The mask as the oracle takes it: (B, 1, H, W)."""
    B, C, H, W = d["S"].shape
    return oracle.full_mask(d["mask"][:, 0].numpy(), B, H, W)


def _oracle_normal(d, z):
    return oracle.normal(z.numpy(), d["S"].numpy(), _omask(d))


CASES = [  # B, C, H, W, dtype, per-sample mask, threads per block
    (2, 4, 3, 8, torch.complex64, False, 32),     # even W (4·2)
    (2, 4, 3, 8, torch.complex128, True, 7),
    (2, 1, 3, 10, torch.complex64, True, 5),      # W % 4 == 2, one coil
    (1, 15, 2, 7, torch.complex128, False, 16),   # odd prime W, knee coil count
    (2, 4, 3, 45, torch.complex64, False, 32),    # 3·3·5
    (2, 20, 2, 46, torch.complex128, True, 32),   # 2·23, brain coil count
    (1, 4, 2, 46, torch.complex64, True, 32),
    (2, 4, 2, 202, torch.complex64, True, 32),    # 2·101: direct-DFT stage
    (1, 4, 2, 367, torch.complex128, False, 64),  # prime W: one direct-DFT stage
    (1, 15, 2, 368, torch.complex64, False, 64),  # knee width 16·23
    (2, 20, 1, 320, torch.complex128, True, 64),  # brain width 20·16
    (1, 3, 2, 640, torch.complex64, False, 64),   # 20·2·16
    (1, 2, 2, 256, torch.complex128, False, 32),  # 16·16 (radix 16 at Ns = 1)
    (2, 3, 2, 96, torch.complex64, True, 32),     # 3·2·16
    (1, 2, 3, 100, torch.complex128, True, 16),   # 20·5
]


def _id(c):
    B, C, H, W, dt, per, nt = c
    return f"{B}x{C}x{H}x{W}-c{str(dt)[-3:].lstrip('x')}-{'mb' if per else 'm1'}-t{nt}"


@pytest.fixture(params=CASES, ids=[_id(c) for c in CASES])
def case(request, libs):
    B, C, H, W, dtype, per, nt = request.param
    low, hi = _inputs(B, C, H, W, dtype, per, seed=W + C)
    rt = RowRuntime(*libs, threads=nt)
    return ENG.Engine(rt), rt, low, hi, dtype


def test_row_kernel_forward_matches_reference_and_oracle(case):
    eng, rt, low, hi, dtype = case
    L = {n: _np(t) for n, t in low.items()}
    x, v, y, S, m, dt, lam, ahy = (hi[n] for n in ("x", "v", "y", "S", "mask", "dt", "lam", "ahy"))
    M2 = _omask(hi)
    want_ref = {
        "normal": fo.normal(x, S, m, backend="reference"),
        "dc_gradient": fo.dc_gradient(x, y, S, m, backend="reference"),
        "flow_step": fo.flow_step(x, v, y, S, m, dt, lam, backend="reference"),
        "flow_step(ahy)": fo.flow_step(x, v, None, S, m, dt, lam, ahy=ahy, backend="reference"),
    }
    want_orc = {
        "normal": oracle.normal(x.numpy(), S.numpy(), M2),
        "dc_gradient": oracle.dc_gradient(x.numpy(), y.numpy(), S.numpy(), M2),
        "flow_step": oracle.flow_step(x.numpy(), v.numpy(), y.numpy(), S.numpy(), M2, dt.numpy(), lam.numpy()),
        "flow_step(ahy)": oracle.flow_step(x.numpy(), v.numpy(), None, S.numpy(), M2, dt.numpy(), lam.numpy(),
                                           ahy=ahy.numpy()),
    }
    got = {}
    rt.launched.clear()
    rt.fft_calls.clear()
    got["normal"] = eng.normal(L["x"], L["S"], L["mask"])
    assert rt.launched == ["row_step"] and rt.fft_calls == [], (rt.launched, rt.fft_calls)  # one pass, no cuFFT
    got["dc_gradient"] = eng.dc_gradient(L["x"], L["y"], L["S"], L["mask"])
    got["flow_step"] = eng.flow_step(L["x"], L["v"], L["y"], L["S"], L["mask"], L["dt"], L["lam"])
    rt.launched.clear()
    got["flow_step(ahy)"] = eng.flow_step(L["x"], L["v"], None, L["S"], L["mask"], L["dt"], L["lam"], L["ahy"])
    assert rt.launched == ["row_step"]
    for name, out in got.items():
        assert out.dtype == np.dtype(str(dtype).split(".")[1]), name
        assert_rel_close(_t(out), want_ref[name], dtype=dtype, name=f"{name} vs reference")
        assert_rel_close(_t(out), torch.from_numpy(want_orc[name]), dtype=dtype, name=f"{name} vs oracle")


def test_row_kernel_x_gradients_match_reference_and_oracle(case):
    eng, rt, low, hi, dtype = case
    L = {n: _np(t) for n, t in low.items()}
    g = hi["g"]
    dtb = hi["dt"].reshape(-1, 1, 1)
    lamb = hi["lam"].reshape(-1, 1, 1)
    AAg = torch.from_numpy(_oracle_normal(hi, g))
    calls_low = {
        "normal": (L["x"], L["S"], L["mask"]),
        "dc_gradient": (L["x"], L["y"], L["S"], L["mask"]),
        "flow_step": (L["x"], L["v"], L["y"], L["S"], L["mask"], L["dt"], L["lam"], None),
        "flow_step(ahy)": (L["x"], L["v"], None, L["S"], L["mask"], L["dt"], L["lam"], L["ahy"]),
    }
    calls_hi = {
        "normal": (hi["x"], hi["S"], hi["mask"]),
        "dc_gradient": (hi["x"], hi["y"], hi["S"], hi["mask"]),
        "flow_step": (hi["x"], hi["v"], hi["y"], hi["S"], hi["mask"], hi["dt"], hi["lam"], None),
        "flow_step(ahy)": (hi["x"], hi["v"], None, hi["S"], hi["mask"], hi["dt"], hi["lam"], hi["ahy"]),
    }
    oracle_gx = {"normal": AAg, "dc_gradient": AAg, "flow_step": g - dtb * lamb * AAg,
                 "flow_step(ahy)": g - dtb * lamb * AAg}
    for name in calls_low:
        op = name.split("(")[0]
        n = len(calls_low[name])
        needs = tuple(i == 0 for i in range(n))
        rt.launched.clear()
        got = getattr(eng, op + "_backward")(_np(low["g"]), calls_low[name], needs)
        assert rt.launched == ["row_step"], (name, rt.launched)
        want = getattr(ref, op + "_backward")(g, calls_hi[name], needs)
        assert all(a is None for a in got[1:]) and all(b is None for b in want[1:])
        assert_rel_close(_t(got[0]), want[0], dtype=dtype, name=f"{name} grad_x vs reference")
        assert_rel_close(_t(got[0]), oracle_gx[name], dtype=dtype, name=f"{name} grad_x vs oracle")


def test_row_kernel_dt_lam_gradients(case):
    """grad_dt / grad_lam use the row kernel for AᴴA x − Aᴴy (no coil stack); grad_S stays on cuFFT."""
    eng, rt, low, hi, dtype = case
    L = {n: _np(t) for n, t in low.items()}
    call_low = (L["x"], L["v"], None, L["S"], L["mask"], L["dt"], L["lam"], L["ahy"])
    call_hi = (hi["x"], hi["v"], None, hi["S"], hi["mask"], hi["dt"], hi["lam"], hi["ahy"])
    needs = (True, True, False, False, False, True, True, True)
    rt.launched.clear()
    got = eng.flow_step_backward(L["g"], call_low, needs)
    assert rt.launched == ["row_step", "row_step"], rt.launched
    want = ref.flow_step_backward(hi["g"], call_hi, needs)
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), i
        if b is None:
            continue
        assert_rel_close(_t(a), b, rtol=RTOL[dtype], name=f"flow_step(ahy) grad[{i}]")
    # with grad_S: the fused backward (row_grad), one launch, no coil stack, no cuFFT
    needs_s = (True, False, False, True, False, False, False, False)
    rt.launched.clear()
    rt.fft_calls.clear()
    got = eng.flow_step_backward(L["g"], call_low, needs_s)
    assert rt.launched == ["row_grad"] and rt.fft_calls == [], (rt.launched, rt.fft_calls)
    want = ref.flow_step_backward(hi["g"], call_hi, needs_s)
    assert_rel_close(_t(got[0]), want[0], dtype=dtype, name="grad_x with grad_S")
    assert_rel_close(_t(got[3]), want[3], dtype=dtype, name="grad_S")


# ====================================================================== launch shapes, chunks, fallback
def _normal_case(libs, B, C, H, W, dtype, **rt_kw):
    low, hi = _inputs(B, C, H, W, dtype, True, seed=3, weighted=True)
    rt = RowRuntime(*libs, **rt_kw)
    eng = ENG.Engine(rt)
    out = eng.flow_step(_np(low["x"]), _np(low["v"]), None, _np(low["S"]), _np(low["mask"]), _np(low["dt"]),
                        _np(low["lam"]), _np(low["ahy"]))
    want = fo.flow_step(hi["x"], hi["v"], None, hi["S"], hi["mask"], hi["dt"], hi["lam"], ahy=hi["ahy"],
                        backend="reference")
    return rt, out, want


def test_row_kernel_weighted_mask(libs):
    """Non-binary column weights, per sample: as the reference (M applied once in AᴴA)."""
    low, hi = _inputs(2, 4, 3, 12, torch.complex128, True, seed=5, weighted=True)
    rt = RowRuntime(*libs, threads=8)
    eng = ENG.Engine(rt)
    out = eng.normal(_np(low["x"]), _np(low["S"]), _np(low["mask"]))
    assert rt.launched == ["row_step"]
    assert_rel_close(_t(out), fo.normal(hi["x"], hi["S"], hi["mask"], backend="reference"),
                     dtype=torch.complex128, name="weighted normal")
    rt, out, want = _normal_case(libs, 2, 4, 3, 12, torch.complex64, threads=8)
    assert_rel_close(_t(out), want, dtype=torch.complex64, name="weighted flow_step")


def test_row_kernel_coil_chunks(libs):
    """C = 20 coils through a budget that holds 3 coil rows: 7 balanced chunks of <= 3, same result."""
    W, cb = 46, 8
    ld = ENG.row_ld(W)
    assert ld == 55  # 46 = 23·2: padded to 55 ≡ 23 (mod 16)
    fixed, per_coil = 3 * W * cb + W * cb // 2, (W + 2 * ld) * cb
    rt, out, want = _normal_case(libs, 2, 20, 3, W, torch.complex64, threads=16, limits=(fixed + 3 * per_coil,))
    assert rt.launched == ["row_step"] and rt.row_smem == [fixed + 3 * per_coil]
    assert_rel_close(_t(out), want, dtype=torch.complex64, name="chunked flow_step")


def test_row_kernel_strided_grid(libs):
    """A grid smaller than (H, B) and a block of 3 threads: the row/batch-stride loops cover all rows."""
    rt, out, want = _normal_case(libs, 3, 4, 5, 10, torch.complex128, threads=3, grid=(2, 2))
    assert rt.launched == ["row_step"]
    assert_rel_close(_t(out), want, dtype=torch.complex128, name="strided flow_step")


def test_row_kernel_width_one(libs):
    rt, out, want = _normal_case(libs, 2, 3, 4, 1, torch.complex128, threads=4)
    assert rt.launched == ["row_step"]
    assert_rel_close(_t(out), want, dtype=torch.complex128, name="W = 1")


def test_row_kernel_falls_back_when_a_row_does_not_fit(libs):
    rt, out, want = _normal_case(libs, 2, 4, 3, 46, torch.complex64, limits=(1000,))
    assert "row_step" not in rt.launched and rt.launched[:2] == ["prologue", "mask_apply"]
    assert_rel_close(_t(out), want, dtype=torch.complex64, name="fallback flow_step")


def test_row_kernel_not_used_for_2d_masks(libs):
    low, hi = _inputs(1, 3, 6, 8, torch.complex64, False, seed=1)
    m2 = (torch.rand(1, 6, 8, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    rt = RowRuntime(*libs)
    out = ENG.Engine(rt).normal(_np(low["x"]), _np(low["S"]), _np(m2))
    assert "row_step" not in rt.launched and rt.fft_calls == [(-2, -1), (-2, -1)]
    assert_rel_close(_t(out), fo.normal(hi["x"], hi["S"], m2.double(), backend="reference"),
                     dtype=torch.complex64, name="2-D mask normal")


@pytest.mark.parametrize("C,W", [(15, 368), (20, 320)], ids=["knee", "brain"])
def test_row_kernel_complex64_accuracy_at_real_widths(libs, C, W):
    """complex64 kernel vs the complex128 kernel and the oracle at the fastMRI widths: <= 1e-5."""
    low, hi = _inputs(1, C, 2, W, torch.complex64, False, seed=C)
    outs = {}
    for key, d in (("c64", low), ("c128", hi)):
        rt = RowRuntime(*libs, threads=64)
        outs[key] = _t(ENG.Engine(rt).flow_step(_np(d["x"]), _np(d["v"]), None, _np(d["S"]), _np(d["mask"]),
                                                _np(d["dt"]), _np(d["lam"]), _np(d["ahy"])))
        assert rt.launched == ["row_step"]
    want = oracle.flow_step(hi["x"].numpy(), hi["v"].numpy(), None, hi["S"].numpy(), _omask(hi),
                            hi["dt"].numpy(), hi["lam"].numpy(), ahy=hi["ahy"].numpy())
    want = torch.from_numpy(want)
    assert_rel_close(outs["c128"], want, dtype=torch.complex128, name=f"c128 W={W}")
    assert_rel_close(outs["c64"], outs["c128"], rtol=1e-5, name=f"c64 vs c128 W={W}")
    # the AᴴA part alone (flow_step output is dominated by x): normal, relative to its own norm
    rt = RowRuntime(*libs, threads=64)
    n64 = _t(ENG.Engine(rt).normal(_np(low["x"]), _np(low["S"]), _np(low["mask"])))
    n128 = torch.from_numpy(_oracle_normal(hi, hi["x"]))
    assert_rel_close(n64, n128, rtol=1e-5, name=f"c64 normal W={W}")


def test_model_launches_for_the_performance_model():
    (knee,) = ENG.model_launches("flow_step", 1, 15, 640, 368, "complex64")
    assert knee["kernel"] == "flat_row_step_c64" and knee["grid"] == (640, 1) and knee["chunks"] == 2
    assert knee["dram_bytes"] == 8 * (15 + 4) * 640 * 368 + 4 * 368
    (back,) = ENG.model_launches("flow_step_backward_x", 8, 20, 640, 320, "complex128")
    assert back["dram_bytes"] == 16 * 8 * (20 + 2) * 640 * 320 + 8 * 8 * 320 and back["smem_bytes"] <= 227 * 1024
    assert ENG.model_launches("normal", 1, 4, 8, 8192, "complex128") == []
    # the fused backward with learned maps: S, x, g, v, Aᴴy read, grad_S and grad_x written, once each
    (bs,) = ENG.model_launches("flow_step_backward_S", 1, 15, 640, 368, "complex64")
    coil, img = 8 * 15 * 640 * 368, 8 * 640 * 368
    assert bs["kernel"] == "flat_row_grad_c64" and (bs["coils_per_chunk"], bs["chunks"]) == (8, 2)
    assert bs["dram_bytes"] == 2 * coil + 5 * img + 640 * 2 * 4 + 4 * 368  # + the row sums, the mask
    (bq,) = ENG.model_launches("flow_step_backward_S_q", 1, 15, 640, 368, "complex64")
    assert bq["dram_bytes"] == bs["dram_bytes"] + coil - img  # q read instead of Aᴴy
    (nb,) = ENG.model_launches("normal_backward_S", 8, 20, 640, 320, "complex128")
    assert nb["dram_bytes"] == 16 * 8 * (2 * 20 + 3) * 640 * 320 + 8 * 8 * 320 and nb["smem_bytes"] <= 227 * 1024
    # two projections per coil: about twice the forward's flops and shared-memory traffic
    assert 1.8 < bs["flops"] / knee["flops"] < 2.5 and 1.5 < bs["smem_wavefront_bytes"] / knee["smem_wavefront_bytes"] < 2.5
    with pytest.raises(ValueError, match="op"):
        ENG.model_launches("kspace_flow_step", 1, 4, 8, 8)


def test_row_kernel_can_be_switched_off(libs, monkeypatch):
    monkeypatch.setenv("FLAT_CUPY_ROW_KERNEL", "0")
    rt, out, want = _normal_case(libs, 2, 4, 3, 46, torch.complex64)
    assert "row_step" not in rt.launched and "prologue" in rt.launched
    assert_rel_close(_t(out), want, dtype=torch.complex64, name="FLAT_CUPY_ROW_KERNEL=0")
    # the fused backward is switched off with it: grad_S on the cuFFT path
    low, hi = _inputs(2, 4, 3, 46, torch.complex64, True, seed=2)
    rt = RowRuntime(*libs)
    needs = (True, True, False)
    got = ENG.Engine(rt).normal_backward(_np(low["g"]), (_np(low["x"]), _np(low["S"]), _np(low["mask"])), needs)
    assert not {"row_step", "row_grad"} & set(rt.launched) and "grad_sens" in rt.launched
    want = ref.normal_backward(hi["g"], (hi["x"], hi["S"], hi["mask"]), needs)
    assert_rel_close(_t(got[1]), want[1], rtol=GRAD_RTOL[torch.complex64], name="FLAT_CUPY_ROW_KERNEL=0 grad_S")


# ====================================================================== the fused backward (grad_S)
# grad_S with a column mask is one launch of flat_row_grad (row_step.cu, docs/row_kernel.md "The fused
# backward"): P(S_c x) and P(S_c g) per coil chunk in shared memory, grad_S written once, grad_x and
# the grad_dt/grad_lam row sums from the same pass. Checked against the reference backward (complex128
# on the rounded inputs) and against autograd through the oracle (tests/oracle.py: literal 2-D centered
# transforms, an independent derivation of every gradient).
#
# Tolerances: the forward's AᴴA x measures 2–3e-7 relative in complex64 (docs/row_kernel.md, "The
# FFT"); each grad_S term is one such projection times an input, and grad_x one such AᴴA g, so the
# gradients carry the same error: the worst over GRAD_CASES is 4.1e-7 (grad_S) and 2.9e-7 (grad_x),
# and 1e-6 leaves a factor 2.4. grad_dt/grad_lam are real sums over B·H·W products with the
# residual, accumulated in float32 by the kernel and then differenced (grad_dt = gv − lam·gr cancels
# part of its magnitude): worst 2.0e-6, so they get the suite's complex64 tolerance 1e-5
# (tests/helpers.py). complex128: worst 1.1e-14 (grad_lam; 1.0e-15 grad_S) — rounding of ~1e-16 per
# operation through four transforms and a sum — so 1e-12 for every gradient.
GRAD_RTOL = {torch.complex64: 1e-6, torch.complex128: 1e-12}
SCALAR_RTOL = {torch.complex64: 1e-5, torch.complex128: 1e-12}

GRAD_CASES = [  # B, C, H, W, dtype, per-sample mask, threads, coils per chunk (None: the Hopper plan)
    (1, 15, 2, 368, torch.complex64, False, 64, None),   # knee: 2 chunks of 8 (Hopper, two blocks/SM)
    (1, 15, 2, 368, torch.complex128, True, 64, None),   # knee c128: 2 chunks of 8
    (1, 20, 2, 320, torch.complex64, True, 64, None),    # brain: 3 chunks of 7
    (1, 20, 1, 320, torch.complex128, False, 64, None),  # brain c128: 3 chunks of 7
    (2, 4, 3, 7, torch.complex128, True, 7, 3),          # odd prime W, 7 threads (tree over 7)
    (2, 4, 3, 45, torch.complex64, False, 32, 3),        # odd W 3·3·5, chunks of 3 + 1
    (2, 4, 2, 202, torch.complex64, True, 32, 2),        # 2·101: direct-DFT first stage (no fold)
    (1, 4, 2, 367, torch.complex128, False, 64, 3),      # prime W: one direct-DFT stage
    (1, 4, 2, 367, torch.complex64, True, 64, 4),
    (2, 3, 2, 46, torch.complex128, True, 5, 1),         # one coil per chunk, 5 threads
    (1, 2, 2, 256, torch.complex64, False, 32, None),    # 16·16
    (2, 6, 3, 10, torch.complex64, True, 3, 4),          # W % 4 == 2, 3 threads, chunks 4 + 2
    (2, 3, 2, 1, torch.complex128, True, 4, 2),          # W = 1: no FFT stage
]


def _grad_id(c):
    B, C, H, W, dt, per, nt, cg = c
    return f"{B}x{C}x{H}x{W}-c{str(dt)[-3:].lstrip('x')}-{'mb' if per else 'm1'}-t{nt}-cg{cg or 'hopper'}"


def _grad_limits(C, W, dtype, cg):
    """Shared-memory budgets giving row_grad `cg` coils per chunk, or Hopper's when cg is None."""
    cb = 8 if dtype == torch.complex64 else 16
    if cg is None:
        return ENG.HOPPER_SMEM_LIMITS["complex64" if cb == 8 else "complex128"]
    ld, real = ENG.row_ld(W), cb // 2
    fixed = 5 * W * cb + W * real + 2 * ENG.ROW_THREADS * real
    return (fixed + cg * (W + 3 * ld) * cb,)


def _oracle_backward(op, hi, g):
    """Autograd through the oracle: gradients of Re Σ conj(g)·out for x, S, v, ahy, dt, lam."""
    leaves = {n: hi[n].clone().requires_grad_(True) for n in ("x", "S", "v", "ahy", "dt", "lam")}
    M2 = torch.from_numpy(np.array(_omask(hi)))  # a writable copy
    x, S, v, ahy, dt, lam = (leaves[n] for n in ("x", "S", "v", "ahy", "dt", "lam"))
    out = {
        "normal": lambda: oracle.normal(x, S, M2),
        "dc_gradient": lambda: oracle.dc_gradient(x, hi["y"], S, M2),
        "flow_step": lambda: oracle.flow_step(x, v, hi["y"], S, M2, dt, lam),
        "flow_step(ahy)": lambda: oracle.flow_step(x, v, None, S, M2, dt, lam, ahy=ahy),
    }[op]()
    names = list(leaves)
    grads = torch.autograd.grad((out * g.conj()).real.sum(), [leaves[n] for n in names], allow_unused=True)
    return dict(zip(names, grads))


@pytest.fixture(params=GRAD_CASES, ids=[_grad_id(c) for c in GRAD_CASES])
def grad_case(request, libs):
    B, C, H, W, dtype, per, nt, cg = request.param
    low, hi = _inputs(B, C, H, W, dtype, per, seed=3 * W + C)
    rt = RowRuntime(*libs, threads=nt, limits=_grad_limits(C, W, dtype, cg))
    eng = ENG.Engine(rt)
    plan = eng._row_plan(_np(low["S"]), _np(low["mask"]), "row_grad")
    assert plan is not None
    if cg is not None:
        assert plan["Cg"] <= cg and plan["chunks"] == -(-C // cg), plan
    return eng, rt, low, hi, dtype, plan


def test_row_grad_sens_matches_reference_and_oracle(grad_case):
    """grad_S, grad_x (and for flow_step grad_dt, grad_lam) of every column-mask op, fused route."""
    eng, rt, low, hi, dtype, plan = grad_case
    B, C, H, W = low["S"].shape
    if W > 1 and C >= 15:  # the Hopper plans of the brief: knee 2 chunks of 8, brain 3 chunks of 7
        assert (plan["Cg"], plan["chunks"]) == {(15, 368): (8, 2), (20, 320): (7, 3)}[(C, W)], plan
    L = {n: _np(t) for n, t in low.items()}
    g = hi["g"]
    calls = {  # op: (engine inputs, reference inputs, needs, index of grad_S, index of grad_x)
        "normal": ((L["x"], L["S"], L["mask"]), (hi["x"], hi["S"], hi["mask"]), (True, True, False)),
        "dc_gradient": ((L["x"], L["y"], L["S"], L["mask"]), (hi["x"], hi["y"], hi["S"], hi["mask"]),
                        (True, False, True, False)),
        "flow_step": ((L["x"], L["v"], L["y"], L["S"], L["mask"], L["dt"], L["lam"], None),
                      (hi["x"], hi["v"], hi["y"], hi["S"], hi["mask"], hi["dt"], hi["lam"], None),
                      (True, True, False, True, False, True, True, False)),
        "flow_step(ahy)": ((L["x"], L["v"], None, L["S"], L["mask"], L["dt"], L["lam"], L["ahy"]),
                           (hi["x"], hi["v"], None, hi["S"], hi["mask"], hi["dt"], hi["lam"], hi["ahy"]),
                           (True, True, False, True, False, True, True, True)),
    }
    # which engine output is which oracle leaf
    slots = {"normal": {0: "x", 1: "S"}, "dc_gradient": {0: "x", 2: "S"},
             "flow_step": {0: "x", 1: "v", 3: "S", 5: "dt", 6: "lam"},
             "flow_step(ahy)": {0: "x", 1: "v", 3: "S", 5: "dt", 6: "lam", 7: "ahy"}}
    for name, (c_low, c_hi, needs) in calls.items():
        op = name.split("(")[0]
        rt.launched.clear()
        rt.fft_calls.clear()
        got = getattr(eng, op + "_backward")(L["g"], c_low, needs)
        # one pass over S: no coil stack through cuFFT; only q = ifft2c(M y) (Aᴴy from y) takes a 2-D FFT
        with_q = op == "dc_gradient" or name == "flow_step"
        assert rt.launched == (["prologue", "row_grad"] if with_q else ["row_grad"]), (name, rt.launched)
        assert rt.fft_calls == ([(-2, -1)] if with_q else []), (name, rt.fft_calls)
        want = getattr(ref, op + "_backward")(g, c_hi, needs)
        orc = _oracle_backward(name, hi, g)
        for i, (a, b) in enumerate(zip(got, want)):
            assert (a is None) == (b is None), (name, i)
            if b is None:
                continue
            leaf = slots[name][i]
            tol = (SCALAR_RTOL if leaf in ("dt", "lam") else GRAD_RTOL)[dtype]
            assert_rel_close(_t(a), b, rtol=tol, name=f"{name} grad_{leaf} vs reference")
            assert_rel_close(_t(a), orc[leaf], rtol=tol, name=f"{name} grad_{leaf} vs oracle")


def test_row_grad_only_grad_s_and_with_grad_y(libs):
    """needs = grad_S alone (no grad_x, no row sums written), and grad_y (k-space, cuFFT) beside it."""
    low, hi = _inputs(2, 5, 3, 12, torch.complex64, True, seed=9)
    L = {n: _np(t) for n, t in low.items()}
    rt = RowRuntime(*libs, threads=16, limits=_grad_limits(5, 12, torch.complex64, 2))
    eng = ENG.Engine(rt)
    c_low = (L["x"], L["v"], L["y"], L["S"], L["mask"], L["dt"], L["lam"], None)
    c_hi = (hi["x"], hi["v"], hi["y"], hi["S"], hi["mask"], hi["dt"], hi["lam"], None)
    for needs in ((False, False, False, True, False, False, False, False),
                  (True, True, True, True, False, False, True, False)):
        rt.launched.clear()
        got = eng.flow_step_backward(L["g"], c_low, needs)
        assert rt.launched.count("row_grad") == 1 and not {"grad_sens", "mask_apply", "row_step"} & set(rt.launched)
        want = ref.flow_step_backward(hi["g"], c_hi, needs)
        for i, (a, b) in enumerate(zip(got, want)):
            assert (a is None) == (b is None), (needs, i)
            if b is not None:
                assert_rel_close(_t(a), b, rtol=SCALAR_RTOL[torch.complex64] if i >= 5 else GRAD_RTOL[torch.complex64],
                                 name=f"grad[{i}] needs={needs}")
    low, hi = _inputs(1, 3, 4, 9, torch.complex128, False, seed=4)
    L = {n: _np(t) for n, t in low.items()}
    rt = RowRuntime(*libs, threads=16)
    eng = ENG.Engine(rt)
    got = eng.dc_gradient_backward(L["g"], (L["x"], L["y"], L["S"], L["mask"]), (False, True, True, False))
    want = ref.dc_gradient_backward(hi["g"], (hi["x"], hi["y"], hi["S"], hi["mask"]), (False, True, True, False))
    assert got[0] is None and "row_grad" in rt.launched and "grad_sens" not in rt.launched
    assert_rel_close(_t(got[1]), want[1], rtol=GRAD_RTOL[torch.complex128], name="dc_gradient grad_y")
    assert_rel_close(_t(got[2]), want[2], rtol=GRAD_RTOL[torch.complex128], name="dc_gradient grad_S")


def test_row_grad_strided_grid(libs):
    """A grid smaller than (H, B): every row of every sample gets its grad_S, grad_x and row sums."""
    low, hi = _inputs(3, 4, 5, 10, torch.complex128, True, seed=8)
    L = {n: _np(t) for n, t in low.items()}
    rt = RowRuntime(*libs, threads=6, grid=(2, 2), limits=_grad_limits(4, 10, torch.complex128, 3))
    needs = (True, False, False, True, False, True, True, False)
    c_low = (L["x"], L["v"], None, L["S"], L["mask"], L["dt"], L["lam"], L["ahy"])
    got = ENG.Engine(rt).flow_step_backward(L["g"], c_low, needs)
    assert rt.launched == ["row_grad"]
    want = ref.flow_step_backward(hi["g"], (hi["x"], hi["v"], None, hi["S"], hi["mask"], hi["dt"], hi["lam"],
                                            hi["ahy"]), needs)
    for i in (0, 3, 5, 6):
        assert_rel_close(_t(got[i]), want[i], rtol=GRAD_RTOL[torch.complex128], name=f"strided grad[{i}]")


def test_row_grad_falls_back_to_cufft_when_it_does_not_fit(libs):
    """A budget that holds the forward's row but not row_grad's: grad_S on the cuFFT path, still right."""
    W, C = 46, 4
    low, hi = _inputs(2, C, 3, W, torch.complex64, True, seed=6)
    L = {n: _np(t) for n, t in low.items()}
    fwd = ENG.row_plan(1, W, 8, (1 << 30,))["smem_bytes"]  # one coil of row_step
    assert ENG.row_plan(C, W, 8, (fwd,), kernel="row_grad") is None
    rt = RowRuntime(*libs, threads=16, limits=(fwd,))
    needs = (True, True, False)
    got = ENG.Engine(rt).normal_backward(L["g"], (L["x"], L["S"], L["mask"]), needs)
    assert "row_grad" not in rt.launched and "grad_sens" in rt.launched
    want = ref.normal_backward(hi["g"], (hi["x"], hi["S"], hi["mask"]), needs)
    assert_rel_close(_t(got[0]), want[0], rtol=GRAD_RTOL[torch.complex64], name="fallback grad_x")
    assert_rel_close(_t(got[1]), want[1], rtol=GRAD_RTOL[torch.complex64], name="fallback grad_S")


def test_row_grad_not_used_for_2d_masks(libs):
    low, hi = _inputs(1, 3, 6, 8, torch.complex128, False, seed=1)
    m2 = (torch.rand(1, 6, 8, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    rt = RowRuntime(*libs)
    got = ENG.Engine(rt).normal_backward(_np(low["g"]), (_np(low["x"]), _np(low["S"]), _np(m2)), (True, True, False))
    assert "row_grad" not in rt.launched and "grad_sens" in rt.launched
    want = ref.normal_backward(hi["g"], (hi["x"], hi["S"], m2), (True, True, False))
    assert_rel_close(_t(got[1]), want[1], rtol=GRAD_RTOL[torch.complex128], name="2-D mask grad_S")


def test_row_grad_plan_chunks():
    """row_grad holds both projections (three FFT buffers, two more W rows, the block reduction), so
    its coil chunks are smaller than the forward's; knee and brain keep two blocks per SM in complex64."""
    two, optin = ENG.HOPPER_SMEM_LIMITS["complex64"]
    for (C, W), (cg64, ch64), (cg128, ch128) in (((15, 368), (8, 2), (8, 2)), ((20, 320), (7, 3), (7, 3))):
        p = ENG.row_plan(C, W, 8, (two, optin), kernel="row_grad")
        ld = ENG.row_ld(W)
        assert p == {"Cg": cg64, "chunks": ch64, "ld": ld,
                     "smem_bytes": 5 * W * 8 + W * 4 + 2 * 256 * 4 + cg64 * (W + 3 * ld) * 8}, p
        assert p["smem_bytes"] <= two
        q = ENG.row_plan(C, W, 16, (optin,), kernel="row_grad")
        assert (q["Cg"], q["chunks"]) == (cg128, ch128) and q["smem_bytes"] <= optin
        f = ENG.row_plan(C, W, 8, (two, optin))
        assert (W + 3 * ld) > (W + 2 * ld) and p["Cg"] <= f["Cg"]
    with pytest.raises(ValueError, match="kernel"):
        ENG.row_plan(4, 8, 8, (1 << 20,), kernel="grad_sens")


def test_roofline_models_the_fused_backward():
    """flat_kernels/roofline.py prices forward + fused backward per step from the work models and the
    compiled registers (here the ptxas counts of tests/test_cuda_compile.py: 128 / 254, zero spills):
    every (size, dtype, device, B) gets a step, the backward is one flat_row_grad launch against the
    floor read S, x, g, v, Aᴴy + write grad_x, grad_S, and complex64 stays within 3x that floor."""
    from flat_kernels import roofline

    rows = [dict(kernel=f"flat_{k}_{d}", regs=128 if d == "c64" else 254, spill_st=0)
            for k in ("row_step", "row_grad") for d in ("c64", "c128")]
    models = roofline.cuda_row_models(rows)
    assert {p["kind"] for p in models} == {"fwd", "bwd"} and len(models) == 32
    steps = roofline.cuda_row_steps(models)
    assert len(steps) == 16
    for q in steps:
        C, H, W = roofline.WORKLOADS[q["workload"]]
        cb = 8 if q["dtype"] == "c64" else 16
        bw = roofline.CEILINGS[q["dev"]]["bw"]
        img, coil = H * W * cb, C * H * W * cb
        assert q["bwd_floor"] == pytest.approx(q["B"] * (2 * coil + 5 * img) / bw)
        assert q["floor"] == pytest.approx(q["B"] * (3 * coil + 9 * img) / bw)
        assert q["time"] >= q["floor"] and q["bwd"] >= q["bwd_floor"]
        if q["dtype"] == "c64":
            assert q["ratio"] <= 3.0, q
    md = roofline.markdown(dict(triton=[], cuda=[], cuda_row=models))
    assert "row_step + row_grad c64 | knee | 1 | H200" in md and "**predicted**" in md


def test_row_grad_weighted_mask(libs):
    """Non-binary column weights, per sample: grad_S and grad_x as the reference (M applied once per
    projection, as in the forward; the oracle would square it, so only the reference here)."""
    for dtype in (torch.complex64, torch.complex128):
        low, hi = _inputs(2, 5, 3, 12, dtype, True, seed=12, weighted=True)
        L = {n: _np(t) for n, t in low.items()}
        rt = RowRuntime(*libs, threads=8, limits=_grad_limits(5, 12, dtype, 2))
        needs = (True, True, False, True, False, True, True, False)
        got = ENG.Engine(rt).flow_step_backward(L["g"], (L["x"], L["v"], L["y"], L["S"], L["mask"], L["dt"],
                                                         L["lam"], None), needs)
        assert "row_grad" in rt.launched and "grad_sens" not in rt.launched
        want = ref.flow_step_backward(hi["g"], (hi["x"], hi["v"], hi["y"], hi["S"], hi["mask"], hi["dt"], hi["lam"],
                                                None), needs)
        for i in (0, 1, 3, 5, 6):
            tol = (SCALAR_RTOL if i >= 5 else GRAD_RTOL)[dtype]
            assert_rel_close(_t(got[i]), want[i], rtol=tol, name=f"weighted grad[{i}] {dtype}")
