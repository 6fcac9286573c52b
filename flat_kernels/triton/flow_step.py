"""Column-mask row kernels (docs/operators.md (the column-mask identity), design D): one program per image row (b, h).

For a column mask M(kh, kw) = m[kw] the H transform cancels (docs/operators.md, the column-mask identity), so per row

    P z = Fcᴴ diag(m) Fc z = Fsᴴ diag(m_s) Fs z,

with Fc the centered orthonormal DFT along W (shifts folded into its phases, see
``_common.centered_dft``) and Fs its n_s sampled rows. A program reads S[b, :, h, :] and x[b, h, :]
(coils are the dot's M dimension) and runs the two thin products FlashAttention-style over blocks
of BLOCK_K sampled columns:

    phase A  Ẑ = Σ_chunks (S ⊙ x)[:, chunk] @ Fsᵀ[chunk, :]    (BLOCK_C, BLOCK_K), W in BLOCK_WC chunks
    phase B  P z += (m_s ⊙ Ẑ) @ conj(Fs)                        (BLOCK_C, BLOCK_W) accumulator

Phase A re-reads S and x chunk-wise (L1/L2 hits) so that no dot operand is a whole coil row: that
keeps shared memory within an H100's 227 KB (aot_check.py). All in real arithmetic (Triton has no
complex type: 4 real tl.dot per complex product); the coil reduction is done in registers
(deterministic: no atomics) and the Euler epilogue is fused before the one store.

Generic forward, one kernel for flow_step / normal / dc_gradient (and the backward's grad_x):

    out = [HAS_X]·x + d·v − e·(Σ_c conj(S_c)·(P(S_c x) − q_c) − ahy)

(d, e per batch: flow_step d = dt, e = dt·lam; normal/dc_gradient e = −1). q_c = ifft2c(M y_c)
comes from the 2-D path (``fft_epilogue.adjoint_coils``) when Aᴴy is not precomputed.

The sampled set is found on the device (``_common.sampled_columns``); the kernel reads n_s itself
and loops ``range(0, n_s, BLOCK_K)``: no host sync, CUDA-graph safe, work ∝ n_s (≈ W/3.5 at 4×).

Not launched by the backend any more: compiled for sm_90 it spills registers in every tiling
tried and is compute bound far above the memory floor; column masks take monarch.py (W = 16·N2)
or the 2-D path (flat_kernels/NOTES.md, "Column mask: the row kernels"). Kept for aot_check.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as cm


@triton.jit
def _cload(ptr, offs, msk):
    # complex element i lives at real offsets 2i (re), 2i+1 (im) of a view_as_real buffer
    re = tl.load(ptr + 2 * offs, mask=msk, other=0.0)
    im = tl.load(ptr + 2 * offs + 1, mask=msk, other=0.0)
    return re, im


@triton.jit
def _cstore(ptr, offs, re, im, msk):
    tl.store(ptr + 2 * offs, re, mask=msk)
    tl.store(ptr + 2 * offs + 1, im, mask=msk)


@triton.jit
def _sampled_block(idx_ptr, val_ptr, mrow, k0, n, W, BLOCK_K: tl.constexpr):
    """Column indices (BK,), mask values (BK,) and validity of sampled columns k0 .. k0+BK."""
    ok = k0 + tl.arange(0, BLOCK_K)
    km = ok < n
    col = tl.load(idx_ptr + mrow * W + ok, mask=km, other=0)
    mv = tl.load(val_ptr + mrow * W + ok, mask=km, other=0.0)
    return col, mv, km


@triton.jit
def _forward_dft(a_ptr, b_ptr, s_ptr, arow, srow0, oc, cmask, fr_ptr, fi_ptr, col, km, W,
                 TWO: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_WC: tl.constexpr, PREC: tl.constexpr):
    """Phase A: Ẑ = (S ⊙ a) @ Fsᵀ for one block of sampled columns, (BC, BK); with TWO also for b.

    The reduction over W runs in chunks of BLOCK_WC, re-reading S and the image row chunk-wise
    (L1/L2 hits after the first block) so that the dot operands stay small in shared memory.
    """
    har = tl.zeros((BLOCK_C, BLOCK_K), dtype=fr_ptr.dtype.element_ty)
    hai = tl.zeros((BLOCK_C, BLOCK_K), dtype=fr_ptr.dtype.element_ty)
    hbr = tl.zeros((BLOCK_C, BLOCK_K), dtype=fr_ptr.dtype.element_ty)
    hbi = tl.zeros((BLOCK_C, BLOCK_K), dtype=fr_ptr.dtype.element_ty)
    for w0 in range(0, W, BLOCK_WC):
        ow = w0 + tl.arange(0, BLOCK_WC)
        wm = ow < W
        sr, si = _cload(s_ptr, srow0 + ow[None, :], cmask[:, None] & wm[None, :])  # (BC, WC)
        foff = col[None, :] * W + ow[:, None]  # Fc[col, w] (symmetric table), (WC, BK)
        fmask = wm[:, None] & km[None, :]
        ftr = tl.load(fr_ptr + foff, mask=fmask, other=0.0)
        fti = tl.load(fi_ptr + foff, mask=fmask, other=0.0)
        xr, xi = _cload(a_ptr, arow + ow, wm)
        zr = sr * xr[None, :] - si * xi[None, :]
        zi = sr * xi[None, :] + si * xr[None, :]
        har += tl.dot(zr, ftr, input_precision=PREC) - tl.dot(zi, fti, input_precision=PREC)
        hai += tl.dot(zr, fti, input_precision=PREC) + tl.dot(zi, ftr, input_precision=PREC)
        if TWO:
            gr, gi = _cload(b_ptr, arow + ow, wm)
            zr = sr * gr[None, :] - si * gi[None, :]
            zi = sr * gi[None, :] + si * gr[None, :]
            hbr += tl.dot(zr, ftr, input_precision=PREC) - tl.dot(zi, fti, input_precision=PREC)
            hbi += tl.dot(zr, fti, input_precision=PREC) + tl.dot(zi, ftr, input_precision=PREC)
    return har, hai, hbr, hbi


@triton.jit
def _inverse_dft(hr, hi, mv, fbr, fbi, PREC: tl.constexpr):
    """Phase B: (m ⊙ Ẑ) @ conj(Fs), (BC, BK) @ (BK, BW) -> (BC, BW) contribution to P z."""
    hr = hr * mv[None, :]
    hi = hi * mv[None, :]
    pr = tl.dot(hr, fbr, input_precision=PREC) + tl.dot(hi, fbi, input_precision=PREC)
    pi = tl.dot(hi, fbr, input_precision=PREC) - tl.dot(hr, fbi, input_precision=PREC)
    return pr, pi


@triton.jit
def _load_dft_rows(fr_ptr, fi_ptr, col, km, W, ow, wm):
    """Fs block (BK, BW): rows ``col`` of the table, full width."""
    foff = col[:, None] * W + ow[None, :]
    fmask = km[:, None] & wm[None, :]
    return tl.load(fr_ptr + foff, mask=fmask, other=0.0), tl.load(fi_ptr + foff, mask=fmask, other=0.0)


@triton.jit
def _row_fwd_kernel(
    x_ptr, v_ptr, ahy_ptr, q_ptr, s_ptr,  # (B,H,W,2) (B,H,W,2) (B,H,W,2) (B,C,H,W,2) (B,C,H,W,2)
    fr_ptr, fi_ptr, idx_ptr, val_ptr, cnt_ptr,  # DFT planes (W,W); (Bm,W) (Bm,W) (Bm,)
    cd_ptr, ce_ptr, out_ptr,  # (B,) (B,) (B,H,W,2)
    C, H, W, MB,  # MB = 1 if the mask has a batch dim, else 0
    BLOCK_C: tl.constexpr, BLOCK_WO: tl.constexpr, NSPLIT: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_WC: tl.constexpr,
    HAS_X: tl.constexpr, HAS_V: tl.constexpr, HAS_AHY: tl.constexpr, HAS_Q: tl.constexpr,
    PREC: tl.constexpr,
):
    # program = (row (b, h), output slice j of BLOCK_WO columns); coils in chunks of BLOCK_C
    pid = tl.program_id(0)
    j = pid % NSPLIT
    r = pid // NSPLIT
    b = r // H
    h = r % H
    b64 = b.to(tl.int64)
    ow = j * BLOCK_WO + tl.arange(0, BLOCK_WO)
    wm = ow < W
    row = (b64 * H + h) * W  # first element of image row (b, h)
    mrow = b * MB
    n = tl.load(cnt_ptr + mrow)
    nr = tl.zeros((BLOCK_WO,), dtype=fr_ptr.dtype.element_ty)
    ni = tl.zeros((BLOCK_WO,), dtype=fr_ptr.dtype.element_ty)
    for c0 in range(0, C, BLOCK_C):
        oc = c0 + tl.arange(0, BLOCK_C)
        cmask = oc < C
        cw = cmask[:, None] & wm[None, :]
        srow0 = ((b64 * C + oc[:, None]) * H + h) * W  # (BC, 1) start of each coil row
        pr = tl.zeros((BLOCK_C, BLOCK_WO), dtype=fr_ptr.dtype.element_ty)
        pi = tl.zeros((BLOCK_C, BLOCK_WO), dtype=fr_ptr.dtype.element_ty)
        for k0 in range(0, n, BLOCK_K):
            col, mv, km = _sampled_block(idx_ptr, val_ptr, mrow, k0, n, W, BLOCK_K)
            hr, hi, _, _ = _forward_dft(x_ptr, x_ptr, s_ptr, row, srow0, oc, cmask, fr_ptr, fi_ptr, col, km, W,
                                        False, BLOCK_C, BLOCK_K, BLOCK_WC, PREC)
            fbr, fbi = _load_dft_rows(fr_ptr, fi_ptr, col, km, W, ow, wm)
            dr, di = _inverse_dft(hr, hi, mv, fbr, fbi, PREC)
            pr += dr
            pi += di
        if HAS_Q:  # q_c = ifft2c(M y_c), stored un-shifted: centered (h, w) lives at ((h - H//2) % H, (w - W//2) % W)
            hq = (h + H - H // 2) % H
            wq = (ow + W - W // 2) % W
            qoff = ((b64 * C + oc[:, None]) * H + hq) * W + wq[None, :]
            qr, qi = _cload(q_ptr, qoff, cw)
            pr -= qr
            pi -= qi
        # Σ_c conj(S_c)·(P(S_c x) − q_c): coil reduction in registers, chunk by chunk (fixed order)
        sr, si = _cload(s_ptr, srow0 + ow[None, :], cw)
        nr += tl.sum(sr * pr + si * pi, axis=0)
        ni += tl.sum(sr * pi - si * pr, axis=0)
    if HAS_AHY:
        ar, ai = _cload(ahy_ptr, row + ow, wm)
        nr -= ar
        ni -= ai
    e = tl.load(ce_ptr + b)
    outr = -e * nr
    outi = -e * ni
    if HAS_X:
        xr, xi = _cload(x_ptr, row + ow, wm)
        outr += xr
        outi += xi
    if HAS_V:
        d = tl.load(cd_ptr + b)
        vr, vi = _cload(v_ptr, row + ow, wm)
        outr += d * vr
        outi += d * vi
    _cstore(out_ptr, row + ow, outr, outi, wm)


@triton.jit
def _row_bwd_kernel(
    g_ptr, x_ptr, v_ptr, ahy_ptr, q_ptr, s_ptr,
    fr_ptr, fi_ptr, idx_ptr, val_ptr, cnt_ptr,
    ce_ptr, gx_ptr, gs_ptr, part_ptr,  # (B,) (B,H,W,2) (B,C,H,W,2) (B*H*NSPLIT, 2)
    C, H, W, MB,
    BLOCK_C: tl.constexpr, BLOCK_WO: tl.constexpr, NSPLIT: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_WC: tl.constexpr,
    HAS_X: tl.constexpr, HAS_V: tl.constexpr, HAS_AHY: tl.constexpr, HAS_Q: tl.constexpr,
    NEED_X: tl.constexpr, NEED_S: tl.constexpr, NEED_R: tl.constexpr, NEED_PX: tl.constexpr,
    PREC: tl.constexpr,
):
    """Backward of the generic forward (docs/operators.md, backward), recomputing instead of saving residuals:

    grad_x = [HAS_X]·g − e·Σ_c conj(S_c) P(S_c g)                       (AᴴA is Hermitian)
    grad_S_c = −e·[(P(S_c x) − q_c)·conj(g) + conj(x)·P(S_c g)]
    part[pid] = (Re Σ_w conj(g)·r, Re Σ_w conj(g)·v) over this program's columns,
    r = Σ_c conj(S_c)(P(S_c x) − q_c) − ahy
    """
    pid = tl.program_id(0)
    j = pid % NSPLIT
    r = pid // NSPLIT
    b = r // H
    h = r % H
    b64 = b.to(tl.int64)
    ow = j * BLOCK_WO + tl.arange(0, BLOCK_WO)
    wm = ow < W
    row = (b64 * H + h) * W
    mrow = b * MB
    n = tl.load(cnt_ptr + mrow)
    e = tl.load(ce_ptr + b)
    gr, gi = _cload(g_ptr, row + ow, wm)
    xr, xi = _cload(x_ptr, row + ow, wm)
    ngr = tl.zeros((BLOCK_WO,), dtype=fr_ptr.dtype.element_ty)
    ngi = tl.zeros((BLOCK_WO,), dtype=fr_ptr.dtype.element_ty)
    rr = tl.zeros((BLOCK_WO,), dtype=fr_ptr.dtype.element_ty)
    ri = tl.zeros((BLOCK_WO,), dtype=fr_ptr.dtype.element_ty)
    for c0 in range(0, C, BLOCK_C):
        oc = c0 + tl.arange(0, BLOCK_C)
        cmask = oc < C
        cw = cmask[:, None] & wm[None, :]
        srow0 = ((b64 * C + oc[:, None]) * H + h) * W
        pgr = tl.zeros((BLOCK_C, BLOCK_WO), dtype=fr_ptr.dtype.element_ty)
        pgi = tl.zeros((BLOCK_C, BLOCK_WO), dtype=fr_ptr.dtype.element_ty)
        pxr = tl.zeros((BLOCK_C, BLOCK_WO), dtype=fr_ptr.dtype.element_ty)
        pxi = tl.zeros((BLOCK_C, BLOCK_WO), dtype=fr_ptr.dtype.element_ty)
        for k0 in range(0, n, BLOCK_K):
            # one pass over the DFT blocks feeds both chains (g, and x when needed)
            col, mv, km = _sampled_block(idx_ptr, val_ptr, mrow, k0, n, W, BLOCK_K)
            hgr, hgi, hxr, hxi = _forward_dft(g_ptr, x_ptr, s_ptr, row, srow0, oc, cmask, fr_ptr, fi_ptr, col, km,
                                              W, NEED_PX, BLOCK_C, BLOCK_K, BLOCK_WC, PREC)
            fbr, fbi = _load_dft_rows(fr_ptr, fi_ptr, col, km, W, ow, wm)
            dr, di = _inverse_dft(hgr, hgi, mv, fbr, fbi, PREC)
            pgr += dr
            pgi += di
            if NEED_PX:
                dr, di = _inverse_dft(hxr, hxi, mv, fbr, fbi, PREC)
                pxr += dr
                pxi += di
        sr, si = _cload(s_ptr, srow0 + ow[None, :], cw)
        if NEED_X:
            ngr += tl.sum(sr * pgr + si * pgi, axis=0)
            ngi += tl.sum(sr * pgi - si * pgr, axis=0)
        if NEED_PX:
            if HAS_Q:
                hq = (h + H - H // 2) % H
                wq = (ow + W - W // 2) % W
                qoff = ((b64 * C + oc[:, None]) * H + hq) * W + wq[None, :]
                qr, qi = _cload(q_ptr, qoff, cw)
                pxr -= qr
                pxi -= qi
        if NEED_S:
            # (P(S x) − q)·conj(g) + conj(x)·P(S g), scaled by −e; (BC, BWO)
            tr = pxr * gr[None, :] + pxi * gi[None, :] + xr[None, :] * pgr + xi[None, :] * pgi
            ti = pxi * gr[None, :] - pxr * gi[None, :] + xr[None, :] * pgi - xi[None, :] * pgr
            _cstore(gs_ptr, srow0 + ow[None, :], -e * tr, -e * ti, cw)
        if NEED_R:
            rr += tl.sum(sr * pxr + si * pxi, axis=0)
            ri += tl.sum(sr * pxi - si * pxr, axis=0)
    if NEED_X:
        oxr = -e * ngr
        oxi = -e * ngi
        if HAS_X:
            oxr += gr
            oxi += gi
        _cstore(gx_ptr, row + ow, oxr, oxi, wm)
    if NEED_R:
        if HAS_AHY:
            ar, ai = _cload(ahy_ptr, row + ow, wm)
            rr -= ar
            ri -= ai
        tl.store(part_ptr + 2 * pid, tl.sum(gr * rr + gi * ri, axis=0))
        if HAS_V:
            vr, vi = _cload(v_ptr, row + ow, wm)
            tl.store(part_ptr + 2 * pid + 1, tl.sum(gr * vr + gi * vi, axis=0))
        else:
            tl.store(part_ptr + 2 * pid + 1, tl.sum(gr * 0.0, axis=0))


# Tile configuration per (kernel, real dtype); the sweep is in flat_kernels/NOTES.md ("Column mask:
# the row kernels"). No tiling of this kernel compiled without spills on sm_90.
TILES = {
    ("fwd", "fp32"): dict(BLOCK_C=16, SPLIT=1, BLOCK_K=16, BLOCK_WC=64, num_warps=8),
    ("bwd", "fp32"): dict(BLOCK_C=16, SPLIT=1, BLOCK_K=16, BLOCK_WC=64, num_warps=8),
    ("fwd", "fp64"): dict(BLOCK_C=16, SPLIT=1, BLOCK_K=16, BLOCK_WC=64, num_warps=8),
    ("bwd", "fp64"): dict(BLOCK_C=16, SPLIT=1, BLOCK_K=16, BLOCK_WC=64, num_warps=8),
}


KERNELS = {"fwd": "_row_fwd_kernel", "bwd": "_row_bwd_kernel"}


def loop_trips(kind: str, C: int, W: int, n_s: int, cfg: dict) -> list[int]:
    """Trip counts of the kernel's loop nest, outermost first (for flat_kernels/roofline.py):
    coil chunks, blocks of sampled columns, W chunks of phase A."""
    return [triton.cdiv(C, cfg["BLOCK_C"]), triton.cdiv(n_s, cfg["BLOCK_K"]), triton.cdiv(W, cfg["BLOCK_WC"])]


def launch_config(kind: str, C: int, W: int, real: str, tiles: dict | None = None) -> dict:
    """Constexprs, grid multiplier and warps of one row-kernel launch (kind "fwd" or "bwd", real
    "fp32"/"fp64"). tl.dot needs every dim >= 16: coils are padded to BLOCK_C >= 16 and processed
    in chunks of BLOCK_C (C = 20 runs two chunks instead of one 32-wide tile, which spilled); the
    output row is split into SPLIT slices of BLOCK_WO columns, one program each (phase A is then
    recomputed per slice, but the full-width accumulators shrink by SPLIT)."""
    t = dict(TILES[(kind, real)] if tiles is None else tiles)
    BW = cm.pow2(W)
    split = max(1, min(int(t.pop("SPLIT")), BW // 16))
    cfg = dict(BLOCK_C=min(int(t.pop("BLOCK_C")), cm.pow2(C)), BLOCK_WO=max(16, BW // split), BLOCK_K=int(t.pop("BLOCK_K")),
               BLOCK_WC=min(int(t.pop("BLOCK_WC")), BW))
    cfg["NSPLIT"] = triton.cdiv(W, cfg["BLOCK_WO"])
    cfg["num_warps"] = int(t.pop("num_warps"))
    return cfg


def row_forward(x, v, ahy, q, sens, mask, cd, ce, has_x: bool) -> torch.Tensor:
    """Generic forward (module docstring) for a column mask (Bm, 1, W); all complex tensors canonical."""
    B, C, H, W = sens.shape
    rd = cm.real_dtype(sens)
    fr, fi = cm.centered_dft(W, rd, sens.device)
    idx, val, cnt = cm.sampled_columns(mask)
    out = cm.empty_complex((B, H, W), x)
    xr, sr = cm.rv(x), cm.rv(sens)
    cfg = launch_config("fwd", C, W, "fp64" if rd == torch.float64 else "fp32")
    nw = cfg.pop("num_warps")
    _row_fwd_kernel[(B * H * cfg["NSPLIT"],)](
        xr, cm.rv(v) if v is not None else xr, cm.rv(ahy) if ahy is not None else xr,
        cm.rv(q) if q is not None else sr, sr,
        fr, fi, idx, val, cnt, cd, ce, torch.view_as_real(out),
        C, H, W, int(mask.shape[0] > 1),
        HAS_X=has_x, HAS_V=v is not None, HAS_AHY=ahy is not None, HAS_Q=q is not None,
        PREC=cm.dot_precision(rd), num_warps=nw, **cfg,
    )
    return out


def row_backward(g, x, v, ahy, q, sens, mask, ce, has_x: bool, need_x: bool, need_s: bool, need_r: bool):
    """Backward of ``row_forward`` (kernel docstring). Returns (grad_x | None, grad_S | None, part | None);
    ``part`` holds one pair of partial sums per program, (B·H·NSPLIT, 2), batch-major."""
    B, C, H, W = sens.shape
    rd = cm.real_dtype(sens)
    fr, fi = cm.centered_dft(W, rd, sens.device)
    idx, val, cnt = cm.sampled_columns(mask)
    cfg = launch_config("bwd", C, W, "fp64" if rd == torch.float64 else "fp32")
    nw = cfg.pop("num_warps")
    gx = cm.empty_complex((B, H, W), g) if need_x else None
    gs = cm.empty_complex((B, C, H, W), g) if need_s else None
    part = cm.empty_real((B * H * cfg["NSPLIT"], 2), rd, g.device) if need_r else None
    gr, sr = cm.rv(g), cm.rv(sens)
    _row_bwd_kernel[(B * H * cfg["NSPLIT"],)](
        gr, cm.rv(x), cm.rv(v) if v is not None else gr, cm.rv(ahy) if ahy is not None else gr,
        cm.rv(q) if q is not None else sr, sr,
        fr, fi, idx, val, cnt, ce,
        torch.view_as_real(gx) if gx is not None else gr,
        torch.view_as_real(gs) if gs is not None else sr,
        part if part is not None else ce,
        C, H, W, int(mask.shape[0] > 1),
        HAS_X=has_x, HAS_V=v is not None, HAS_AHY=ahy is not None, HAS_Q=q is not None,
        NEED_X=need_x, NEED_S=need_s, NEED_R=need_r, NEED_PX=need_s or need_r,
        PREC=cm.dot_precision(rd), num_warps=nw, **cfg,
    )
    return gx, gs, part
