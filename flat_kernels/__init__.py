"""Accelerated backends of :mod:`flat.ops`.

``flat_kernels.triton`` and ``flat_kernels.cupy`` register their implementations into
:mod:`flat.backends` when imported; :mod:`flat.backends` imports them lazily, the first time a
backend is used. This package itself imports neither Triton nor CuPy.
"""
