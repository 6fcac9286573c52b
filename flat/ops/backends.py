"""Backend registry: one place that maps (backend, op) to an implementation.

Backends
--------
``"reference"``  pure PyTorch (:mod:`flat.ops.reference`), every device, always available.
``"triton"``     :mod:`flat_kernels.triton` — CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
``"cupy"``       :mod:`flat_kernels.cupy` — CUDA tensors only.
``"auto"``       the fastest available backend for the tensors' device.

Selection, highest priority first: the ``backend=`` keyword of an op, the innermost
:func:`use_backend` context, the ``FLAT_BACKEND`` environment variable, ``"auto"``.
A backend asked for by name that cannot run raises :class:`BackendUnavailableError`;
there is never a silent fallback to another backend.

Implementations (the contract for ``flat_kernels``)
---------------------------------------------------
An implementation receives canonical tensors, already validated by :mod:`flat.ops`:

* images ``(B, H, W)`` complex; k-space and sensitivities ``(B, C, H, W)`` complex, one dtype;
* mask ``(Bm, Hm, W)`` real, same real dtype, ``Bm in (1, B)``; ``Hm == 1`` is a column mask
  (the fastMRI case), ``Hm == H`` a 2-D mask;
* ``dt``/``lam`` real tensors of shape ``()`` or ``(B,)``, same real dtype.

Forward implementations are registered under the op name with the op's positional signature
(``flow_step(image, velocity, kspace, sens, mask, dt, lam, ahy)``). A backward implementation is
registered as ``"<op>_backward"`` with signature ``fn(grad, inputs, needs) -> tuple`` where
``inputs`` is the tuple of forward inputs, ``needs[i]`` says whether input ``i`` needs a gradient,
and the result holds one gradient (or ``None``) per input.

A backend declares what it implements by defining it: :func:`register_module` looks up, for every
op of the table (:mod:`flat.ops.table`), a function of the op's name and one named
``<op>_backward``, and registers those it finds. Ops a backend does not implement run on the
reference path (the docs of each backend list what it fuses). Backends register lazily: ``flat_kernels`` modules
are imported the first time their backend is used, so ``import flat`` touches no Triton/CuPy/CUDA.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

__all__ = [
    "BACKEND_NAMES", "CHOICES", "BackendUnavailableError", "register_impl", "register_module",
    "unavailable_reason", "available_backends", "use_backend", "requested", "resolve", "get_impl",
    "implemented_ops",
]

BACKEND_NAMES = ("reference", "triton", "cupy")
CHOICES = BACKEND_NAMES + ("auto",)


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run here (missing package, no GPU, ...)."""


def _probe_triton(device_type: str | None) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "the 'triton' package is not installed (pip install 'flat-mri[triton]')"
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if device_type == "cpu" and not interpret:
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set before importing triton)"
    if device_type is None and not interpret:
        if not torch.cuda.is_available():
            return "no CUDA GPU is available (and TRITON_INTERPRET=1 is not set)"
    if device_type not in (None, "cpu", "cuda"):
        return f"Triton kernels run on CUDA tensors, not on {device_type!r}"
    return None


def _probe_cupy(device_type: str | None) -> str | None:
    # Never import cupy here: only look for it.
    if importlib.util.find_spec("cupy") is None:
        return "the 'cupy' package is not installed (pip install 'flat-mri[cupy13]' for CUDA 13, 'flat-mri[cupy]' for CUDA 12)"
    if device_type not in (None, "cuda"):
        return f"the CuPy backend runs on CUDA tensors, not on {device_type!r}"
    if not torch.cuda.is_available():
        return "the CuPy backend needs a CUDA GPU and none is available"
    return None


@dataclass
class _Backend:
    name: str
    probe: Callable[[str | None], str | None]  # device type -> None if usable, else the reason
    module: str | None  # imported on first use; registers its implementations
    impls: dict[str, Callable] = field(default_factory=dict)
    loaded: bool = False


_REGISTRY: dict[str, _Backend] = {
    "reference": _Backend("reference", lambda device_type: None, "flat.ops.reference"),
    "triton": _Backend("triton", _probe_triton, "flat_kernels.triton"),
    "cupy": _Backend("cupy", _probe_cupy, "flat_kernels.cupy"),
}
# "auto" preference per device type, fastest first. On CUDA the compile-time model
# (python -m flat_kernels.roofline; flat_kernels/NOTES.md) ranks CuPy's one-pass row kernel first for
# column masks (~1.7x the memory floor at knee size, predicted) ahead of the Triton row kernel
# (~7.6x); for 2-D masks both run cuFFT between fused kernels. Replace by measurement on a GPU.
_AUTO_ORDER = {"cuda": ("cupy", "triton", "reference")}

_CONTEXT: contextvars.ContextVar[str | None] = contextvars.ContextVar("flat_backend", default=None)


def register_impl(backend: str, op: str, fn: Callable) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op`` (see the module docstring)."""
    if backend not in _REGISTRY:
        raise ValueError(f"backend: unknown backend {backend!r}; expected one of {BACKEND_NAMES}")
    _REGISTRY[backend].impls[op] = fn


def register_module(backend: str, find: Callable[[str], Callable | None]) -> None:
    """Register every op of the table that ``find(name)`` returns a function for, and its
    ``<op>_backward``. A kernel backend's backward becomes an opaque custom op
    (:mod:`flat.ops.opaque`) so that AOT autograd can trace it; the reference one is plain PyTorch."""
    from flat.ops.opaque import wrap_backward
    from flat.ops.table import OPS

    for spec in OPS:
        fwd, bwd = find(spec.name), find(spec.name + "_backward")
        if fwd is not None:
            register_impl(backend, spec.name, fwd)
        if bwd is not None:
            register_impl(backend, spec.name + "_backward", bwd if backend == "reference" else wrap_backward(backend, spec.name, bwd))


@functools.lru_cache(maxsize=None)
def _probe_cached(name: str, device_type: str | None, interpret: str | None) -> str | None:
    # Probes look for packages and GPUs: cached so that eager per-call dispatch stays cheap.
    # TRITON_INTERPRET is part of the key because it changes what Triton can run.
    return _REGISTRY[name].probe(device_type)


def _probe(name: str, device_type: str | None) -> str | None:
    return _probe_cached(name, device_type, os.environ.get("TRITON_INTERPRET"))


def unavailable_reason(name: str, device_type: str | None = None) -> str | None:
    """``None`` if backend ``name`` can run on ``device_type`` (any device if None), else why not."""
    _check_name(name)
    if name == "auto":
        return None
    return _probe(name, device_type)


def available_backends() -> list[str]:
    """Concrete backends that can run on this machine (``"reference"`` always first)."""
    return [n for n in BACKEND_NAMES if _probe(n, None) is None]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"backend: unknown backend {name!r}; expected one of {CHOICES}")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager: ops inside use ``name`` unless a call passes ``backend=``.

    >>> with use_backend("reference"):
    ...     y = flat.ops.normal(x, sens, mask)
    """
    _check_name(name)
    token = _CONTEXT.set(name)
    try:
        yield name
    finally:
        _CONTEXT.reset(token)


def _requested_with_source(backend: str | None) -> tuple[str, str]:
    """(backend name in force, where it came from): keyword > use_backend > FLAT_BACKEND > "auto"."""
    for name, source in ((backend, "backend"), (_CONTEXT.get(), "use_backend"), (os.environ.get("FLAT_BACKEND"), "FLAT_BACKEND")):
        if name:
            if isinstance(name, str):
                name = name.strip().lower()
            if not isinstance(name, str) or name not in CHOICES:
                where = "the environment variable FLAT_BACKEND" if source == "FLAT_BACKEND" else source
                raise ValueError(f"{source}: unknown backend {name!r} (from {where}); expected one of {CHOICES}")
            return name, source
    return "auto", "default"


def requested(backend: str | None = None) -> str:
    """The backend name in force for a call: keyword > use_backend > FLAT_BACKEND > "auto"."""
    return _requested_with_source(backend)[0]


# Under torch.compile the choice is made once, at trace time, and baked into the graph.
@torch.compiler.assume_constant_result
def resolve(backend: str | None, device_type: str) -> str:
    """Turn a requested backend (or ``None``) into a concrete backend for tensors on ``device_type``.

    Raises :class:`BackendUnavailableError` if a backend named explicitly cannot run there.
    """
    name, source = _requested_with_source(backend)
    if name == "auto":
        for cand in _AUTO_ORDER.get(device_type, ("reference",)):
            if _probe(cand, device_type) is None and _loads(cand):
                return cand
        return "reference"
    reason = _probe(name, device_type)
    if reason is not None:
        origin = " (asked for by the environment variable FLAT_BACKEND)" if source == "FLAT_BACKEND" else ""
        raise BackendUnavailableError(f"backend {name!r}{origin} is unavailable: {reason}")
    return name


def _load(name: str) -> _Backend:
    b = _REGISTRY[name]
    if not b.loaded:
        if b.module is not None:
            try:
                importlib.import_module(b.module)
            except ImportError as exc:  # e.g. triton installed but broken
                raise BackendUnavailableError(f"backend {name!r} failed to import: {exc}") from exc
        b.loaded = True
    return b


def _loads(name: str) -> bool:
    """Whether backend ``name`` imports (only "auto" may pass over one that does not)."""
    try:
        _load(name)
        return True
    except BackendUnavailableError:
        return False


def get_impl(name: str, op: str) -> Callable:
    """The implementation of ``op`` for concrete backend ``name``; the reference one if it has none."""
    impl = _load(name).impls.get(op)
    if impl is None:
        impl = _load("reference").impls[op]
    return impl


def implemented_ops(name: str) -> list[str]:
    """Ops that backend ``name`` implements itself (forward and ``*_backward``)."""
    return sorted(_load(name).impls)
