"""The GPU runtime of :class:`flat_kernels.cupy._engine.Engine`: NVRTC kernels and cached cuFFT plans.

* Kernels: ``flat_kernels/cuda/dc_fused.cu`` compiled once per device by ``cupy.RawModule``
  (NVRTC; CuPy also caches the binary on disk), functions ``flat_<kernel>_<c64|c128>``.
* FFTs: cuFFT C2C/Z2Z plans from ``cupyx.scipy.fftpack.get_fft_plan`` (a ``Plan1d`` batched over
  B·C·H rows for the column-mask path, a ``PlanNd`` over (H, W) batched over B·C otherwise), kept in
  an LRU cache keyed by (device, shape, dtype, axes) and executed **in place and unscaled**
  (``plan.fft(a, a, direction)``) on the current stream; the 1/N factors are folded into the
  epilogue kernels.
* The one-pass row kernels (column masks): ``flat_kernels/cuda/row_step.cu``, one
  ``cupy.RawModule`` per family (``flat_row_step_<c64|c128>`` built with ``-DFLAT_ROW_ONLY_STEP``,
  the fused backward ``flat_row_grad_<c64|c128>`` with ``-DFLAT_ROW_ONLY_GRAD``: inference never
  compiles the backward), launched on a grid of (H, B) blocks of ``ROW_THREADS`` threads with
  dynamic shared memory (the opt-in above 48 KB set per function).
"""
from __future__ import annotations

import collections
import pathlib
import threading

import cupy
import numpy as np
from cupy.cuda import cufft
from cupyx.scipy.fftpack import get_fft_plan

from . import interop
from ._engine import ROW_THREADS

BLOCK = 256
_SRC = pathlib.Path(__file__).resolve().parent.parent / "cuda" / "dc_fused.cu"
_ROW_SRC = _SRC.with_name("row_step.cu")
_PLAN_CACHE_SIZE = 32


def _smem_attributes(index):
    """(shared memory per SM, opt-in maximum per block) of device ``index``, in bytes."""
    try:
        attrs = cupy.cuda.Device(index).attributes
        return int(attrs["MaxSharedMemoryPerMultiprocessor"]), int(attrs["MaxSharedMemoryPerBlockOptin"])
    except (KeyError, AttributeError):
        pass
    # cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
    get = cupy.cuda.runtime.deviceGetAttribute
    return int(get(81, index)), int(get(97, index))


class CupyRuntime:
    """Runtime for one torch CUDA device (see the engine's docstring for the interface)."""

    xp = cupy

    def __init__(self, device):
        self.device = device
        self._module = None
        self._row_modules = {}
        self._smem = None
        self._funcs = {}
        self._plans: collections.OrderedDict = collections.OrderedDict()
        self._dummy = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- memory
    def empty(self, shape, dtype):
        return interop.empty(shape, dtype, self.device)

    def _dummy_ptr(self, real):
        key = bool(real)
        if key not in self._dummy:
            self._dummy[key] = cupy.zeros((1,), dtype=np.float64 if real else np.complex128)
        return self._dummy[key]

    # ---------------------------------------------------------------- FFT
    def _plan(self, a, axes):
        key = (a.shape, a.dtype.str, axes)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = get_fft_plan(a, axes=axes, value_type="C2C")
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > _PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plan

    def fft(self, buf, axes, inverse):
        if not buf.flags.c_contiguous:
            raise ValueError("internal: FFT buffers must be C-contiguous")
        axes = tuple(int(a) for a in axes)
        plan = self._plan(buf, axes)
        plan.fft(buf, buf, cufft.CUFFT_INVERSE if inverse else cufft.CUFFT_FORWARD)

    # ---------------------------------------------------------------- kernels
    def _function(self, name, suffix):
        key = f"flat_{name}_{suffix}"
        fn = self._funcs.get(key)
        if fn is None:
            if self._module is None:
                self._module = cupy.RawModule(code=_SRC.read_text(), options=("--std=c++14",))
            fn = self._funcs[key] = self._module.get_function(key)
        return fn

    def _suffix(self, dtype):
        dtype = np.dtype(dtype)
        if dtype == np.complex64:
            suffix, real = "c64", np.float32
        elif dtype == np.complex128:
            suffix, real = "c128", np.float64
        else:
            raise TypeError(f"internal: kernels take complex64/complex128, got {dtype}")
        return suffix, real

    def _pack(self, args, real):
        packed = []
        for kind, value in args:
            if kind in ("ptr", "rptr"):
                packed.append(self._dummy_ptr(kind == "rptr") if value is None else value)
            elif kind == "int":
                packed.append(np.int32(value))
            elif kind == "real":
                packed.append(real(value))
            else:  # pragma: no cover - table error
                raise ValueError(kind)
        return tuple(packed)

    def launch(self, name, dtype, B, HW, args):
        suffix, real = self._suffix(dtype)
        packed = self._pack(args, real)
        grid = (max(1, min((HW + BLOCK - 1) // BLOCK, 1 << 16)), max(1, min(B, 65535)), 1)
        self._function(name, suffix)(grid, (BLOCK, 1, 1), packed)

    # ---------------------------------------------------------------- the row kernel
    def row_smem_limits(self, dtype):
        """Per-block shared-memory budgets for row_plan, tried in order.

        complex64 (128 registers at 256 threads, two blocks fit an SM's register file): first the
        size that lets two blocks share an SM, then the opt-in maximum; complex128 (254 registers,
        one block per SM): the opt-in maximum. 1 KB per block is reserved by the driver.
        """
        if self._smem is None:
            self._smem = _smem_attributes(self.device.index)
        per_sm, optin = self._smem
        if np.dtype(dtype) == np.complex64:
            return (min(optin, per_sm // 2 - 1024), optin)
        return (optin,)

    def launch_rows(self, name, dtype, B, H, smem_bytes, args):
        suffix, real = self._suffix(dtype)
        packed = self._pack(args, real)
        key = f"flat_{name}_{suffix}"
        fn = self._funcs.get(key)
        if fn is None:
            mod = self._row_modules.get(name)
            if mod is None:  # one module per kernel family (row_step.cu: FLAT_ROW_ONLY_*)
                only = {"row_step": "FLAT_ROW_ONLY_STEP", "row_grad": "FLAT_ROW_ONLY_GRAD"}[name]
                mod = self._row_modules[name] = cupy.RawModule(code=_ROW_SRC.read_text(),
                                                               options=("--std=c++14", f"-D{only}"))
            fn = mod.get_function(key)
            # allow the largest size row_plan may ask for (above 48 KB needs the opt-in)
            fn.max_dynamic_shared_size_bytes = self.row_smem_limits(dtype)[-1]
            self._funcs[key] = fn
        grid = (max(1, min(H, (1 << 31) - 1)), max(1, min(B, 65535)), 1)
        fn(grid, (ROW_THREADS, 1, 1), packed, shared_mem=int(smem_bytes))
