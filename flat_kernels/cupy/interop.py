"""Zero-copy torch <-> CuPy exchange and stream/device scoping.

* :func:`to_cupy` hands a CUDA tensor to CuPy through the DLPack protocol (no copy for a contiguous,
  non-conjugated tensor; a lazy conjugate/negation or a non-contiguous view is materialised first,
  because kernels see raw pointers — design/docs/operators.md (custom-op pitfalls)).
* :func:`to_torch` returns a CuPy array to torch through DLPack (no copy).
* :func:`torch_stream` runs CuPy work (kernels, cuFFT plans) on torch's *current* CUDA stream of the
  tensors' device, so ordering with surrounding torch work, CUDA graphs and ``torch.cuda.stream``
  contexts is preserved without any synchronisation. Torch's default stream (handle 0) is the legacy
  default stream, which is CuPy's null stream too.
* Inside :func:`torch_stream` every CuPy allocation (work buffers, cuFFT work areas, small scalar
  arrays) is served by torch's caching allocator through ``cupy.cuda.using_allocator``, so the two
  libraries do not hoard memory from each other, and allocations made while torch captures a CUDA
  graph come from the graph's private pool, as torch's own do. :func:`empty` allocates with torch
  directly; the returned CuPy array keeps the torch storage alive.
"""
from __future__ import annotations

import contextlib

import cupy
import torch

_TORCH_DTYPE = {
    "complex64": torch.complex64,
    "complex128": torch.complex128,
    "float32": torch.float32,
    "float64": torch.float64,
}


def to_cupy(t: torch.Tensor):
    """A CuPy view of CUDA tensor ``t`` (materialised first if conjugated, negated or strided)."""
    if t.device.type != "cuda":
        raise ValueError(f"the CuPy backend needs CUDA tensors, got a tensor on {t.device}")
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    return cupy.from_dlpack(t)


def to_torch(a) -> torch.Tensor:
    """A torch view of CuPy array ``a`` (zero-copy)."""
    return torch.from_dlpack(a)


def empty(shape, dtype, device: torch.device):
    """Uninitialised C-contiguous CuPy array allocated by torch on ``device``."""
    t = torch.empty(tuple(int(s) for s in shape), dtype=_TORCH_DTYPE[cupy.dtype(dtype).name], device=device)
    return cupy.from_dlpack(t)


def _torch_malloc(size: int):
    """CuPy allocator backed by torch's caching allocator on CuPy's current device."""
    index = cupy.cuda.Device().id
    t = torch.empty((max(int(size), 1),), dtype=torch.uint8, device=torch.device("cuda", index))
    mem = cupy.cuda.UnownedMemory(t.data_ptr(), int(size), t, index)  # `t` stays alive with `mem`
    return cupy.cuda.MemoryPointer(mem, 0)


def _cupy_stream(ts: "torch.cuda.Stream", index: int):
    """CuPy's view of torch stream ``ts`` (the legacy default stream is CuPy's null stream)."""
    if ts.cuda_stream == 0:
        return cupy.cuda.Stream.null
    from_external = getattr(cupy.cuda.Stream, "from_external", None)  # CuPy >= 14
    if from_external is not None and hasattr(ts, "__cuda_stream__"):
        return from_external(ts)
    return cupy.cuda.ExternalStream(ts.cuda_stream, index)  # deprecated in CuPy 14


@contextlib.contextmanager
def torch_stream(device: torch.device):
    """Inside the block CuPy uses ``device``, torch's current stream there, and torch's allocator."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index), cupy.cuda.Device(index):
        stream = _cupy_stream(torch.cuda.current_stream(index), index)
        with stream, cupy.cuda.using_allocator(_torch_malloc):
            yield stream
