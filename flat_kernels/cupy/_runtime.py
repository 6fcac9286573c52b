"""The GPU runtime of :class:`flat_kernels.cupy._engine.Engine`: NVRTC kernels and cached cuFFT plans.

* Kernels: ``flat_kernels/cuda/dc_fused.cu`` compiled once per device by ``cupy.RawModule``
  (NVRTC; CuPy also caches the binary on disk), functions ``flat_<kernel>_<c64|c128>``.
* FFTs: cuFFT C2C/Z2Z plans from ``cupyx.scipy.fftpack.get_fft_plan`` (a ``Plan1d`` batched over
  B·C·H rows for the column-mask path, a ``PlanNd`` over (H, W) batched over B·C otherwise), kept in
  an LRU cache keyed by (device, shape, dtype, axes) and executed **in place and unscaled**
  (``plan.fft(a, a, direction)``) on the current stream; the 1/N factors are folded into the
  epilogue kernels.
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

BLOCK = 256
_SRC = pathlib.Path(__file__).resolve().parent.parent / "cuda" / "dc_fused.cu"
_PLAN_CACHE_SIZE = 32


class CupyRuntime:
    """Runtime for one torch CUDA device (see the engine's docstring for the interface)."""

    xp = cupy

    def __init__(self, device):
        self.device = device
        self._module = None
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

    def launch(self, name, dtype, B, HW, args):
        dtype = np.dtype(dtype)
        if dtype == np.complex64:
            suffix, real = "c64", np.float32
        elif dtype == np.complex128:
            suffix, real = "c128", np.float64
        else:
            raise TypeError(f"internal: kernels take complex64/complex128, got {dtype}")
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
        grid = (max(1, min((HW + BLOCK - 1) // BLOCK, 1 << 16)), max(1, min(B, 65535)), 1)
        self._function(name, suffix)(grid, (BLOCK, 1, 1), tuple(packed))
