"""Shared test helpers: one tolerance table, random inputs, a comparison that explains failures.

Tolerances are relative to the norm of a complex128 oracle (||got - want|| / ||want||):
complex64 ops chain a few FFTs of length <= 640, each with ~1-2.5e-7 relative error
(docs/kernels.md, precision), so 1e-5 leaves an order of magnitude of headroom while still catching any
real bug (a wrong sign, a missed shift or a dropped coil gives errors of order 1);
complex128 paths are held to 1e-10.
"""
from __future__ import annotations

import numpy as np
import torch

RTOL = {torch.complex64: 1e-5, torch.float32: 1e-5, torch.complex128: 1e-10, torch.float64: 1e-10}


def rel_err(got, want) -> float:
    got = torch.as_tensor(got).detach().to(torch.complex128)
    want = torch.as_tensor(want).detach().to(torch.complex128)
    return float((got - want).abs().norm() / want.abs().norm().clamp_min(1e-300))


def assert_rel_close(got, want, dtype=None, rtol=None, name="output"):
    """Relative-norm check against an oracle; on failure name the worst element and the count."""
    got_t, want_t = torch.as_tensor(got).detach(), torch.as_tensor(want).detach()
    if rtol is None:
        rtol = RTOL[dtype if dtype is not None else got_t.dtype]
    assert got_t.shape == want_t.shape, f"{name}: shape {tuple(got_t.shape)} != {tuple(want_t.shape)}"
    err = rel_err(got_t, want_t)
    if not err <= rtol:  # also fails on NaN
        diff = (got_t.to(torch.complex128) - want_t.to(torch.complex128)).abs()
        scale = want_t.abs().max().clamp_min(1e-300)
        worst = np.unravel_index(int(torch.nan_to_num(diff, nan=np.inf).argmax()), tuple(diff.shape))
        nbad = int((~(diff <= rtol * scale)).sum())
        raise AssertionError(
            f"{name}: relative error {err:.3g} > {rtol:.1g}; worst at {worst}: "
            f"got {got_t[worst].item()}, want {want_t[worst].item()}; {nbad}/{diff.numel()} elements off"
        )


def crandn(*shape, dtype=torch.complex128, generator=None):
    return torch.randn(*shape, dtype=dtype, generator=generator)


def random_sens(B, C, H, W, dtype=torch.complex128, generator=None):
    """Random coil maps normalised so that sum_c |S_c|^2 = 1 everywhere."""
    s = torch.randn(B, C, H, W, dtype=dtype, generator=generator)
    return s / s.abs().pow(2).sum(1, keepdim=True).sqrt()


def column_mask(B, W, frac=0.4, generator=None, dtype=torch.float64):
    """Random column mask (B, W) with the centre column always sampled."""
    m = (torch.rand(B, W, generator=generator) < frac)
    m[:, W // 2] = True
    return m.to(dtype)


def call_public(spec, args, backend=None):
    """Call ``flat.ops.<spec.name>`` with arguments in table order (None where a variant omits one):
    positional for the op's required arguments, keywords for those with defaults (e.g. ``ahy``)."""
    import flat.ops as fo

    pos = [v for a, v in zip(spec.args, args) if not a.has_default]
    kw = {a.name: v for a, v in zip(spec.args, args) if a.has_default}
    return getattr(fo, spec.name)(*pos, **kw, backend=backend)


def variant_label(spec, i):
    """``flow_step`` for the first variant, ``flow_step[ahy]`` for the one that gives ``ahy``, ..."""
    if i == 0:
        return spec.name
    given = [a.name for a in spec.args if a.optional and a.name not in spec.variants[i]]
    return f"{spec.name}[{'+'.join(given)}]"
