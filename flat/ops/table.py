"""The op table: every op of :mod:`flat.ops`, written once.

One :class:`OpSpec` per op names its canonical arguments in order, what each one is, and what
the op returns. Everything that needs to know "which ops exist" reads this table:

* :mod:`flat.ops.library` builds each ``torch.ops.flat.<name>`` schema, fake implementation and
  autograd registration from it;
* :mod:`flat.ops.backends` registers a backend's implementations by looking up, for every entry,
  a function of the same name (and ``<name>_backward``) in the backend's module, so a backend
  declares what it implements by defining it;
* :mod:`flat.ops.opaque` reads which argument is the mask (never differentiated);
* the tests (opcheck, gradcheck, parity of every backend against the oracle) and the benchmark
  grid iterate over it and build inputs with :meth:`OpSpec.sample`.

Adding an op: an entry here, its reference function in :mod:`flat.ops.reference` (forward and
``_backward``), the public wrapper in :mod:`flat.ops` (input checks and layouts), and, if a backend
accelerates it, that backend's functions. The canonical shapes are in docs/operators.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Argument kinds, canonical shapes (docs/operators.md):
IMAGE = "image"  # (B, H, W) complex
COILS = "coils"  # (B, C, H, W) complex: k-space or coil maps
MASK = "mask"  # (Bm, Hm, W) real; Hm == 1 is a column mask
SCALAR = "scalar"  # real tensor of shape () or (B,): dt, lam
INT = "int"  # a Python int (rss's dim)


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str
    optional: bool = False  # may be None (``Tensor?`` in the schema)
    unused_if: Optional[str] = None  # this input does not enter the op when the named one is given
    default: object = None  # schema default for trailing optional/int arguments ("absent" if none)
    has_default: bool = False

    @property
    def differentiable(self) -> bool:
        return self.kind in (IMAGE, COILS, SCALAR)


@dataclass(frozen=True)
class OpSpec:
    name: str
    args: tuple[Arg, ...]
    out: str  # IMAGE, COILS, "like" (same as the first argument) or "reduced" (rss)
    formula: str  # what it computes, for docs and error messages
    variants: tuple[dict, ...] = ({},)  # optional arguments set to None, one dict per test variant
    one_of: tuple[str, ...] = ()  # at least one of these optional arguments must be given
    benchmarked: bool = False  # in the benchmark grid of benchmarks/ (the fused steps users time)
    doc: str = ""  # the public op's docstring (flat.ops.<name>)

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    @property
    def mask_index(self) -> Optional[int]:
        return next((i for i, a in enumerate(self.args) if a.kind == MASK), None)

    @property
    def has_mask(self) -> bool:
        return self.mask_index is not None

    def schema(self) -> str:
        """The ``torch.library`` schema, with the trailing ``backend`` string of every op."""
        parts = []
        for a in self.args:
            typ = "int" if a.kind == INT else ("Tensor?" if a.optional else "Tensor")
            default = ""
            if a.has_default:
                default = "=None" if a.default is None else f"={a.default}"
            parts.append(f"{typ} {a.name}{default}")
        parts.append("str backend='auto'")
        return f"({', '.join(parts)}) -> Tensor"

    def fake(self, *args):
        """Empty output of the right shape, dtype and device (the fake/meta implementation)."""
        first = args[0]
        if self.out == "like":
            return torch.empty_like(first, memory_format=torch.contiguous_format)
        if self.out == COILS:  # the coil maps give (B, C, H, W)
            sens = args[self.arg_names.index("sens")]
            return torch.empty_like(sens, memory_format=torch.contiguous_format)
        if self.out == IMAGE:  # (B, C, H, W) -> (B, H, W)
            return first.new_empty(first.shape[:1] + first.shape[2:])
        if self.out == "reduced":  # real, one dim dropped
            dim = args[1]
            shape = list(first.shape)
            del shape[dim]
            return first.new_empty(shape, dtype=first.real.dtype if first.is_complex() else first.dtype)
        raise AssertionError(self.out)

    def sample(self, B, C, H, W, mask, *, dtype=torch.complex128, generator=None, variant=None,
               requires_grad=False, scalar_shape=(), device="cpu") -> tuple:
        """Canonical inputs for tests and benchmarks: random data, coil maps with Σ|S|² = 1,
        the given ``(Bm, Hm, W)`` mask, dt in (0.1, 1) and lam in (0.5, 2.5) of ``scalar_shape``."""
        variant = self.variants[0] if variant is None else variant
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        out = []
        for a in self.args:
            if a.name in variant:
                out.append(variant[a.name])
                continue
            if a.kind == INT:
                out.append(a.default)
                continue
            if a.kind == MASK:
                out.append(mask.to(device=device, dtype=real))
                continue
            if a.kind == SCALAR:
                lo, span = (0.1, 0.9) if a.name == "dt" else (0.5, 2.0)
                t = torch.rand(scalar_shape, dtype=torch.float64, generator=generator) * span + lo
            else:
                shape = (B, H, W) if a.kind == IMAGE else (B, C, H, W)
                t = torch.randn(shape, dtype=torch.complex128, generator=generator)
                if a.name == "sens":
                    t = t / t.abs().square().sum(1, keepdim=True).sqrt()
            t = t.to(device=device, dtype=real if a.kind == SCALAR else dtype)
            out.append(t.requires_grad_(requires_grad))
        return tuple(out)


def _a(name, kind, **kw) -> Arg:
    return Arg(name, kind, **kw)


_STEP_SCALARS = (_a("dt", SCALAR), _a("lam", SCALAR))

OPS: tuple[OpSpec, ...] = (
    OpSpec("fft2c", (_a("x", COILS),), "like", "fftshift(fft2(ifftshift(x))), orthonormal"),
    OpSpec("ifft2c", (_a("x", COILS),), "like", "fftshift(ifft2(ifftshift(x))), orthonormal"),
    OpSpec("sens_expand", (_a("image", IMAGE), _a("sens", COILS)), COILS, "fft2c(S·x)",
           doc="Coil k-space from an image: ``fft2c(S ⊙ x)`` -> (B, C, H, W)."),
    OpSpec("sens_reduce", (_a("kspace", COILS), _a("sens", COILS)), IMAGE, "Σ_c conj(S_c)·ifft2c(k_c)",
           doc="Coil combination: ``Σ_c conj(S_c) ⊙ ifft2c(k_c)`` -> image (B, H, W)."),
    OpSpec("sense_forward", (_a("image", IMAGE), _a("sens", COILS), _a("mask", MASK)), COILS, "M·fft2c(S·x)",
           doc="``A x = M ⊙ fft2c(S ⊙ x)`` -> masked k-space (B, C, H, W); masked entries are +0.0."),
    OpSpec("sense_adjoint", (_a("kspace", COILS), _a("sens", COILS), _a("mask", MASK)), IMAGE,
           "Σ_c conj(S_c)·ifft2c(M·k_c)", doc="``Aᴴ k = Σ_c conj(S_c) ⊙ ifft2c(M ⊙ k_c)`` -> image (B, H, W)."),
    OpSpec("normal", (_a("image", IMAGE), _a("sens", COILS), _a("mask", MASK)), "like", "Aᴴ A x", benchmarked=True,
           doc="``Aᴴ A x`` -> image."),
    OpSpec("dc_gradient", (_a("image", IMAGE), _a("kspace", COILS), _a("sens", COILS), _a("mask", MASK)),
           "like", "Aᴴ(A x − y)", doc="``Aᴴ (A x − y)``: the gradient of ½‖Ax − y‖² -> image."),
    OpSpec(
        "flow_step",
        (_a("image", IMAGE), _a("velocity", IMAGE), _a("kspace", COILS, optional=True, unused_if="ahy"),
         _a("sens", COILS), _a("mask", MASK), *_STEP_SCALARS,
         _a("ahy", IMAGE, optional=True, default=None, has_default=True)),
        "like", "x + dt·(v − lam·Aᴴ(A x − y))",
        variants=({"ahy": None}, {"kspace": None}),
        one_of=("kspace", "ahy"),
        benchmarked=True,
        doc="One Euler step of the conditional flow: ``x + dt·(v − lam·Aᴴ(A x − y))``.\n\n"
            "``ahy`` is ``Aᴴy`` precomputed (it is the same at every cascade); ``kspace`` may then be None.",
    ),
    OpSpec(
        "kspace_flow_step",
        (_a("kstate", COILS), _a("image_update", IMAGE), _a("kspace", COILS), _a("sens", COILS),
         _a("mask", MASK), *_STEP_SCALARS),
        "like", "k − dt·lam·M·(k − y) + dt·fft2c(S·z)",
        benchmarked=True,
        doc="E2E-VarNet form: ``k − dt·lam·M ⊙ (k − y) + dt·fft2c(S ⊙ z)`` -> k-space (B, C, H, W).",
    ),
    OpSpec("rss", (_a("x", COILS), _a("dim", INT, default=1, has_default=True)), "reduced", "sqrt(Σ |x|²) over dim"),
)

BY_NAME: dict[str, OpSpec] = {s.name: s for s in OPS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def lookup(name: str) -> OpSpec:
    return BY_NAME[name]

