"""Column-mask row kernels with a factored (four-step / Monarch) DFT along W (docs/triton_row_kernel.md).

For a column mask the H transform cancels and, because a masked DFT pair along W is circulant,
the centering shifts cancel too (docs/operators.md, "The column-mask identity"):

    P z = F_Wᴴ diag(ifftshift(m)) F_W z          (plain, un-centered orthonormal DFT along W)

For W = 16·N2 the length-W DFT factors (Cooley–Tukey, n = N2·n1 + n2, k = k1 + 16·k2) into

    Y[n2, k1]  = Σ_n1 z[N2·n1 + n2] F16[n1, k1]       step 1: 16-point DFT      (tl.dot, K = 16)
    Y'[n2, k1] = Y[n2, k1] · ω_W^(n2·k1)               twiddle
    X[k1, k2]  = Σ_n2 Y'[n2, k1] F_N2[n2, k2]          step 2: N2-point DFT     (tl.dot, K = N2)

so a coil row costs 16·(16 + N2) complex MACs per direction instead of W·n_s for a sampled DFT
(the retired design D, flat_kernels/NOTES.md) and every MMA tile is distinct (coils·n2 rows fill
the M side). A program handles one image row (b, h), coils in chunks of BLOCK_C, with the chunk's
coil rows as a tile ``[(c, n2), n1]`` — rows coil·N2 (padded to BLOCK_N2), 16 columns — the
natural memory layout of w = N2·n1 + n2. Step 2 needs n2 as the contraction axis: one transpose
per direction (reshape/permute, through shared memory). The inverse runs the steps backwards, so
the result comes back in the load layout; the coil reduction Σ_c conj(S_c)·P(S_c x) and the Euler
epilogue are fused before the one store. The kernel reads the mask row itself (no host work, graph-safe).

The generic step (flat_kernels/NOTES.md, "One generic step"):

    out = [HAS_X]·x + d·v − e·(Σ_c conj(S_c)·P(S_c x) − ahy)

(d, e per batch: flow_step d = dt, e = dt·lam; normal/dc_gradient e = −1), with the backward of
docs/operators.md. Used when W = 16·N2 with N2 ≤ 64 (``supported``; fastMRI's knee 368 and brain
320); other widths take the 2-D path (fft_epilogue.py).

The complex64 forward at tf32x3 runs ``_mt_fwd_kernel`` instead (Triton ≥ 3.9): the same step with
tiles [row, n2] and no transposes, Gauss' three-product complex multiply and a hand tf32x3 split
(docs/triton_row_kernel.md, "The complex64 forward").
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import _cload, _cstore

N1 = 16  # the power-of-two factor of W (one MMA K-step of 16)


@triton.jit
def _cmm(ar, ai, t_ptr, boff, PLANE: tl.constexpr, CONJ: tl.constexpr, PREC: tl.constexpr):
    """(ar + i·ai) @ B, or @ conj(B), for a table B stored as planes [re, im] of PLANE elements
    each: four real products (tf32x3 is Triton's own three-product split, ≈ fp32 accuracy, docs/
    triton_row_kernel.md). Only two B planes exist, so the compiler keeps two B operands, not three."""
    br = tl.load(t_ptr + boff)
    bi = tl.load(t_ptr + PLANE + boff)
    rr = tl.dot(ar, br, input_precision=PREC)
    ri = tl.dot(ai, br, input_precision=PREC)
    if CONJ:  # re = ar·Br + ai·Bi, im = ai·Br − ar·Bi
        rr += tl.dot(ai, bi, input_precision=PREC)
        ri -= tl.dot(ar, bi, input_precision=PREC)
    else:  # re = ar·Br − ai·Bi, im = ai·Br + ar·Bi
        rr -= tl.dot(ai, bi, input_precision=PREC)
        ri += tl.dot(ar, bi, input_precision=PREC)
    return rr, ri


@triton.jit
def _swap(t, BLOCK_C: tl.constexpr, A: tl.constexpr, Bd: tl.constexpr):
    """[(c, a), b] -> [(c, b), a] for a (BLOCK_C·A, Bd) tile."""
    t = tl.reshape(t, (BLOCK_C, A, Bd))
    t = tl.permute(t, (0, 2, 1))
    return tl.reshape(t, (BLOCK_C * Bd, A))


@triton.jit
def _project(zr, zi, f1_ptr, f2_ptr, twr, twi, m_ptr, mrow, W, N2,
             BLOCK_C: tl.constexpr, BLOCK_N2: tl.constexpr, PREC: tl.constexpr):
    """P z for a chunk of coil rows in layout [(c, n2), n1] (BLOCK_C·BLOCK_N2, 16); same layout out."""
    R1: tl.constexpr = BLOCK_C * BLOCK_N2
    R2: tl.constexpr = BLOCK_C * 16
    o16 = tl.arange(0, 16)
    on2 = tl.arange(0, BLOCK_N2)
    f1off = o16[:, None] * 16 + o16[None, :]
    f2off = on2[:, None] * BLOCK_N2 + on2[None, :]
    # twiddle ω_W^(n2·k1) as a (R1, 16) tile, repeated over the coil chunk
    i1 = tl.arange(0, R1)
    twoff = (i1 % BLOCK_N2)[:, None] * 16 + o16[None, :]
    tr = tl.load(twr + twoff)
    ti = tl.load(twi + twoff)
    # step 1: 16-point DFT over n1
    yr, yi = _cmm(zr, zi, f1_ptr, f1off, 256, False, PREC)  # [(c, n2), k1]
    ur = yr * tr - yi * ti
    ui = yr * ti + yi * tr
    ur = _swap(ur, BLOCK_C, BLOCK_N2, 16)  # [(c, k1), n2]
    ui = _swap(ui, BLOCK_C, BLOCK_N2, 16)
    # step 2: N2-point DFT over n2 -> X[(c, k1), k2], k = k1 + 16·k2
    xr, xi = _cmm(ur, ui, f2_ptr, f2off, BLOCK_N2 * BLOCK_N2, False, PREC)
    i2 = tl.arange(0, R2)
    k = (i2 % 16)[:, None] + 16 * on2[None, :]
    km = (on2 < N2)[None, :] & (i2 >= 0)[:, None]
    mv = tl.load(m_ptr + mrow * W + (k + W // 2) % W, mask=km, other=0.0)  # ifftshift(m)[k]
    xr = xr * mv
    xi = xi * mv
    # inverse step 2 (F_N2 is symmetric: F_N2ᴴ = conj(F_N2)), back to [(c, k1), n2]
    ur, ui = _cmm(xr, xi, f2_ptr, f2off, BLOCK_N2 * BLOCK_N2, True, PREC)
    ur = _swap(ur, BLOCK_C, 16, BLOCK_N2)  # [(c, n2), k1]
    ui = _swap(ui, BLOCK_C, 16, BLOCK_N2)
    tr = tl.load(twr + twoff)
    ti = tl.load(twi + twoff)
    yr = ur * tr + ui * ti  # conj twiddle
    yi = ui * tr - ur * ti
    return _cmm(yr, yi, f1_ptr, f1off, 256, True, PREC)  # inverse step 1 -> [(c, n2), n1]


@triton.jit
def _mn_fwd_kernel(
    x_ptr, v_ptr, ahy_ptr, s_ptr,  # (B,H,W,2) x3, (B,C,H,W,2)
    f1_ptr, f2_ptr, twr, twi, m_ptr,  # tables (2,16,16) (2,BN2,BN2) (BN2,16) x2; mask (Bm, W)
    cd_ptr, ce_ptr, out_ptr,
    C, H, W, N2, MB,
    BLOCK_C: tl.constexpr, BLOCK_N2: tl.constexpr,
    HAS_X: tl.constexpr, HAS_V: tl.constexpr, HAS_AHY: tl.constexpr,
    PREC: tl.constexpr,
):
    """out = [HAS_X]·x + d·v − e·(Σ_c conj(S_c)·P(S_c x) − ahy), one program per row (b, h).
    (Aᴴy from y enters as ahy = Σ_c conj(S_c)·q_c, computed by the caller: a per-coil q_c operand
    here spilled registers on sm_90.)"""
    R1: tl.constexpr = BLOCK_C * BLOCK_N2
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    b64 = b.to(tl.int64)
    mrow = b * MB
    o16 = tl.arange(0, 16)
    i1 = tl.arange(0, R1)
    cl = i1 // BLOCK_N2
    n2 = i1 % BLOCK_N2
    w = N2 * o16[None, :] + n2[:, None]  # (R1, 16): w = N2·n1 + n2
    wv = (n2 < N2)[:, None] & (o16 >= 0)[None, :]
    row = (b64 * H + h) * W
    accr = tl.zeros((BLOCK_N2, 16), dtype=twr.dtype.element_ty)
    acci = tl.zeros((BLOCK_N2, 16), dtype=twr.dtype.element_ty)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cl
        msk = wv & (c < C)[:, None]
        # int64 scalar base + int32 tile offsets (per-element int64 offsets cost registers)
        sbase = s_ptr + 2 * (((b64 * C + c0) * H + h) * W)
        soff = cl[:, None] * (H * W) + w
        sr, si = _cload(sbase, soff, msk)
        xr, xi = _cload(x_ptr + 2 * row, w, wv)  # x repeated over the coil chunk
        pr, pi = _project(sr * xr - si * xi, sr * xi + si * xr, f1_ptr, f2_ptr, twr, twi, m_ptr, mrow,
                          W, N2, BLOCK_C, BLOCK_N2, PREC)
        sr, si = _cload(sbase, soff, msk)
        tr = tl.reshape(sr * pr + si * pi, (BLOCK_C, BLOCK_N2, 16))
        ti = tl.reshape(sr * pi - si * pr, (BLOCK_C, BLOCK_N2, 16))
        accr += tl.sum(tr, axis=0)
        acci += tl.sum(ti, axis=0)
    on2 = tl.arange(0, BLOCK_N2)
    wo = N2 * o16[None, :] + on2[:, None]
    wm = (on2 < N2)[:, None] & (o16 >= 0)[None, :]
    if HAS_AHY:
        ar, ai = _cload(ahy_ptr + 2 * row, wo, wm)
        accr -= ar
        acci -= ai
    e = tl.load(ce_ptr + b)
    outr = -e * accr
    outi = -e * acci
    if HAS_X:
        yr, yi = _cload(x_ptr + 2 * row, wo, wm)
        outr += yr
        outi += yi
    if HAS_V:
        d = tl.load(cd_ptr + b)
        vr, vi = _cload(v_ptr + 2 * row, wo, wm)
        outr += d * vr
        outi += d * vi
    _cstore(out_ptr + 2 * row, wo, outr, outi, wm)


@triton.jit
def _mn_bwd_kernel(
    g_ptr, x_ptr, v_ptr, ahy_ptr, s_ptr,
    f1_ptr, f2_ptr, twr, twi, m_ptr,
    ce_ptr, gx_ptr, gs_ptr, part_ptr,  # (B,) (B,H,W,2) (B,C,H,W,2) (B*H, 2)
    C, H, W, N2, MB,
    BLOCK_C: tl.constexpr, BLOCK_N2: tl.constexpr,
    HAS_X: tl.constexpr, HAS_V: tl.constexpr, HAS_AHY: tl.constexpr,
    NEED_X: tl.constexpr, NEED_S: tl.constexpr, NEED_R: tl.constexpr, PASS: tl.constexpr,
    PREC: tl.constexpr,
):
    """Backward of the generic forward (docs/operators.md, backward), one program per row, in
    launches of ONE projection each (a kernel with both projections spilled registers):

    grad_x = [HAS_X]·g − e·Σ_c conj(S_c) P(S_c g)   (AᴴA is Hermitian)
    grad_S_c = −e·[P(S_c x)·conj(g) + conj(x)·P(S_c g)]   (the −q_c term is added by the caller)

    PASS 1 (when NEED_S or NEED_R): t_c = P(S_c x); writes t_c into the grad_S buffer (NEED_S)
        and part[row] = (Re Σ_w conj(g)·r, Re Σ_w conj(g)·v), r = Σ_c conj(S_c) t_c − ahy (NEED_R;
        with Aᴴy from y the caller passes ahy = Σ_c conj(S_c) q_c).
    PASS 2 (when NEED_X): u_c = P(S_c g); grad_x = [HAS_X]·g − e·Σ_c conj(S_c) u_c.
    PASS 3 (when NEED_S): u_c = P(S_c g) again; grad_S_c = −e·(t_c·conj(g) + conj(x)·u_c), t_c read
        back from the buffer. (One pass doing both spilled registers on sm_90: P(S g) is recomputed
        instead, only when S needs a gradient.)
    """
    R1: tl.constexpr = BLOCK_C * BLOCK_N2
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    b64 = b.to(tl.int64)
    mrow = b * MB
    o16 = tl.arange(0, 16)
    i1 = tl.arange(0, R1)
    cl = i1 // BLOCK_N2
    n2 = i1 % BLOCK_N2
    w = N2 * o16[None, :] + n2[:, None]
    wv = (n2 < N2)[:, None] & (o16 >= 0)[None, :]
    row = (b64 * H + h) * W
    e = tl.load(ce_ptr + b)
    accr = tl.zeros((BLOCK_N2, 16), dtype=twr.dtype.element_ty)
    acci = tl.zeros((BLOCK_N2, 16), dtype=twr.dtype.element_ty)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cl
        msk = wv & (c < C)[:, None]
        sbase = s_ptr + 2 * (((b64 * C + c0) * H + h) * W)
        gsbase = gs_ptr + 2 * (((b64 * C + c0) * H + h) * W)
        soff = cl[:, None] * (H * W) + w
        sr, si = _cload(sbase, soff, msk)
        if PASS == 1:
            zr, zi = _cload(x_ptr + 2 * row, w, wv)
        else:
            zr, zi = _cload(g_ptr + 2 * row, w, wv)
        pr, pi = _project(sr * zr - si * zi, sr * zi + si * zr, f1_ptr, f2_ptr, twr, twi, m_ptr, mrow,
                          W, N2, BLOCK_C, BLOCK_N2, PREC)
        if PASS == 1:
            if NEED_S:
                _cstore(gsbase, soff, pr, pi, msk)
        elif PASS == 3:  # −e·[(P(S x) − q)·conj(g) + conj(x)·P(S g)]
            if NEED_S:
                tr, ti = _cload(gsbase, soff, msk)
                xr, xi = _cload(x_ptr + 2 * row, w, wv)
                ur = tr * zr + ti * zi + xr * pr + xi * pi  # z = g in this pass
                ui = ti * zr - tr * zi + xr * pi - xi * pr
                _cstore(gsbase, soff, -e * ur, -e * ui, msk)
        if PASS != 3:
            accr += tl.sum(tl.reshape(sr * pr + si * pi, (BLOCK_C, BLOCK_N2, 16)), axis=0)
            acci += tl.sum(tl.reshape(sr * pi - si * pr, (BLOCK_C, BLOCK_N2, 16)), axis=0)
    on2 = tl.arange(0, BLOCK_N2)
    wo = N2 * o16[None, :] + on2[:, None]
    wm = (on2 < N2)[:, None] & (o16 >= 0)[None, :]
    g2r, g2i = _cload(g_ptr + 2 * row, wo, wm)
    if PASS == 1:
        if NEED_R:
            if HAS_AHY:
                ar, ai = _cload(ahy_ptr + 2 * row, wo, wm)
                accr -= ar
                acci -= ai
            tl.store(part_ptr + 2 * pid, tl.sum(tl.sum(g2r * accr + g2i * acci, axis=1), axis=0))
            if HAS_V:
                vr, vi = _cload(v_ptr + 2 * row, wo, wm)
                tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.sum(g2r * vr + g2i * vi, axis=1), axis=0))
            else:
                tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.sum(g2r * 0.0, axis=1), axis=0))
    elif PASS == 2:
        if NEED_X:
            oxr = -e * accr
            oxi = -e * acci
            if HAS_X:
                oxr += g2r
                oxi += g2i
            _cstore(gx_ptr + 2 * row, wo, oxr, oxi, wm)


# ------------------------------------------------------- complex64 forward, transposed tiles (default)
# docs/triton_row_kernel.md, "The complex64 forward": every tile is [row, n2] (16 × BLOCK_N2), the
# 16-point stages multiply from the left (table @ data), the N2-point stages from the right, so no
# transpose is needed; complex products use Gauss' three real products; tf32x3 is split by hand with
# the tables pre-split on the host; BLOCK_C coil rows run as one batched (3-D) tl.dot.
@triton.jit
def _split(a):
    """a = hi + lo exactly: hi is a rounded to tf32 (10 mantissa bits, to nearest: a truncating
    split is biased and measured 4× the error, docs/triton_row_kernel.md), lo = a − hi (the tensor
    cores truncate it to tf32, a 2^-22 relative error of a)."""
    hi = ((a.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return hi, a - hi


@triton.jit
def _dot3(ah, al, bh, bl, acc, LEFT: tl.constexpr):
    """acc + a·b in three tf32 products (a_lo·b_hi + a_hi·b_lo + a_hi·b_hi, small terms first);
    LEFT: the table b is the left operand (b @ a), else the right one (a @ b)."""
    if LEFT:
        acc = tl.dot(bh, al, acc=acc, input_precision="tf32")
        acc = tl.dot(bl, ah, acc=acc, input_precision="tf32")
        acc = tl.dot(bh, ah, acc=acc, input_precision="tf32")
    else:
        acc = tl.dot(al, bh, acc=acc, input_precision="tf32")
        acc = tl.dot(ah, bl, acc=acc, input_precision="tf32")
        acc = tl.dot(ah, bh, acc=acc, input_precision="tf32")
    return acc


@triton.jit
def _gmm(ar, ai, t_ptr, toff, PLANE: tl.constexpr, CONJ: tl.constexpr, LEFT: tl.constexpr):
    """(ar + i·ai) times the table T or conj(T), Gauss' three real products. T is stored as the
    planes P0 = Tr, P1 = Ti − Tr, P2 = −(Tr + Ti), each pre-split into hi, lo (``split_tables``):
    t1 = P0·(ar + ai);  T: re = t1 + P2·ai, im = t1 + P1·ar;  conj(T): re = t1 + P1·ai, im = t1 + P2·ar."""
    sh, sl = _split(ar + ai)
    t1 = _dot3(sh, sl, tl.load(t_ptr + toff), tl.load(t_ptr + PLANE + toff), tl.zeros(ar.shape, tl.float32), LEFT)
    rh, rl = _split(ar)
    ih, il = _split(ai)
    p1h = tl.load(t_ptr + 2 * PLANE + toff)
    p1l = tl.load(t_ptr + 3 * PLANE + toff)
    p2h = tl.load(t_ptr + 4 * PLANE + toff)
    p2l = tl.load(t_ptr + 5 * PLANE + toff)
    if CONJ:
        rr = _dot3(ih, il, p1h, p1l, t1, LEFT)
        ri = _dot3(rh, rl, p2h, p2l, t1, LEFT)
    else:
        rr = _dot3(ih, il, p2h, p2l, t1, LEFT)
        ri = _dot3(rh, rl, p1h, p1l, t1, LEFT)
    return rr, ri


@triton.jit
def _project_t(zr, zi, f1_ptr, f2_ptr, twr, twi, m_ptr, mrow, W, N2,
               BLOCK_C: tl.constexpr, BLOCK_N2: tl.constexpr):
    """P z for BLOCK_C coil rows held as Z[c, n1, n2] = z_c[N2·n1 + n2] (BLOCK_C, 16, BLOCK_N2); same layout out."""
    o16 = tl.arange(0, 16)
    on2 = tl.arange(0, BLOCK_N2)
    z0 = tl.arange(0, BLOCK_C)[:, None, None] * 0  # the tables repeat over the coil batch
    f1off = z0 + (o16[:, None] * 16 + o16[None, :])[None]
    f2off = z0 + (on2[:, None] * BLOCK_N2 + on2[None, :])[None]
    twoff = z0 + (on2[None, :] * 16 + o16[:, None])[None]  # [k1, n2] -> twiddle[n2, k1]
    yr, yi = _gmm(zr, zi, f1_ptr, f1off, 256, False, True)  # Y[c, k1, n2] = F16 @ Z
    tr = tl.load(twr + twoff)
    ti = tl.load(twi + twoff)
    ur = yr * tr - yi * ti
    ui = yr * ti + yi * tr
    xr, xi = _gmm(ur, ui, f2_ptr, f2off, BLOCK_N2 * BLOCK_N2, False, False)  # X[c, k1, k2] = U @ F_N2
    k = z0 + (o16[:, None] + 16 * on2[None, :])[None]
    km = (z0 == 0) & ((on2 < N2)[None, :] & (o16 >= 0)[:, None])[None]
    mv = tl.load(m_ptr + mrow * W + (k + W // 2) % W, mask=km, other=0.0)  # ifftshift(m)[k1 + 16·k2]
    xr = xr * mv
    xi = xi * mv
    ur, ui = _gmm(xr, xi, f2_ptr, f2off, BLOCK_N2 * BLOCK_N2, True, False)  # F_N2ᴴ = conj(F_N2)
    yr = ur * tr + ui * ti  # conj twiddle
    yi = ui * tr - ur * ti
    return _gmm(yr, yi, f1_ptr, f1off, 256, True, True)  # Z[c, n1, n2]


@triton.jit
def _mt_fwd_kernel(
    x_ptr, v_ptr, ahy_ptr, s_ptr,  # (B,H,W,2) x3, (B,C,H,W,2)
    f1_ptr, f2_ptr, twr, twi, m_ptr,  # split tables (6,16,16) (6,BN2,BN2), twiddle (BN2,16) x2; mask (Bm, W)
    cd_ptr, ce_ptr, out_ptr,
    C, H, W, N2, MB,
    BLOCK_C: tl.constexpr, BLOCK_N2: tl.constexpr,
    HAS_X: tl.constexpr, HAS_V: tl.constexpr, HAS_AHY: tl.constexpr,
):
    """``_mn_fwd_kernel`` for complex64 at tf32x3 (same step, same fixed coil order per batch slot:
    slot j sums coils j, j + BLOCK_C, …, then the slots are added), transposed tiles, one program per row."""
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    b64 = b.to(tl.int64)
    mrow = b * MB
    o16 = tl.arange(0, 16)
    on2 = tl.arange(0, BLOCK_N2)
    ob = tl.arange(0, BLOCK_C)
    w = N2 * o16[:, None] + on2[None, :]  # Z[n1, n2] = z[N2·n1 + n2]
    wv = (on2 < N2)[None, :] & (o16 >= 0)[:, None]
    row = (b64 * H + h) * W
    soff = ob[:, None, None] * (H * W) + w[None]
    xr, xi = _cload(x_ptr + 2 * row, ob[:, None, None] * 0 + w[None], (ob >= 0)[:, None, None] & wv[None])
    accr = tl.zeros((BLOCK_C, 16, BLOCK_N2), dtype=tl.float32)
    acci = tl.zeros((BLOCK_C, 16, BLOCK_N2), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        sbase = s_ptr + 2 * (((b64 * C + c0) * H + h) * W)
        sr, si = _cload(sbase, soff, (c0 + ob < C)[:, None, None] & wv[None])
        pr, pi = _project_t(sr * xr - si * xi, sr * xi + si * xr, f1_ptr, f2_ptr, twr, twi, m_ptr, mrow,
                            W, N2, BLOCK_C, BLOCK_N2)
        accr += sr * pr + si * pi
        acci += sr * pi - si * pr
    accr = tl.sum(accr, axis=0)
    acci = tl.sum(acci, axis=0)
    if HAS_AHY:
        ar, ai = _cload(ahy_ptr + 2 * row, w, wv)
        accr -= ar
        acci -= ai
    e = tl.load(ce_ptr + b)
    outr = -e * accr
    outi = -e * acci
    if HAS_X:
        yr, yi = _cload(x_ptr + 2 * row, w, wv)
        outr += yr
        outi += yi
    if HAS_V:
        d = tl.load(cd_ptr + b)
        vr, vi = _cload(v_ptr + 2 * row, w, wv)
        outr += d * vr
        outi += d * vi
    _cstore(out_ptr + 2 * row, w, outr, outi, wv)


@triton.jit
def _mt_bwd_kernel(
    g_ptr, x_ptr, v_ptr, ahy_ptr, s_ptr,
    f1_ptr, f2_ptr, twr, twi, m_ptr,
    ce_ptr, gx_ptr, gs_ptr, part_ptr,  # (B,) (B,H,W,2) (B,C,H,W,2) (B*H, 2)
    C, H, W, N2, MB,
    BLOCK_C: tl.constexpr, BLOCK_N2: tl.constexpr,
    HAS_X: tl.constexpr, HAS_V: tl.constexpr, HAS_AHY: tl.constexpr,
    NEED_X: tl.constexpr, NEED_S: tl.constexpr, NEED_R: tl.constexpr, PASS: tl.constexpr,
):
    """``_mn_bwd_kernel`` (same passes, same outputs) with the tiles of ``_mt_fwd_kernel``."""
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    b64 = b.to(tl.int64)
    mrow = b * MB
    o16 = tl.arange(0, 16)
    on2 = tl.arange(0, BLOCK_N2)
    ob = tl.arange(0, BLOCK_C)
    w = N2 * o16[:, None] + on2[None, :]
    wv = (on2 < N2)[None, :] & (o16 >= 0)[:, None]
    row = (b64 * H + h) * W
    soff = ob[:, None, None] * (H * W) + w[None]
    w3 = ob[:, None, None] * 0 + w[None]  # an image row repeated over the coil batch
    wv3 = (ob >= 0)[:, None, None] & wv[None]
    e = tl.load(ce_ptr + b)
    if PASS == 1:
        zr, zi = _cload(x_ptr + 2 * row, w3, wv3)
    else:
        zr, zi = _cload(g_ptr + 2 * row, w3, wv3)
    accr = tl.zeros((BLOCK_C, 16, BLOCK_N2), dtype=tl.float32)
    acci = tl.zeros((BLOCK_C, 16, BLOCK_N2), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        msk = (c0 + ob < C)[:, None, None] & wv[None]
        sbase = s_ptr + 2 * (((b64 * C + c0) * H + h) * W)
        gsbase = gs_ptr + 2 * (((b64 * C + c0) * H + h) * W)
        sr, si = _cload(sbase, soff, msk)
        pr, pi = _project_t(sr * zr - si * zi, sr * zi + si * zr, f1_ptr, f2_ptr, twr, twi, m_ptr, mrow,
                            W, N2, BLOCK_C, BLOCK_N2)
        if PASS == 1:
            if NEED_S:
                _cstore(gsbase, soff, pr, pi, msk)
        elif PASS == 3:  # −e·[(P(S x) − q)·conj(g) + conj(x)·P(S g)]
            if NEED_S:
                tr, ti = _cload(gsbase, soff, msk)
                xr, xi = _cload(x_ptr + 2 * row, w3, wv3)
                ur = tr * zr + ti * zi + xr * pr + xi * pi  # z = g in this pass
                ui = ti * zr - tr * zi + xr * pi - xi * pr
                _cstore(gsbase, soff, -e * ur, -e * ui, msk)
        if PASS != 3:
            accr += sr * pr + si * pi
            acci += sr * pi - si * pr
    accr = tl.sum(accr, axis=0)
    acci = tl.sum(acci, axis=0)
    g2r, g2i = _cload(g_ptr + 2 * row, w, wv)
    if PASS == 1:
        if NEED_R:
            if HAS_AHY:
                ar, ai = _cload(ahy_ptr + 2 * row, w, wv)
                accr -= ar
                acci -= ai
            tl.store(part_ptr + 2 * pid, tl.sum(tl.sum(g2r * accr + g2i * acci, axis=1), axis=0))
            if HAS_V:
                vr, vi = _cload(v_ptr + 2 * row, w, wv)
                tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.sum(g2r * vr + g2i * vi, axis=1), axis=0))
            else:
                tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.sum(g2r * 0.0, axis=1), axis=0))
    elif PASS == 2:
        if NEED_X:
            oxr = -e * accr
            oxi = -e * acci
            if HAS_X:
                oxr += g2r
                oxi += g2i
            _cstore(gx_ptr + 2 * row, w, oxr, oxi, wv)


# ---------------------------------------------------------------- host side
def supported(W: int) -> bool:
    """Widths the factored kernel takes: W = 16·N2 with N2 ≤ 64."""
    return W % N1 == 0 and 1 <= W // N1 <= 64


# Coils per chunk and warps, per (kernel, real dtype): chosen with the compile-time model
# (python -m flat_kernels.roofline; flat_kernels/NOTES.md "Row kernel tiles").
TILES = {
    # complex64 tf32x3 forward, _mt_fwd_kernel: 2 coil rows as a batched dot, one per 4-warp half
    # (mma.sync M = 16, no replicated tiles), 226 registers, 1 CTA/SM (docs/triton_row_kernel.md;
    # the other tilings tried: flat_kernels/NOTES.md, "Row kernel tiles")
    ("fwd", "fp32", "tf32x3"): dict(BLOCK_C=2, num_warps=8),
    ("bwd", "fp32", "tf32x3"): dict(BLOCK_C=2, num_warps=8, num_stages=1),  # _mt_bwd_kernel; 3 stages: 180 KB shared
    ("fwd", "fp32"): dict(BLOCK_C=1, num_warps=4),  # _mn_fwd_kernel: the "ieee" / "tf32" modes
    ("bwd", "fp32"): dict(BLOCK_C=1, num_warps=4, num_stages=1),
    ("fwd", "fp64"): dict(BLOCK_C=1, num_warps=4),
    ("bwd", "fp64"): dict(BLOCK_C=1, num_warps=8, num_stages=1),  # 4 warps spilled 8-56 B
}


KERNELS = {"fwd": "_mn_fwd_kernel", "bwd": "_mn_bwd_kernel"}


MT_KERNELS = {"fwd": "_mt_fwd_kernel", "bwd": "_mt_bwd_kernel"}
# Triton 3.6.0 (the GPU machines' version, docs/gpu.md) spills 1152 B in _mt_fwd_kernel at 255
# registers (predicted 133 µs, twice the _mn_ kernel there): the _mt_ kernels run from Triton 3.9 on.
MT_ROW = tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 9)


def kernel_name(kind: str, real: str, prec: str | None) -> str:
    """The kernel a launch of ``kind`` uses: the transposed _mt_ kernels for complex64 at tf32x3
    (their hand split is tf32x3 only) where ``MT_ROW``, the _mn_ kernels otherwise."""
    return MT_KERNELS[kind] if MT_ROW and (real, prec) == ("fp32", "tf32x3") else KERNELS[kind]


PASSES = {"fwd": [{}], "bwd": [{"PASS": 1}, {"PASS": 2}, {"PASS": 3}]}  # launches of a full backward (roofline.py)


def loop_trips(kind: str, C: int, W: int, n_s: int, cfg: dict) -> list[int]:
    """Trip counts of the kernel's loop nest, outermost first (for flat_kernels/roofline.py)."""
    return [triton.cdiv(C, cfg["BLOCK_C"])]


def launch_config(kind: str, C: int, W: int, real: str, tiles: dict | None = None, prec: str | None = None) -> dict:
    if tiles is None:
        mt = kernel_name(kind, real, prec) == MT_KERNELS[kind]
        tiles = TILES[(kind, real, prec)] if mt else TILES[(kind, real)]
    t = dict(tiles)
    N2 = W // N1
    bc = min(int(t["BLOCK_C"]), triton.next_power_of_2(C))
    bn2 = max(16, triton.next_power_of_2(N2))
    # tl.dot needs M >= 16: BLOCK_C·16 rows in step 2
    cfg = dict(BLOCK_C=max(bc, 1), BLOCK_N2=bn2, num_warps=int(t["num_warps"]))
    if "num_stages" in t:
        cfg["num_stages"] = int(t["num_stages"])
    return cfg


_TAB: dict = {}


def tables(W: int, dtype: torch.dtype, device: torch.device):
    """F16 (2,16,16) and F_N2 (2,BN2,BN2) zero-padded as planes [re, im], twiddle re, im
    (BN2,16) zero-padded; orthonormal (1/4 and 1/√N2), built in float64 from exact
    integer phases, cached per (W, dtype, device)."""
    key = (W, dtype, str(device))
    hit = _TAB.get(key)
    if hit is None:
        N2 = W // N1
        bn2 = max(16, triton.next_power_of_2(N2))
        a = torch.arange(N1, dtype=torch.int64)
        p1 = torch.remainder(a[:, None] * a[None, :], N1).double() * (-2 * math.pi / N1)
        b = torch.arange(N2, dtype=torch.int64)
        p2 = torch.remainder(b[:, None] * b[None, :], N2).double() * (-2 * math.pi / N2)
        pt = torch.remainder(b[:, None] * a[None, :], W).double() * (-2 * math.pi / W)
        f2 = torch.zeros(2, bn2, bn2, dtype=torch.float64)
        f2[0, :N2, :N2] = torch.cos(p2) / math.sqrt(N2)
        f2[1, :N2, :N2] = torch.sin(p2) / math.sqrt(N2)
        tw = torch.zeros(2, bn2, N1, dtype=torch.float64)
        tw[0, :N2], tw[1, :N2] = torch.cos(pt), torch.sin(pt)
        planes = (torch.stack([torch.cos(p1) / 4, torch.sin(p1) / 4]), f2, tw[0], tw[1])
        hit = tuple(t.to(device=device, dtype=dtype).contiguous() for t in planes)
        _TAB[key] = hit
    return hit


_SPLIT: dict = {}


def _hi_lo(p: torch.Tensor) -> torch.Tensor:
    """float64 planes -> (hi, lo) float32 per plane, both tf32 values (exact on the tensor cores):
    hi = p rounded to tf32, lo = p − hi rounded to tf32 (round to nearest as ``_split``)."""
    def tf32(t):  # -8192 = 0xFFFFE000
        return ((t.float().view(torch.int32) + 0x1000) & -8192).view(torch.float32)

    hi = tf32(p)
    lo = tf32(p - hi.double())
    return torch.stack([hi, lo], 1).reshape(-1, *p.shape[1:])


def split_tables(W: int, device: torch.device):
    """Tables of ``_mt_fwd_kernel``: F16 (6,16,16) and F_N2 (6,BN2,BN2) as Gauss planes
    (Tr, Ti − Tr, −(Tr + Ti)) each split into hi, lo (``_hi_lo``); twiddle re, im (BN2,16) float32.
    Built from the float64 ``tables``, cached per (W, device)."""
    key = (W, str(device))
    hit = _SPLIT.get(key)
    if hit is None:
        f1, f2, twr, twi = tables(W, torch.float64, torch.device("cpu"))
        g = [_hi_lo(torch.stack([t[0], t[1] - t[0], -(t[0] + t[1])])) for t in (f1, f2)]
        hit = tuple(t.to(device=device, dtype=torch.float32).contiguous() for t in (*g, twr, twi))
        _SPLIT[key] = hit
    return hit


def _mask_rows(mask: torch.Tensor, rd) -> torch.Tensor:
    return mask[:, 0, :].to(rd).contiguous()


def row_forward(x, v, ahy, sens, mask, cd, ce, has_x: bool) -> torch.Tensor:
    """Generic forward (``_mn_fwd_kernel``) for a column mask (Bm, 1, W); canonical tensors."""
    B, C, H, W = sens.shape
    rd = cm.real_dtype(sens)
    real, prec = "fp64" if rd == torch.float64 else "fp32", cm.dot_precision(rd)
    out = cm.empty_complex((B, H, W), x)
    xr, sr = cm.rv(x), cm.rv(sens)
    cfg = launch_config("fwd", C, W, real, prec=prec)
    nw = cfg.pop("num_warps")
    args = (xr, cm.rv(v) if v is not None else xr, cm.rv(ahy) if ahy is not None else xr, sr)
    tail = (_mask_rows(mask, rd), cd, ce, torch.view_as_real(out), C, H, W, W // N1, int(mask.shape[0] > 1))
    flags = dict(HAS_X=has_x, HAS_V=v is not None, HAS_AHY=ahy is not None, num_warps=nw, **cfg)
    if kernel_name("fwd", real, prec) == MT_KERNELS["fwd"]:
        _mt_fwd_kernel[(B * H,)](*args, *split_tables(W, sens.device), *tail, **flags)
    else:
        _mn_fwd_kernel[(B * H,)](*args, *tables(W, rd, sens.device), *tail, PREC=prec, **flags)
    return out


def row_backward(g, x, v, ahy, sens, mask, ce, has_x: bool, need_x: bool, need_s: bool, need_r: bool):
    """Backward of ``row_forward`` with b = ahy (up to three launches, see ``_mn_bwd_kernel``).
    Aᴴy from y: pass ahy = Σ_c conj(S_c)·q_c and add e·q_c·conj(g) to grad_S (flat_kernels/triton/_ops.py).
    Returns (grad_x | None, grad_S | None, part (B·H, 2) | None)."""
    B, C, H, W = sens.shape
    rd = cm.real_dtype(sens)
    real, prec = "fp64" if rd == torch.float64 else "fp32", cm.dot_precision(rd)
    mt = kernel_name("bwd", real, prec) == MT_KERNELS["bwd"]
    kern = _mt_bwd_kernel if mt else _mn_bwd_kernel
    tabs = split_tables(W, sens.device) if mt else tables(W, rd, sens.device)
    cfg = launch_config("bwd", C, W, real, prec=prec)
    nw = cfg.pop("num_warps")
    gx = cm.empty_complex((B, H, W), g) if need_x else None
    gs = cm.empty_complex((B, C, H, W), g) if need_s else None
    part = cm.empty_real((B * H, 2), rd, g.device) if need_r else None
    gr, sr = cm.rv(g), cm.rv(sens)
    args = (
        gr, cm.rv(x), cm.rv(v) if v is not None else gr, cm.rv(ahy) if ahy is not None else gr,
        sr, *tabs, _mask_rows(mask, rd), ce,
        torch.view_as_real(gx) if gx is not None else gr,
        torch.view_as_real(gs) if gs is not None else sr,
        part if part is not None else ce,
        C, H, W, W // N1, int(mask.shape[0] > 1),
    )
    flags = dict(HAS_X=has_x, HAS_V=v is not None, HAS_AHY=ahy is not None,
                 NEED_X=need_x, NEED_S=need_s, NEED_R=need_r, num_warps=nw, **cfg)
    if not mt:
        flags["PREC"] = prec
    if need_s or need_r:
        kern[(B * H,)](*args, PASS=1, **flags)
    if need_x:
        kern[(B * H,)](*args, PASS=2, **flags)
    if need_s:
        kern[(B * H,)](*args, PASS=3, **flags)
    return gx, gs, part
