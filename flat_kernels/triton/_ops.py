"""The Triton backend's op implementations on canonical tensors (contract: flat/ops/backends.py).

Every function here named like an op of flat/ops/table.py (or ``<op>_backward``) is registered as
the Triton implementation of that op; the others are helpers.

Routing: a column mask (Hm == 1, the fastMRI case) of width W = 16·N2 takes the fused row kernel
of monarch.py (factored DFT along W); other widths and 2-D masks take the cuFFT + Triton
prologue/epilogue path of fft_epilogue.py. Aᴴy, when not given, enters the row kernel as
ahy = Σ_c conj(S_c)·q_c with the per-coil q_c = ifft2c(M y_c) (one masked ifft2 pass, fft_epilogue).

The image-form ops are instances of one generic step (monarch.py docstring; flat_kernels/NOTES.md):

    out = [a]·x + d·v − e·(AᴴA x − b),   b = ahy, or Aᴴy from y, or 0
    flow_step: a=1, d=dt, e=dt·lam        normal: e=−1, b=0        dc_gradient: e=−1, b=Aᴴy

with the backward (docs/operators.md, backward): grad_x = a·g − e·AᴴA g, grad_v = d·g, grad_ahy = e·g,
grad_y = e·A g, grad_S from the fused backward kernels, grad_dt/grad_lam from per-row partial sums.
"""
from __future__ import annotations

import torch

from . import _common as cm
from . import fft_epilogue as fe
from . import monarch as mn


def row_module(W: int):
    """The row-kernel family the launchers use for a column mask of width W: the factored DFT
    (monarch.py) when W = 16·N2, else None — those widths take the 2-D path (fft_epilogue.py),
    whose kernels do not spill. (A sampled-DFT row kernel for any W spilled registers in every
    tiling tried on sm_90 and was deleted: flat_kernels/NOTES.md, "Column mask: the row kernels".)"""
    return mn if mn.supported(W) else None


def _is_column(mask: torch.Tensor) -> bool:
    return mask.shape[1] == 1


def _row_path(sens: torch.Tensor, mask: torch.Tensor) -> bool:
    return _is_column(mask) and row_module(sens.shape[-1]) is not None


def _ahy_from_q(q, sens):
    """Σ_c conj(S_c)·q_c for the per-coil q_c of fft_epilogue.adjoint_coils (stored un-shifted)."""
    B, rd = sens.shape[0], cm.real_dtype(sens)
    return fe.reduce_image(q, sens, ce=cm.const(-1.0, B, rd, sens.device))[0]


def _generic_forward(x, v, y, ahy, sens, mask, cd, ce, has_x):
    if _row_path(sens, mask):
        if y is not None:  # Aᴴy from y: Σ_c conj(S_c)·q_c, q_c = ifft2c(M y_c) (monarch.py docstrings)
            ahy = _ahy_from_q(fe.adjoint_coils(y, mask), sens)
        return mn.row_forward(x, v, ahy, sens, mask, cd, ce, has_x)
    return fe.image_forward(x, v, y, ahy, sens, mask, cd, ce, has_x)


def _generic_backward(g, x, v, y, ahy, sens, mask, ce, has_x, need_x, need_s, need_r, need_y):
    """Returns (grad_x, grad_S, part (B, rows, 2) | None, grad_y); y is given iff b = Aᴴy from y."""
    B = sens.shape[0]
    gx = gs = part = gy = None
    if _row_path(sens, mask):
        if need_x or need_s or need_r:
            # q_c only where the S- or r-terms need Aᴴy's per-coil pieces (recomputed, never saved)
            q = fe.adjoint_coils(y, mask) if (y is not None and (need_s or need_r)) else None
            if q is not None and need_r:
                ahy = _ahy_from_q(q, sens)
            gx, gs, part = mn.row_backward(g, x, v, ahy, sens, mask, ce, has_x, need_x, need_s, need_r)
            if q is not None and need_s:  # the −q_c part of grad_S_c = −e·[(P(S_c x) − q_c)·conj(g) + …]
                gs = gs + fe.reduce_image(q, sens, z=g, cs=ce, out_img=False, out_s=True)[1]
        Tg = fe.expand_fft(g.unsqueeze(0), sens)[0] if need_y else None
    else:
        gx, gs, part, Tg = fe.image_backward(g, x, v, y, ahy, sens, mask, ce, has_x, need_x, need_s, need_r, need_y)
    if need_y:
        gy = fe.kspace_out(Tg, None, None, mask, ce, None, has_k=False, mask_t=True)  # e·M·fft2c(S g)
    if part is not None:
        part = part.view(B, -1, 2)
    return gx, gs, part, gy


def _coefs(dt, lam, B, like):
    """Per-sample (B,) dt, lam and their product e = dt·lam in the real dtype of ``like``."""
    rd = cm.real_dtype(like)
    cd = cm.per_batch(dt, B, rd, like.device)
    lamb = cm.per_batch(lam, B, rd, like.device)
    return cd, lamb, cd * lamb


# ---------------------------------------------------------------- forward ops
def flow_step(image, velocity, kspace, sens, mask, dt, lam, ahy):
    cd, _, ce = _coefs(dt, lam, image.shape[0], image)
    return _generic_forward(image, velocity, kspace if ahy is None else None, ahy, sens, mask, cd, ce, True)


def normal(image, sens, mask):
    B, rd = image.shape[0], cm.real_dtype(image)
    ce = cm.const(-1.0, B, rd, image.device)
    return _generic_forward(image, None, None, None, sens, mask, ce, ce, False)


def dc_gradient(image, kspace, sens, mask):
    B, rd = image.shape[0], cm.real_dtype(image)
    ce = cm.const(-1.0, B, rd, image.device)
    return _generic_forward(image, None, kspace, None, sens, mask, ce, ce, False)


def sense_forward(image, sens, mask):
    B, rd = image.shape[0], cm.real_dtype(image)
    one = cm.const(1.0, B, rd, image.device)
    return fe.kspace_out(fe.expand_fft(image.unsqueeze(0), sens)[0], None, None, mask, one, None, False, True)


def sense_adjoint(kspace, sens, mask):
    B, rd = kspace.shape[0], cm.real_dtype(kspace)
    ce = cm.const(-1.0, B, rd, kspace.device)
    return fe.reduce_image(fe.adjoint_coils(kspace, mask), sens, ce=ce)[0]


def kspace_flow_step(kstate, image_update, kspace, sens, mask, dt, lam):
    cd, _, ce = _coefs(dt, lam, kstate.shape[0], kstate)
    T = fe.expand_fft(image_update.unsqueeze(0), sens)[0]
    return fe.kspace_out(T, kstate, kspace, mask, cd, ce, has_k=True, mask_t=False)


# ---------------------------------------------------------------- backward ops: fn(grad, inputs, needs)
def _scalar_grads(part, dt, lam, cd, lamb, need_dt, need_lam):
    """flow_step: grad_dt = Σ (Re⟨g, v⟩ − lam·Re⟨g, r⟩), grad_lam = −dt·Σ Re⟨g, r⟩ (per batch)."""
    s_r, s_v = part[..., 0], part[..., 1]
    gdt = cm.reduce_scalar_grad(s_v - lamb[:, None] * s_r, dt) if need_dt else None
    glam = cm.reduce_scalar_grad(-cd[:, None] * s_r, lam) if need_lam else None
    return gdt, glam


def flow_step_backward(g, inputs, needs):
    image, velocity, kspace, sens, mask, dt, lam, ahy = inputs
    g = g.contiguous()
    B = image.shape[0]
    cd, lamb, ce = _coefs(dt, lam, B, image)
    need_r = bool(needs[5] or needs[6])
    y = kspace if ahy is None else None
    gx, gs, part, gy = _generic_backward(
        g, image, velocity if need_r else None, y, ahy, sens, mask, ce, True,
        bool(needs[0]), bool(needs[3]), need_r, bool(needs[2]) and ahy is None,
    )
    gv = (cd[:, None, None] * g).to(g.dtype) if needs[1] else None
    gahy = (ce[:, None, None] * g).to(g.dtype) if (ahy is not None and needs[7]) else None
    gdt = glam = None
    if need_r:
        gdt, glam = _scalar_grads(part, dt, lam, cd, lamb, needs[5], needs[6])
    return gx, gv, gy, gs, None, gdt, glam, gahy


def normal_backward(g, inputs, needs):
    image, sens, mask = inputs
    B, rd = image.shape[0], cm.real_dtype(image)
    ce = cm.const(-1.0, B, rd, image.device)
    gx, gs, _, _ = _generic_backward(
        g.contiguous(), image, None, None, None, sens, mask, ce, False, bool(needs[0]), bool(needs[1]), False, False
    )
    return gx, gs, None


def dc_gradient_backward(g, inputs, needs):
    image, kspace, sens, mask = inputs
    B, rd = image.shape[0], cm.real_dtype(image)
    ce = cm.const(-1.0, B, rd, image.device)
    gx, gs, _, gy = _generic_backward(
        g.contiguous(), image, None, kspace, None, sens, mask, ce, False,
        bool(needs[0]), bool(needs[2]), False, bool(needs[1]),
    )
    return gx, gy, gs, None


def sense_forward_backward(g, inputs, needs):
    image, sens, mask = inputs
    B, rd = image.shape[0], cm.real_dtype(image)
    if not (needs[0] or needs[1]):
        return None, None, None
    U = fe.adjoint_coils(g.contiguous(), mask)  # ifft2c(M g) per coil, un-shifted
    gx, gs = fe.reduce_image(
        U, sens, z=image, ce=cm.const(-1.0, B, rd, image.device), cs=cm.const(1.0, B, rd, image.device),
        out_img=bool(needs[0]), out_s=bool(needs[1]),
    )
    return gx, gs, None


def sense_adjoint_backward(g, inputs, needs):
    kspace, sens, mask = inputs
    B, rd = kspace.shape[0], cm.real_dtype(kspace)
    g = g.contiguous()
    gy = sense_forward(g, sens, mask) if needs[0] else None
    gs = None
    if needs[1]:  # grad_S_c = conj(g)·ifft2c(M y_c)
        _, gs = fe.reduce_image(
            fe.adjoint_coils(kspace, mask), sens, z=g, cs=cm.const(1.0, B, rd, g.device), out_img=False, out_s=True
        )
    return gy, gs, None


def kspace_flow_step_backward(g, inputs, needs):
    kstate, image_update, kspace, sens, mask, dt, lam = inputs
    g = g.contiguous()
    B = kstate.shape[0]
    cd, lamb, ce = _coefs(dt, lam, B, kstate)
    need_r = bool(needs[5] or needs[6])
    gk = gy = gz = gs = gdt = glam = None
    if needs[0] or needs[2] or need_r:
        T = fe.expand_fft(image_update.unsqueeze(0), sens)[0] if need_r else None  # recomputed fft2(S z)
        gk, gy, part = fe.kspace_backward_terms(g, kstate, kspace, T, mask, ce, bool(needs[0]), bool(needs[2]), need_r)
        if need_r:
            part = part.view(B, -1, 2)
            s_m, s_t = part[..., 0], part[..., 1]  # Re⟨g, M(k − y)⟩, Re⟨g, fft2c(S z)⟩
            gdt = cm.reduce_scalar_grad(s_t - lamb[:, None] * s_m, dt) if needs[5] else None
            glam = cm.reduce_scalar_grad(-cd[:, None] * s_m, lam) if needs[6] else None
    if needs[1] or needs[3]:
        G = fe.mid_ifft(None, g, None, +1, (1,) + tuple(g.shape), g)[0]  # ifft2c(g_c), un-shifted
        gz, gs = fe.reduce_image(
            G, sens, z=image_update, ce=-cd, cs=cd, out_img=bool(needs[1]), out_s=bool(needs[3])
        )
    return gk, gz, gy, gs, None, gdt, glam

