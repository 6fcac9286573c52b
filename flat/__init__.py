"""FLAT: unrolled MRI reconstruction read as a conditional probability-flow ODE.

Importing ``flat`` is cheap: it imports neither Triton nor CuPy and touches no CUDA.
"""
__version__ = "0.1.0"
