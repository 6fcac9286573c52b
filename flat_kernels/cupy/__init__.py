"""The ``"cupy"`` backend of :mod:`flat.ops`: cuFFT plans with fused NVRTC prologue/epilogue kernels.

Imported lazily by :mod:`flat.ops.backends` the first time ``"cupy"`` is used on a machine with a CUDA
GPU (on a CPU machine :mod:`flat.ops.backends` refuses ``"cupy"`` with a clear reason before importing
anything); ``import flat`` / ``import flat.ops`` never import CuPy. Importing this package imports
CuPy and registers the implementations below with :func:`flat.ops.backends.register_module`.

What it implements (forward and backward, complex64 and complex128)
--------------------------------------------------------------------
``normal``, ``dc_gradient``, ``flow_step`` (with or without a precomputed ``ahy``),
``kspace_flow_step`` and their ``*_backward`` (gradients for image, velocity, k-space, sens, ahy,
dt, lam; none for the mask, as in the reference); forward only for ``sens_expand``,
``sens_reduce``, ``sense_forward``, ``sense_adjoint`` (their backward runs on the reference path).
``fft2c``/``ifft2c``/``rss`` run on the reference path (cuFFT through torch already).

Column masks: one pass (the row kernel, docs/row_kernel.md)
-----------------------------------------------------------
For a column mask (the fastMRI case), ``normal``, ``dc_gradient``, ``flow_step`` and their
x-gradients (and AᴴA x − Aᴴy for grad_dt/grad_lam) are **one launch** of
``flat_row_step_<c64|c128>`` (``flat_kernels/cuda/row_step.cu``): one thread block per image row,
the coils of the row in shared memory, a mixed-radix FFT along W, mask, inverse FFT, coil reduction
and Euler update, one store; S is read once and no coil stack is written (predicted 1.3–1.8× the
memory floor at knee/brain sizes, flat_kernels/NOTES.md). :mod:`._engine` takes it whenever the
runtime can launch it and a row fits in shared memory (``row_plan``). With learned maps the
backward is one launch of ``flat_row_grad_<c64|c128>`` (same file): both projections P(S x) and
P(S g) per coil chunk in shared memory, grad_S written once, grad_x and the grad_dt/grad_lam sums
from the same pass (Aᴴy from y adds its q = ifft2c(M y) stack, one cuFFT). 2-D masks, the k-space
form and Aᴴy from k-space take the cuFFT path below.

The cuFFT path (design B of docs/kernels.md, with CUDA C instead of Triton around cuFFT)
-----------------------------------------------------------------------------------------
Image-form step, column mask ``m``, docs/operators.md (the column-mask identity)::

    prologue   buf_c = S_c ⊙ x                          1 pass: read S, x; write the coil stack
    cuFFT      1-D along W, in place, unscaled           (batched Plan1d over B·C·H rows)
    mask       buf *= ifftshift(m)                       1 in-place pass (masked entries +0.0)
    cuFFT⁻¹    1-D along W, in place, unscaled
    epilogue   x + dt·(v − lam·((1/W)·Σ_c conj(S_c)·buf_c − Aᴴy))
               coil sum in a fixed order per thread (deterministic, no atomics), Euler update fused

A 2-D mask uses a 2-D plan over (H, W) and ``ifftshift(M)``. ``Aᴴy`` (when ``ahy`` is not given) is
one more prologue (``M ⊙ y`` read at ifftshift-ed indices) + 2-D cuFFT⁻¹ + a reduce epilogue that
reads fftshift-ed indices: no fftshift/roll is ever materialised, odd sizes included. The k-space
step is prologue (``S ⊙ z``, ifftshift-ed) + 2-D cuFFT + one epilogue
``k − dt·lam·M⊙(k − y) + dt·fft2c(S z)``. Backward (docs/operators.md, backward) reuses the same kernels:
``grad_x = g − dt·lam·AᴴA g`` is the forward pipeline with (x ← g, v = 0, Aᴴy = 0); ``grad_S`` is one
fused kernel over the two projected coil stacks P(S x), P(S g) (and q = ifft2c(M y) when Aᴴy was
computed from y); the dt/lam gradients are CuPy reductions of ``Re conj(g)·(…)``.

Memory traffic, knee column-mask ``flow_step`` with ``ahy`` given (one coil stack = 28.3 MB
complex64): prologue 2 stack passes (read S, write buf), two cuFFT passes of 2 each, the mask pass
≈1.3 (read everything, write only the masked columns for a 0/1 mask), epilogue 2 (read S, buf):
≈9.5 passes ≈ 270 MB, predicted ≈90 µs at 3 TB/s on an H100 (design B's ~95 µs; the reference
moves ≈1 GB). Without ``ahy`` add ≈6 passes for Aᴴy. These are predictions, not measurements.
The kernel source is ``flat_kernels/cuda/dc_fused.cu``; ``tests/test_cuda_compile.py`` compiles it
with ``nvcc -arch=sm_90 -cubin -Xptxas -v`` and asserts no spills (10 kernels, 38–72 registers).

Interop: inputs reach CuPy through DLPack without copies (:mod:`.interop`); all CuPy work (kernels
and cuFFT) runs on torch's current CUDA stream of the tensors' device, so it composes with
``torch.cuda.stream`` and CUDA-graph capture; work buffers and outputs are allocated by torch's
caching allocator — CuPy's own allocations (cuFFT work areas, the tiny per-batch scalar arrays) are
routed to it too through ``cupy.cuda.using_allocator``, so nothing hides in CuPy's memory pool.
cuFFT plans are cached per (device, shape, dtype, axes) (LRU of 32). For CUDA-graph capture, run
each shape once before capturing (NVRTC compilation and plan creation must not happen mid-capture),
as torch's own documentation asks for any warm-up.

Verified, and what still needs a GPU
------------------------------------
Verified on a CPU machine (tests/test_cupy.py, tests/test_cuda_row.py, tests/test_cuda_compile.py): the CUDA C compiles
for sm_90 with no spills; the *same* kernel source, compiled for the host through a small shim, driven
by the *same* orchestration (:mod:`._engine`) with ``numpy.fft`` in place of cuFFT, matches the
reference ops and backward formulas in complex64 and complex128 (even/odd sizes, column and 2-D
masks, per-batch dt/lam). **Pending GPU validation** (marker ``gpu`` tests, ``scripts/gpu_check.sh``,
``.github/workflows/gpu.yml``): NVRTC compilation through CuPy, the CuPy/cuFFT runtime glue
(:mod:`._runtime`, :mod:`.interop`: DLPack exchange, stream scoping, in-place plans), parity on the
device at knee/brain sizes, and every timing.

Not implemented (weighed, left for a session with a GPU)
--------------------------------------------------------
* Design C, cuFFT load/store callbacks: the prologue as a load callback and the mask as a store
  callback of the forward 1-D plan would remove ≈3.3 of the ≈9.5 passes (predicted ≈60 µs). CuPy
  supports them only through ``cupy.fft.config.set_cufft_callbacks`` (legacy callbacks need a
  static cuFFT link compiled per callback set; the LTO/JIT path changed in CUDA 13), which can
  only be tried on a GPU.
"""
from __future__ import annotations

import functools
import threading

import cupy  # noqa: F401  (fail at backend load, with a clear error, if CuPy is broken)
import torch

from flat.ops.backends import register_module

from . import interop
from ._engine import Engine
from ._runtime import CupyRuntime

__all__ = ["engine_for"]

_ENGINES: dict = {}
_LOCK = threading.Lock()


def engine_for(device: torch.device) -> Engine:
    """The (cached) engine of one CUDA device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _LOCK:
        eng = _ENGINES.get(index)
        if eng is None:
            eng = _ENGINES[index] = Engine(CupyRuntime(torch.device("cuda", index)))
    return eng


def _device_of(tensors):
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device
    raise ValueError("no tensor argument")


def _to_cupy(a):
    return interop.to_cupy(a) if isinstance(a, torch.Tensor) else a


def _to_torch(a):
    return None if a is None else interop.to_torch(a)


def _forward(op):
    @functools.wraps(getattr(Engine, op))
    def impl(*args):
        device = _device_of(args)
        with interop.torch_stream(device):
            out = getattr(engine_for(device), op)(*(_to_cupy(a) for a in args))
            return interop.to_torch(out)

    impl.__name__ = f"cupy_{op}"
    return impl


def _backward(op):
    name = op + "_backward"

    def impl(grad, inputs, needs):
        device = grad.device
        with interop.torch_stream(device):
            grads = getattr(engine_for(device), name)(
                interop.to_cupy(grad), tuple(_to_cupy(a) for a in inputs), tuple(needs)
            )
            return tuple(_to_torch(g) for g in grads)

    impl.__name__ = f"cupy_{name}"
    return impl


def _find(name):
    """The CuPy implementation of a table op: the Engine method of that name, if it has one."""
    if not hasattr(Engine, name):
        return None
    return _backward(name[: -len("_backward")]) if name.endswith("_backward") else _forward(name)


register_module("cupy", _find)
