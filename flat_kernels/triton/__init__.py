"""The ``"triton"`` backend of :mod:`flat.ops`: fused data-consistency + Euler-step kernels.

Imported lazily by :mod:`flat.ops.backends` the first time the backend is used (this is the only place
that imports Triton). Implements, forward and backward, on CUDA tensors (or CPU tensors under
``TRITON_INTERPRET=1``), complex64 and complex128:

* ``flow_step``, ``normal``, ``dc_gradient`` — column masks of width W = 16·N2: one fused row
  kernel per step (monarch.py, factored DFT along W); 2-D masks and other widths: torch.fft
  between fused Triton prologue/epilogue kernels (fft_epilogue.py);
* ``kspace_flow_step``, ``sense_forward``, ``sense_adjoint`` — torch.fft + fused kernels.

Other ops (fft2c, ifft2c, sens_expand, sens_reduce, rss) run on the reference path.

Precision (complex64 only; complex128 always runs fp64 kernels): ``set_precision("tf32x3")``
(default), ``"ieee"``, or the opt-in ``"tf32"``; or the environment variable
``FLAT_TRITON_PRECISION``. See flat_kernels/NOTES.md for designs, error and (pending) GPU timings;
``python -m flat_kernels.triton.bench`` times them on a GPU, ``python -m flat_kernels.triton.aot_check``
compiles them for sm_90 without one.
"""
from __future__ import annotations

from flat.ops.backends import register_module

from . import _ops
from ._common import PRECISIONS, get_precision, set_precision

# every function of _ops named like an op of flat/ops/table.py (and its _backward) is registered
register_module("triton", lambda name: getattr(_ops, name, None))

__all__ = ["PRECISIONS", "get_precision", "set_precision"]
