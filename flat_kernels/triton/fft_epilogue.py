"""2-D masks and the k-space form: cuFFT (torch.fft, un-centered, ortho) between fused Triton kernels.

The centered transforms of docs/operators.md are folded into index arithmetic, never materialised:

    fft2c(z)  = fftshift(fft2(ifftshift(z)))      ifftshift(a)[i] = a[(i + n//2) % n]
                                                  fftshift(a)[p]  = a[(p − n//2) % n]

so every kernel here reads or writes one side through those index maps (odd sizes included), and
k-space/mask values are read at their un-shifted positions. The passes per image-form op are

    _expand_kernel  t = ifftshift(S ⊙ x)          (NS stacks: x and, in the backward, g)
    torch.fft.fft2
    _mid_kernel     u = ifftshift(M) ⊙ (t − ifftshift(y))     (in place when t is not reused)
    torch.fft.ifft2
    _reduce_kernel / _bwd2d_kernel: Σ_c conj(S_c)·fftshift(u_c) + Euler epilogue / gradients

and the k-space form is _expand → fft2 → _kspace_kernel. One program per (plane, block of rows)
with whole rows of W in a ~1024-element tile (W ≤ a few hundred in MRI). GPU timing is pending (flat_kernels/NOTES.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import _cload, _cstore


@triton.jit
def _tile(pid, H, W, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program pid covers rows r0 .. r0+BLOCK_R of plane pid // n_rb: (plane, rows (BR,1), cols (1,BW), mask)."""
    n_rb = (H + BLOCK_R - 1) // BLOCK_R
    plane = (pid // n_rb).to(tl.int64)
    rows = (pid % n_rb) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.arange(0, BLOCK_W)[None, :]
    return plane, rows, cols, (rows < H) & (cols < W)


@triton.jit
def _expand_kernel(src_ptr, s_ptr, t_ptr, B, C, H, W, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """t[s, b, c] = ifftshift(S[b, c] ⊙ src[s, b]) on a (BR, BW) tile; grid NS·B·C·⌈H/BR⌉.

    src (NS, B, H, W, 2); S (B, C, H, W, 2); t (NS, B, C, H, W, 2).
    """
    plane, i, j, msk = _tile(tl.program_id(0), H, W, BLOCK_R, BLOCK_W)
    c = plane % C
    b = (plane // C) % B
    s = plane // (C * B)
    hs = (i + H // 2) % H  # ifftshift source row / column
    ws = (j + W // 2) % W
    sr, si = _cload(s_ptr, ((b * C + c) * H + hs) * W + ws, msk)
    xr, xi = _cload(src_ptr, ((s * B + b) * H + hs) * W + ws, msk)
    _cstore(t_ptr, (plane * H + i) * W + j, sr * xr - si * xi, sr * xi + si * xr, msk)


@triton.jit
def _mid_kernel(
    t_ptr, y_ptr, m_ptr, u_ptr,  # (NS,B,C,H,W,2) (B,C,H,W,2) (Bm,Hm,W) (NS,B,C,H,W,2); u may be t
    B, C, H, W, MB, MH,  # MB: mask has a batch dim (0/1); MH: mask has rows (2-D mask, 0/1)
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
    HAS_T: tl.constexpr, Y_SIGN: tl.constexpr, HAS_M: tl.constexpr,
):
    """u = ifftshift(M) ⊙ (t + Y_SIGN·ifftshift(y)); y enters stack 0 only. Masked entries are +0.0."""
    plane, i, j, msk = _tile(tl.program_id(0), H, W, BLOCK_R, BLOCK_W)
    c = plane % C
    b = (plane // C) % B
    s = plane // (C * B)
    hs = (i + H // 2) % H
    ws = (j + W // 2) % W
    off = (plane * H + i) * W + j
    if HAS_T:
        vr, vi = _cload(t_ptr, off, msk)
    else:
        vr = tl.zeros((BLOCK_R, BLOCK_W), dtype=u_ptr.dtype.element_ty)
        vi = tl.zeros((BLOCK_R, BLOCK_W), dtype=u_ptr.dtype.element_ty)
    if Y_SIGN != 0:
        ym = msk & ((i * 0 + s) == 0)  # stack 0 only
        yr, yi = _cload(y_ptr, ((b * C + c) * H + hs) * W + ws, ym)
        vr += Y_SIGN * yr
        vi += Y_SIGN * yi
    if HAS_M:
        hm_rows = (H - 1) * MH + 1  # Hm: H for a 2-D mask, 1 for a column mask
        m = tl.load(m_ptr + ((b * MB) * hm_rows + hs * MH) * W + ws, mask=msk, other=0.0)
        vr = tl.where(m != 0, vr * m, 0.0)
        vi = tl.where(m != 0, vi * m, 0.0)
    _cstore(u_ptr, off, vr, vi, msk)


@triton.jit
def _reduce_kernel(
    v_ptr, s_ptr, x_ptr, vel_ptr, ahy_ptr, z_ptr,  # V (B,C,H,W,2) un-shifted; images (B,H,W,2)
    cd_ptr, ce_ptr, cs_ptr, out_ptr, gs_ptr,  # (B,) x3; out (B,H,W,2); gs (B,C,H,W,2)
    C, H, W,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, HAS_X: tl.constexpr, HAS_V: tl.constexpr,
    HAS_AHY: tl.constexpr, OUT_IMG: tl.constexpr, OUT_S: tl.constexpr,
):
    """Per (b, row block), with u_c = fftshift(V_c); grid B·⌈H/BR⌉:

    out = [HAS_X]·x + d·v − e·(Σ_c conj(S_c)·u_c − ahy)       (OUT_IMG)
    gs_c = cs·u_c·conj(z)                                      (OUT_S: sensitivity gradients)
    """
    b, h, j, msk = _tile(tl.program_id(0), H, W, BLOCK_R, BLOCK_W)
    hv = (h + H - H // 2) % H  # fftshift source row / column
    wv = (j + W - W // 2) % W
    img = (b * H + h) * W + j
    accr = tl.zeros((BLOCK_R, BLOCK_W), dtype=out_ptr.dtype.element_ty)
    acci = tl.zeros((BLOCK_R, BLOCK_W), dtype=out_ptr.dtype.element_ty)
    if OUT_S:
        zr, zi = _cload(z_ptr, img, msk)
        cs = tl.load(cs_ptr + b)
    for c in range(0, C):
        ur, ui = _cload(v_ptr, ((b * C + c) * H + hv) * W + wv, msk)
        if OUT_IMG:
            sr, si = _cload(s_ptr, ((b * C + c) * H + h) * W + j, msk)
            accr += sr * ur + si * ui
            acci += sr * ui - si * ur
        if OUT_S:
            _cstore(gs_ptr, ((b * C + c) * H + h) * W + j, cs * (ur * zr + ui * zi), cs * (ui * zr - ur * zi), msk)
    if OUT_IMG:
        if HAS_AHY:
            ar, ai = _cload(ahy_ptr, img, msk)
            accr -= ar
            acci -= ai
        e = tl.load(ce_ptr + b)
        outr = -e * accr
        outi = -e * acci
        if HAS_X:
            xr, xi = _cload(x_ptr, img, msk)
            outr += xr
            outi += xi
        if HAS_V:
            d = tl.load(cd_ptr + b)
            vr, vi = _cload(vel_ptr, img, msk)
            outr += d * vr
            outi += d * vi
        _cstore(out_ptr, img, outr, outi, msk)


@triton.jit
def _bwd2d_kernel(
    vx_ptr, vg_ptr, s_ptr, g_ptr, x_ptr, v_ptr, ahy_ptr,  # Vx, Vg (B,C,H,W,2) un-shifted
    ce_ptr, gx_ptr, gs_ptr, part_ptr,  # part (B·⌈H/BR⌉, 2)
    C, H, W,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, HAS_X: tl.constexpr, HAS_V: tl.constexpr,
    HAS_AHY: tl.constexpr, NEED_X: tl.constexpr, NEED_S: tl.constexpr, NEED_R: tl.constexpr,
    NEED_PX: tl.constexpr,
):
    """Backward of the generic forward (docs/operators.md, backward) for any mask:

    grad_x = [HAS_X]·g − e·Σ_c conj(S_c)·Vg_c                (AᴴA is Hermitian)
    grad_S_c = −e·[Vx_c·conj(g) + conj(x)·Vg_c]
    part = (Re Σ conj(g)·r, Re Σ conj(g)·v) per program, r = Σ_c conj(S_c)·Vx_c − ahy

    with Vx_c = P(S_c x) − q_c and Vg_c = P(S_c g) from one batched fft2/ifft2 over the stacks (x, g)."""
    pid = tl.program_id(0)
    b, h, j, msk = _tile(pid, H, W, BLOCK_R, BLOCK_W)
    hv = (h + H - H // 2) % H
    wv = (j + W - W // 2) % W
    img = (b * H + h) * W + j
    gr, gi = _cload(g_ptr, img, msk)
    if NEED_PX:
        xr, xi = _cload(x_ptr, img, msk)
    e = tl.load(ce_ptr + b)
    ngr = tl.zeros((BLOCK_R, BLOCK_W), dtype=gr.dtype)
    ngi = tl.zeros((BLOCK_R, BLOCK_W), dtype=gr.dtype)
    rr = tl.zeros((BLOCK_R, BLOCK_W), dtype=gr.dtype)
    ri = tl.zeros((BLOCK_R, BLOCK_W), dtype=gr.dtype)
    for c in range(0, C):
        soff = ((b * C + c) * H + h) * W + j
        voff = ((b * C + c) * H + hv) * W + wv
        sr, si = _cload(s_ptr, soff, msk)
        pgr, pgi = _cload(vg_ptr, voff, msk)
        ngr += sr * pgr + si * pgi
        ngi += sr * pgi - si * pgr
        if NEED_PX:
            pxr, pxi = _cload(vx_ptr, voff, msk)
            rr += sr * pxr + si * pxi
            ri += sr * pxi - si * pxr
            if NEED_S:
                tr = pxr * gr + pxi * gi + xr * pgr + xi * pgi
                ti = pxi * gr - pxr * gi + xr * pgi - xi * pgr
                _cstore(gs_ptr, soff, -e * tr, -e * ti, msk)
    if NEED_X:
        oxr = -e * ngr
        oxi = -e * ngi
        if HAS_X:
            oxr += gr
            oxi += gi
        _cstore(gx_ptr, img, oxr, oxi, msk)
    if NEED_R:
        if HAS_AHY:
            ar, ai = _cload(ahy_ptr, img, msk)
            rr -= ar
            ri -= ai
        tl.store(part_ptr + 2 * pid, tl.sum(tl.sum(gr * rr + gi * ri, axis=1), axis=0))
        if HAS_V:
            vr, vi = _cload(v_ptr, img, msk)
            tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.sum(gr * vr + gi * vi, axis=1), axis=0))
        else:
            tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.sum(gr * 0.0, axis=1), axis=0))


@triton.jit
def _kspace_kernel(
    t_ptr, k_ptr, y_ptr, m_ptr, cd_ptr, ce_ptr, out_ptr,  # T (B,C,H,W,2) un-shifted fft2 output
    C, H, W, MB, MH,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, HAS_K: tl.constexpr, MASK_T: tl.constexpr,
):
    """Per (b, c, row block) of k-space, with T' = fftshift(T) = fft2c(S z):

    out = [HAS_K]·(k − e·M·(k − y)) + d·[MASK_T ? M : 1]·T'      (masked zeros +0.0 when MASK_T only)
    """
    plane, p, j, msk = _tile(tl.program_id(0), H, W, BLOCK_R, BLOCK_W)
    b = plane // C
    hv = (p + H - H // 2) % H
    wv = (j + W - W // 2) % W
    off = (plane * H + p) * W + j
    tr, ti = _cload(t_ptr, (plane * H + hv) * W + wv, msk)
    hm_rows = (H - 1) * MH + 1
    m = tl.load(m_ptr + ((b * MB) * hm_rows + p * MH) * W + j, mask=msk, other=0.0)
    d = tl.load(cd_ptr + b)
    if MASK_T:
        outr = tl.where(m != 0, d * m * tr, 0.0)
        outi = tl.where(m != 0, d * m * ti, 0.0)
    else:
        outr = d * tr
        outi = d * ti
    if HAS_K:
        e = tl.load(ce_ptr + b)
        kr, ki = _cload(k_ptr, off, msk)
        yr, yi = _cload(y_ptr, off, msk)
        outr += kr - e * m * (kr - yr)
        outi += ki - e * m * (ki - yi)
    _cstore(out_ptr, off, outr, outi, msk)


@triton.jit
def _kbwd_kernel(
    g_ptr, k_ptr, y_ptr, t_ptr, m_ptr, ce_ptr, gk_ptr, gy_ptr, part_ptr,
    C, H, W, MB, MH,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
    NEED_K: tl.constexpr, NEED_Y: tl.constexpr, NEED_R: tl.constexpr,
):
    """Backward of out = k − e·M(k − y) + d·fft2c(S z), per (b, c, row block):

    grad_k = g − e·M·g;  grad_y = e·M·g (masked zeros +0.0);
    part[pid] = (Re Σ conj(g)·M(k − y), Re Σ conj(g)·fft2c(S z))   for grad_dt / grad_lam.
    """
    pid = tl.program_id(0)
    plane, p, j, msk = _tile(pid, H, W, BLOCK_R, BLOCK_W)
    b = plane // C
    off = (plane * H + p) * W + j
    gr, gi = _cload(g_ptr, off, msk)
    hm_rows = (H - 1) * MH + 1
    m = tl.load(m_ptr + ((b * MB) * hm_rows + p * MH) * W + j, mask=msk, other=0.0)
    e = tl.load(ce_ptr + b)
    if NEED_K:
        _cstore(gk_ptr, off, gr - e * m * gr, gi - e * m * gi, msk)
    if NEED_Y:
        _cstore(gy_ptr, off, tl.where(m != 0, e * m * gr, 0.0), tl.where(m != 0, e * m * gi, 0.0), msk)
    if NEED_R:
        kr, ki = _cload(k_ptr, off, msk)
        yr, yi = _cload(y_ptr, off, msk)
        hv = (p + H - H // 2) % H
        wv = (j + W - W // 2) % W
        tr, ti = _cload(t_ptr, (plane * H + hv) * W + wv, msk)
        tl.store(part_ptr + 2 * pid, tl.sum(tl.sum(m * (gr * (kr - yr) + gi * (ki - yi)), axis=1), axis=0))
        tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.sum(gr * tr + gi * ti, axis=1), axis=0))


# ---------------------------------------------------------------- launchers
def _tiling(H: int, W: int):
    """(BLOCK_R, BLOCK_W, row blocks per plane): tiles of ~1024 elements (whole rows of W), which
    compile without register spills at 4 warps on sm_90 (checked with cuobjdump -res-usage)."""
    BW = cm.pow2(W, 1)
    BR = max(1, min(cm.pow2(H, 1), 1024 // BW))
    return BR, BW, triton.cdiv(H, BR)


def _mask_flags(mask):
    """(MB, MH): mask has a batch dim / rows (2-D mask)."""
    return int(mask.shape[0] > 1), int(mask.shape[1] > 1)


def expand_fft(src: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """fft2(ifftshift(S ⊙ src_s)) for stacked images src (NS, B, H, W) -> (NS, B, C, H, W) un-shifted."""
    NS, B, H, W = src.shape
    C = sens.shape[1]
    t = cm.empty_complex((NS, B, C, H, W), sens)  # every element written by the kernel
    BR, BW, nrb = _tiling(H, W)
    _expand_kernel[(NS * B * C * nrb,)](
        cm.rv(src), cm.rv(sens), torch.view_as_real(t), B, C, H, W, BLOCK_R=BR, BLOCK_W=BW,
    )
    return torch.fft.fft2(t, norm="ortho")


def mid_ifft(t, y, mask, y_sign: int, shape, dtype_like, in_place: bool = True) -> torch.Tensor:
    """ifft2(ifftshift(M) ⊙ (t + y_sign·ifftshift(y))) -> (NS, B, C, H, W) un-shifted image-side coils.

    ``t`` (NS, B, C, H, W) un-shifted spectrum or None; ``y`` centered k-space (B, C, H, W) or None;
    ``mask`` (Bm, Hm, W) or None (no mask).
    """
    NS, B, C, H, W = shape
    if t is not None and in_place:
        u = t
    else:
        u = cm.empty_complex(shape, dtype_like)
    MB, MH = _mask_flags(mask) if mask is not None else (0, 0)
    ur = torch.view_as_real(u)
    BR, BW, nrb = _tiling(H, W)
    _mid_kernel[(NS * B * C * nrb,)](
        cm.rv(t) if t is not None else ur, cm.rv(y) if y is not None else ur,
        mask.contiguous() if mask is not None else ur, ur,
        B, C, H, W, MB, MH,
        BLOCK_R=BR, BLOCK_W=BW, HAS_T=t is not None, Y_SIGN=int(y_sign) if y is not None else 0,
        HAS_M=mask is not None,
    )
    return torch.fft.ifft2(u, norm="ortho")


def adjoint_coils(y, mask) -> torch.Tensor:
    """Q_c = ifft2(ifftshift(M y_c)), i.e. ifft2c(M y_c) stored un-shifted: (B, C, H, W)."""
    return mid_ifft(None, y, mask, +1, (1,) + tuple(y.shape), y)[0]


def reduce_image(V, sens, x=None, vel=None, ahy=None, z=None, cd=None, ce=None, cs=None,
                 out_img: bool = True, out_s: bool = False):
    """Launch _reduce_kernel (see its docstring). V (B, C, H, W) un-shifted. Returns (out, gs)."""
    B, C, H, W = sens.shape
    out = cm.empty_complex((B, H, W), sens) if out_img else None
    gs = cm.empty_complex((B, C, H, W), sens) if out_s else None
    Vr = cm.rv(V)
    dummy_r = ce if ce is not None else cs
    BR, BW, nrb = _tiling(H, W)
    _reduce_kernel[(B * nrb,)](
        Vr, cm.rv(sens), cm.rv(x) if x is not None else Vr, cm.rv(vel) if vel is not None else Vr,
        cm.rv(ahy) if ahy is not None else Vr, cm.rv(z) if z is not None else Vr,
        cd if cd is not None else dummy_r, ce if ce is not None else dummy_r, cs if cs is not None else dummy_r,
        torch.view_as_real(out) if out is not None else Vr, torch.view_as_real(gs) if gs is not None else Vr,
        C, H, W,
        BLOCK_R=BR, BLOCK_W=BW, HAS_X=x is not None, HAS_V=vel is not None, HAS_AHY=ahy is not None,
        OUT_IMG=out_img, OUT_S=out_s,
    )
    return out, gs


def image_forward(x, vel, y, ahy, sens, mask, cd, ce, has_x: bool):
    """Generic image-form forward (flat_kernels/NOTES.md, "One generic step") for any mask, through torch.fft."""
    B, C, H, W = sens.shape
    T = expand_fft(x.unsqueeze(0), sens)
    V = mid_ifft(T, y, mask, -1, T.shape, sens)[0]
    return reduce_image(V, sens, x=x if has_x else None, vel=vel, ahy=ahy, cd=cd, ce=ce)[0]


def image_backward(g, x, vel, y, ahy, sens, mask, ce, has_x, need_x, need_s, need_r, need_y):
    """Backward of ``image_forward`` for any mask; returns (gx, gs, part, T_g) where T_g is the
    un-shifted fft2 of ifftshift(S g) (reused for grad_y by the caller) or None."""
    B, C, H, W = sens.shape
    need_px = need_s or need_r
    if not (need_x or need_px or need_y):
        return None, None, None, None
    src = torch.stack((x, g)) if need_px else g.unsqueeze(0)
    T = expand_fft(src, sens)
    Tg = T[-1] if need_y else None
    V = mid_ifft(T, y if need_px else None, mask, -1, T.shape, sens, in_place=not need_y)
    gx = cm.empty_complex((B, H, W), g) if need_x else None
    gs = cm.empty_complex((B, C, H, W), g) if need_s else None
    BR, BW, nrb = _tiling(H, W)
    part = cm.empty_real((B * nrb, 2), cm.real_dtype(g), g.device) if need_r else None
    if need_x or need_px:
        Vg = cm.rv(V[-1])
        gr = cm.rv(g)
        _bwd2d_kernel[(B * nrb,)](
            cm.rv(V[0]) if need_px else Vg, Vg, cm.rv(sens), gr, cm.rv(x),
            cm.rv(vel) if vel is not None else gr, cm.rv(ahy) if ahy is not None else gr,
            ce, torch.view_as_real(gx) if gx is not None else gr,
            torch.view_as_real(gs) if gs is not None else gr, part if part is not None else ce,
            C, H, W,
            BLOCK_R=BR, BLOCK_W=BW, HAS_X=has_x, HAS_V=vel is not None, HAS_AHY=ahy is not None,
            NEED_X=need_x, NEED_S=need_s, NEED_R=need_r, NEED_PX=need_px,
        )
    return gx, gs, part, Tg


def kspace_out(T, k, y, mask, cd, ce, has_k: bool, mask_t: bool):
    """Launch _kspace_kernel: T (B, C, H, W) un-shifted spectrum -> (B, C, H, W) centered k-space."""
    B, C, H, W = T.shape
    out = cm.empty_complex((B, C, H, W), T)
    MB, MH = _mask_flags(mask)
    Tr = cm.rv(T)
    BR, BW, nrb = _tiling(H, W)
    _kspace_kernel[(B * C * nrb,)](
        Tr, cm.rv(k) if k is not None else Tr, cm.rv(y) if y is not None else Tr, mask.contiguous(),
        cd, ce if ce is not None else cd, torch.view_as_real(out),
        C, H, W, MB, MH, BLOCK_R=BR, BLOCK_W=BW, HAS_K=has_k, MASK_T=mask_t,
    )
    return out


def kspace_backward_terms(g, k, y, T, mask, ce, need_k: bool, need_y: bool, need_r: bool):
    """Launch _kbwd_kernel; returns (grad_k | None, grad_y | None, part (B·C·⌈H/BR⌉, 2) | None)."""
    B, C, H, W = g.shape
    gk = cm.empty_complex(g.shape, g) if need_k else None
    gy = cm.empty_complex(g.shape, g) if need_y else None
    BR, BW, nrb = _tiling(H, W)
    part = cm.empty_real((B * C * nrb, 2), cm.real_dtype(g), g.device) if need_r else None
    MB, MH = _mask_flags(mask)
    gr = cm.rv(g)
    _kbwd_kernel[(B * C * nrb,)](
        gr, cm.rv(k) if need_r else gr, cm.rv(y) if need_r else gr, cm.rv(T) if need_r else gr,
        mask.contiguous(), ce,
        torch.view_as_real(gk) if gk is not None else gr, torch.view_as_real(gy) if gy is not None else gr,
        part if part is not None else ce,
        C, H, W, MB, MH, BLOCK_R=BR, BLOCK_W=BW, NEED_K=need_k, NEED_Y=need_y, NEED_R=need_r,
    )
    return gk, gy, part
