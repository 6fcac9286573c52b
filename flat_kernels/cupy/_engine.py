"""Host-side orchestration of the CuPy backend: which kernel runs when, with which shifts and scales.

This module is array-library agnostic and imports neither CuPy nor torch. It drives a *runtime*
object that provides

* ``xp``                           the array module (``cupy`` on the GPU, ``numpy`` in the CPU test);
* ``empty(shape, dtype)``          a C-contiguous uninitialised array;
* ``fft(buf, axes, inverse)``      an **in-place, unscaled** complex FFT over ``axes`` ((-1,) or (-2, -1));
* ``launch(name, dtype, B, HW, args)``  run kernel ``flat_<name>_<c64|c128>`` of
  ``flat_kernels/cuda/dc_fused.cu`` over B batches x HW pixels; ``args`` is a list of
  ``(kind, value)`` with kind ``"ptr"`` (array or None), ``"int"`` or ``"real"``;
* optionally, for the one-pass row kernel of ``flat_kernels/cuda/row_step.cu`` (column masks):
  ``row_smem_limits(dtype)`` (per-block shared-memory budgets in bytes, tried in order) and
  ``launch_rows(name, dtype, B, H, smem_bytes, args)`` (kernel ``flat_<name>_<suffix>``, a grid of
  H x B blocks of ``ROW_THREADS`` threads, ``smem_bytes`` of dynamic shared memory). Without them,
  or when a row does not fit (:func:`row_plan`), every op takes the cuFFT path.

The GPU runtime (:mod:`flat_kernels.cupy._runtime`) maps these onto cuFFT plans and NVRTC kernels;
``tests/test_cupy.py`` maps them onto ``numpy.fft`` and the same ``.cu`` source compiled for the host,
so the index arithmetic of the kernels and this orchestration are checked on a CPU machine.

Every array handed in is C-contiguous with the canonical shapes of docs/operators.md: images
``(B, H, W)``, coil stacks ``(B, C, H, W)``, masks ``(Bm, Hm, W)`` real, ``dt``/``lam`` real of
shape ``()`` or ``(B,)``. Formulas: docs/operators.md (the column-mask identity for the forward, and the backward), identical to
:mod:`flat.ops.reference` (the oracle).
"""
from __future__ import annotations

import math
import os

KERNEL_FILE = "dc_fused.cu"
ROW_KERNEL_FILE = "row_step.cu"

# Kernel signatures, in the order of the .cu parameters (checked against the source in the tests).
SIGNATURES = {
    "prologue": (
        ("A", "ptr"), ("X", "ptr"), ("M", "rptr"), ("out", "ptr"), ("has_x", "int"), ("has_m", "int"),
        ("B", "int"), ("Cn", "int"), ("H", "int"), ("W", "int"), ("Bm", "int"), ("Hm", "int"),
        ("shH", "int"), ("shW", "int"),
    ),
    "mask_apply": (
        ("buf", "ptr"), ("M", "rptr"), ("B", "int"), ("Cn", "int"), ("H", "int"), ("W", "int"),
        ("Bm", "int"), ("Hm", "int"), ("shH", "int"), ("shW", "int"),
    ),
    "reduce_epilogue": (
        ("S", "ptr"), ("buf", "ptr"), ("X", "ptr"), ("V", "ptr"), ("R0", "ptr"),
        ("a", "rptr"), ("a_stride", "int"), ("cc", "rptr"), ("c_stride", "int"), ("out", "ptr"),
        ("scale", "real"), ("has_x", "int"), ("has_v", "int"), ("has_r0", "int"),
        ("B", "int"), ("Cn", "int"), ("H", "int"), ("W", "int"), ("shH", "int"), ("shW", "int"),
    ),
    "kspace_epilogue": (
        ("buf", "ptr"), ("K", "ptr"), ("Y", "ptr"), ("M", "rptr"),
        ("ck", "rptr"), ("ck_stride", "int"), ("cf", "rptr"), ("cf_stride", "int"), ("out", "ptr"),
        ("scale", "real"), ("has_k", "int"), ("has_y", "int"), ("has_m", "int"), ("mask_fft", "int"),
        ("B", "int"), ("Cn", "int"), ("H", "int"), ("W", "int"), ("Bm", "int"), ("Hm", "int"),
        ("shH", "int"), ("shW", "int"),
    ),
    "grad_sens": (
        ("X", "ptr"), ("G", "ptr"), ("U", "ptr"), ("Q", "ptr"), ("Wb", "ptr"),
        ("coef", "rptr"), ("coef_stride", "int"), ("out", "ptr"),
        ("su", "real"), ("sq", "real"), ("sw", "real"), ("has_u", "int"), ("has_q", "int"),
        ("qshH", "int"), ("qshW", "int"), ("wshH", "int"), ("wshW", "int"),
        ("B", "int"), ("Cn", "int"), ("H", "int"), ("W", "int"),
    ),
}


# The one-pass row kernel (flat_kernels/cuda/row_step.cu, docs/row_kernel.md): column masks only.
ROW_SIGNATURES = {
    "row_step": (
        ("S", "ptr"), ("X", "ptr"), ("V", "ptr"), ("R0", "ptr"), ("M", "rptr"),
        ("a", "rptr"), ("a_stride", "int"), ("cc", "rptr"), ("c_stride", "int"), ("out", "ptr"),
        ("has_x", "int"), ("has_v", "int"), ("has_r0", "int"),
        ("B", "int"), ("Cn", "int"), ("H", "int"), ("W", "int"), ("Bm", "int"), ("Cg", "int"), ("ld", "int"),
    ),
    # the fused backward with learned maps (grad_S, grad_x and the grad_dt/grad_lam row sums in one pass)
    "row_grad": (
        ("S", "ptr"), ("X", "ptr"), ("G", "ptr"), ("V", "ptr"), ("R0", "ptr"), ("Q", "ptr"), ("M", "rptr"),
        ("cc", "rptr"), ("c_stride", "int"), ("gx_out", "ptr"), ("gs_out", "ptr"), ("red_out", "rptr"),
        ("sq", "real"), ("has_x", "int"), ("has_gx", "int"), ("has_q", "int"), ("has_r0", "int"),
        ("has_v", "int"), ("has_red", "int"), ("qshH", "int"), ("qshW", "int"),
        ("B", "int"), ("Cn", "int"), ("H", "int"), ("W", "int"), ("Bm", "int"), ("Cg", "int"), ("ld", "int"),
    ),
}
ROW_THREADS = 256  # FLAT_ROW_THREADS of row_step.cu (the __launch_bounds__ of the kernel)

ROW_KERNELS = """Kernels of the row path, for performance models (flat_kernels/roofline.py).

flat_row_step_c64 / flat_row_step_c128 (flat_kernels/cuda/row_step.cu): one launch per column-mask
normal / dc_gradient / flow_step forward, and per x-gradient of them (and one more for AᴴA x − Aᴴy
when dt or lam need gradients and S does not); grid (H, B) blocks of ROW_THREADS threads, dynamic shared memory
row_plan(...)["smem_bytes"] per block. Per launch, row_step_work(B, C, H, W, complex_bytes, has_v,
has_r0, Cg) gives the global-memory bytes (S read once; x, v, Aᴴy read once; the output written
once), the floating-point operations of the code as written (FMA = 2 flops) and the shared-memory
traffic, raw and weighted by simulated bank conflicts. The coil stack is never written.

flat_row_grad_c64 / flat_row_grad_c128 (same file): one launch per column-mask backward that needs
grad_S (the fused backward: grad_S, grad_x and the grad_dt/grad_lam row sums in one pass over S);
grid (H, B), shared memory row_plan(..., kernel="row_grad")["smem_bytes"]; row_grad_work(...) gives
the same counts (S, x, g, [q], [Aᴴy], [v] read once; grad_S, [grad_x] written once).
model_launches(...) lists the launches of one op call with those counts.

This module imports nothing beyond the standard library; load it by path (importing the package
flat_kernels.cupy imports CuPy), e.g. importlib.util.spec_from_file_location on this file.
"""

# Hopper (H100/H200) limits the plan is sized for when no device is at hand: 228 KB of shared memory
# per SM (1 KB of it reserved per block), 227 KB opt-in per block.
HOPPER_SMEM_LIMITS = {"complex64": (228 * 1024 // 2 - 1024, 227 * 1024), "complex128": (227 * 1024,)}


def model_launches(op: str, B: int, C: int, H: int, W: int, dtype: str = "complex64",
                   limits=None) -> list:
    """The row-kernel launches of one column-mask op call and their work (see ROW_KERNELS).

    ``op``: "normal", "dc_gradient" or "flow_step" (forward, Aᴴy given: computing it from k-space
    runs on the cuFFT path once per sample, not per step), "<op>_backward_x" (the x-gradient
    alone), or "<op>_backward_S" (the fused backward with learned maps, flat_row_grad: grad_S and
    grad_x; for flow_step also grad_dt/grad_lam, Aᴴy given; "flow_step_backward_S_q": Aᴴy from y,
    whose q stack the kernel reads). ``limits``: per-block shared-memory budgets (default: Hopper). Returns [] when a row does
    not fit (the op then runs on the cuFFT path). Each entry: kernel, grid, threads, smem_bytes
    (per block), coils_per_chunk, chunks, ld, and row_step_work's counts.
    """
    cb = {"complex64": 8, "complex128": 16}[dtype]
    suffix = "c64" if cb == 8 else "c128"
    limits = limits if limits is not None else HOPPER_SMEM_LIMITS[dtype]
    grad = {  # the fused backward with learned maps: (has_q, has_r0, has_v, want_red)
        "normal_backward_S": (False, False, False, False), "dc_gradient_backward_S": (True, False, False, False),
        "flow_step_backward_S": (False, True, True, True),  # Aᴴy given; grads x, S, dt, lam
        "flow_step_backward_S_q": (True, False, True, True),  # Aᴴy from y (q read; its cuFFT not counted)
    }
    if op in grad:
        plan = row_plan(C, W, cb, limits, kernel="row_grad")
        if plan is None:
            return []
        has_q, has_r0, has_v, want_red = grad[op]
        work = row_grad_work(B, C, H, W, cb, has_q=has_q, has_r0=has_r0, has_v=has_v, want_gx=True,
                             want_red=want_red, Cg=plan["Cg"])
        return [dict(work, kernel=f"flat_row_grad_{suffix}", grid=(H, B), smem_bytes=plan["smem_bytes"],
                     coils_per_chunk=plan["Cg"], ld=plan["ld"])]
    plan = row_plan(C, W, cb, limits)
    if plan is None:
        return []
    flags = {  # (has_v, has_r0)
        "normal": (False, False), "dc_gradient": (False, True), "flow_step": (True, True),
        "normal_backward_x": (False, False), "dc_gradient_backward_x": (False, False),
        "flow_step_backward_x": (False, False),
    }
    if op not in flags:
        raise ValueError(f"op: expected one of {sorted(flags) + sorted(grad)}, got {op!r}")
    has_v, has_r0 = flags[op]
    work = row_step_work(B, C, H, W, cb, has_v=has_v, has_r0=has_r0, Cg=plan["Cg"])
    return [dict(work, kernel=f"flat_row_step_{suffix}", grid=(H, B), smem_bytes=plan["smem_bytes"],
                 coils_per_chunk=plan["Cg"], ld=plan["ld"])]


def row_radices(W: int) -> list:
    """The Stockham radices of row_step.cu for length W, in order (same rule as flat_row_next_radix:
    the odd prime factors, smallest first (a 5 with a factor 4 as one radix 20), then 2^a as one
    2, 4 or 8 (a mod 4 ≠ 0) and 16s)."""
    out, n = [], int(W)
    while n > 1:
        m, a = n, 0
        while m % 2 == 0:
            m //= 2
            a += 1
        if m > 1:
            r = next((p for p in range(3, math.isqrt(m) + 1, 2) if m % p == 0), m)
            r = 20 if r == 5 and a >= 2 else r  # 320 = 20·16
        else:
            r = 1 << (a % 4) if a % 4 else 16
        out.append(r)
        n //= r
    return out


_ROW_BUTTERFLY = (2, 3, 4, 5, 7, 8, 11, 13, 16, 17, 19, 20, 23)  # radices with an explicit butterfly


def _row_pad(W: int) -> int:
    """Padding block of the first stage's output (frow_fft): its radix when even and not alone."""
    radices = row_radices(W)
    return radices[0] if len(radices) >= 2 and radices[0] % 2 == 0 else 0


def row_ld(W: int) -> int:
    """Row stride of the kernel's FFT buffers: at least W (W + W/R1 with a padded first stage),
    ≡ W/R_last (mod 16), so that a warp reading the last stage's inputs across two coil rows hits
    consecutive banks (row_step.cu)."""
    radices = row_radices(W)
    if len(radices) < 2:
        return W
    pad = _row_pad(W)
    need = W + (W // pad if pad else 0)
    return need + (W // radices[-1] - need) % 16


def row_plan(C: int, W: int, complex_bytes: int, limits, kernel: str = "row_step") -> dict | None:
    """Coil chunk and shared memory of one block, or None when one coil row does not fit.

    Shared memory of ``kernel="row_step"``: tw, xs, acc (W complex each), Ss (Cg·W), b0, b1 (Cg·ld
    complex each), ms (W real). ``kernel="row_grad"`` (the fused backward, row_step.cu) holds both
    projections at once: tw, xs, gs, ax, ar (W complex each), Ss (Cg·W), b0, b1, b2 (Cg·ld complex
    each), ms (W real) and the block reduction (2·ROW_THREADS real), so its chunks are smaller.
    ``limits`` are per-block byte budgets tried in order (e.g. the size that keeps two blocks per SM,
    then the opt-in maximum); chunks are balanced (ceil(C / ceil(C / Cg_max)) coils each).
    """
    ld = row_ld(W)
    real = complex_bytes // 2
    if kernel == "row_step":
        fixed = 3 * W * complex_bytes + W * real
        per_coil = (W + 2 * ld) * complex_bytes
    elif kernel == "row_grad":
        fixed = 5 * W * complex_bytes + W * real + 2 * ROW_THREADS * real
        per_coil = (W + 3 * ld) * complex_bytes
    else:
        raise ValueError(f"kernel: expected 'row_step' or 'row_grad', got {kernel!r}")
    for budget in limits:
        cg_max = (int(budget) - fixed) // per_coil
        if cg_max >= 1:
            chunks = -(-C // cg_max)
            cg = -(-C // chunks)
            return {"Cg": cg, "chunks": chunks, "ld": ld, "smem_bytes": fixed + cg * per_coil}
    return None


def _butterfly_flops(R: int) -> int:
    """Real flops of one radix-R butterfly as coded (FMA = 2), without pre-twiddles."""
    if R in (2, 4):
        return {2: 4, 4: 16}[R]
    if R == 8:
        return 2 * 16 + 3 * 6 + 4 * 4
    if R == 16:
        return 8 * 16 + 9 * 6
    if R == 20:
        return 4 * 48 + 12 * 6 + 5 * 16  # four 5-point DFTs, twelve ω20 multiplies, five 4-point DFTs
    h = (R - 1) // 2
    return 8 * h * h + 10 * h


def _wavefronts(addrs, complex_bytes):
    """Shared-memory wavefronts of one warp access to complex elements ``addrs`` (one per lane),
    relative to the conflict-free count: lanes go in groups of 128 bytes (16 lanes of 8-byte or 8
    of 16-byte elements); a group costs the largest number of distinct elements on one bank set."""
    per = 128 // complex_bytes
    actual = ideal = 0
    for g in range(0, len(addrs), per):
        banks = {}
        for a in set(addrs[g:g + per]):
            banks[a % per] = banks.get(a % per, 0) + 1
        actual += max(banks.values())
        ideal += 1
    return actual, ideal


def _stage_conflicts(W, R, Ns, nb, complex_bytes, direct, ld=None, pin=0, pout=False):
    """(read, write) bank-conflict factors of one Stockham stage, lanes mapped as row_step.cu does
    (thread e of nb·W/R butterflies, or of nb·W outputs for a direct-DFT stage; warps of 32)."""
    L = W // R
    ld = W if ld is None else ld
    La = L + L // pin if pin else L  # padded input rows: one slot after every pin elements
    Rb = R + 1 if pout else R  # padded output blocks of an Ns = 1 stage
    n_e = nb * (W if direct else L)
    tot = {"r": [0, 0], "w": [0, 0]}
    for w0 in range(0, n_e, 32):
        es = range(w0, min(w0 + 32, n_e))
        if direct:
            idx = [(e // W, (e % W) % L, (e % W) // L) for e in es]  # (row, j, r)
            reads = [[row * ld + j + (j // pin if pin else 0) + q * La for row, j, _ in idx] for q in range(R)]
            writes = [[row * ld + (j - j % Ns) * Rb + j % Ns + r * Ns for row, j, r in idx]]
        else:
            idx = [(e // L, e % L) for e in es]
            reads = [[row * ld + j + (j // pin if pin else 0) + r * La for row, j in idx] for r in range(R)]
            writes = [[row * ld + (j - j % Ns) * Rb + j % Ns + r * Ns for row, j in idx] for r in range(R)]
        for key, accesses in (("r", reads), ("w", writes)):
            for a in accesses:
                got, ideal = _wavefronts(a, complex_bytes)
                tot[key][0] += got
                tot[key][1] += ideal
    return tot["r"][0] / tot["r"][1], tot["w"][0] / tot["w"][1]


def _fft_counts(W: int, first: str, nb: int = 8, complex_bytes: int = 8):
    """(flops, shared-memory traffic, the same weighted by bank conflicts) of one length-W transform
    of one row, traffic in complex elements; ``nb`` coil rows per chunk (for the lane mapping).

    ``first``: how the first stage reads, "smem", "coils" (S from global memory times xs, S kept in
    Ss: 2 shared accesses per input) or "mask" (plus the real weight: half an element).
    """
    flops = smem = eff = 0
    Ns = 1
    pad = _row_pad(W)
    for i, R in enumerate(row_radices(W)):
        L = W // R
        mode = first if i == 0 else "smem"
        per_in = {"smem": 1.0, "coils": 2.0, "mask": 1.5}[mode]
        direct = R not in _ROW_BUTTERFLY
        rf, wf = _stage_conflicts(W, R, Ns, nb, complex_bytes, direct, row_ld(W),
                                  pin=pad if i == 1 else 0, pout=bool(pad) and i == 0)
        if not direct:
            h = (R - 1) // 2 if R % 2 else (12 if R == 20 else 0)  # table reads inside the butterfly
            twiddle = (2 * R - 3) * 6 if Ns > 1 else 0  # R − 1 multiplies and the power chain
            flops += L * (_butterfly_flops(R) + twiddle) + (6 * W if mode == "coils" else 0)
            extra = L * ((1 if Ns > 1 else 0) + h)  # w1, cos/sin (broadcast reads)
            smem += per_in * W + W + extra
            eff += per_in * W * rf + W * wf + extra
        else:  # direct DFT: R complex multiply-adds per output, data and table read per term
            flops += 8 * R * W
            smem += (per_in + 1) * R * W + W
            eff += per_in * R * W * rf + R * W + W * wf
        Ns *= R
    return flops, smem, eff


def row_step_work(B: int, C: int, H: int, W: int, complex_bytes: int, has_v: bool = True,
                  has_r0: bool = True, Cg: int | None = None) -> dict:
    """Work of one flat_row_step launch (see ROW_KERNELS) as the code does it.

    dram_bytes: S, x, [v], [Aᴴy] read once, the output written once, the mask once per sample (its
    re-reads by every block of a sample are L2 hits).
    flops: real floating-point operations (FMA = 2).
    smem_traffic_bytes: shared-memory traffic; smem_wavefront_bytes: the same with every FFT-stage access
    weighted by its bank-conflict factor (simulated lane by lane for 256-thread blocks).
    ``Cg``: coils per chunk (row_plan; default all C).
    """
    Cg = C if Cg is None else Cg
    chunks = -(-C // Cg)
    rows, px = B * H, B * H * W
    cb = complex_bytes
    dram = cb * (B * C * H * W + px * (2 + int(has_v) + int(has_r0))) + B * W * (cb // 2)
    radices = row_radices(W)
    fold = bool(radices) and radices[0] in _ROW_BUTTERFLY
    if W > 1:
        ff, fs, fe = _fft_counts(W, "coils" if fold else "smem", Cg, cb)
        fi, si, ie = _fft_counts(W, "mask", Cg, cb)
    else:
        ff = fs = fe = 0
        fi, si, ie = W, 1.5 * W, 1.5 * W
    pro_f, pro_s = (0, 0) if fold else (6 * W, 3 * W)  # separate S·x pass: write Ss, u; read xs
    per_coil_flops = ff + fi + pro_f + 8 * W  # + conj(S)·u accumulate
    rest = pro_s + 2 * W  # + read Ss, u in the accumulate
    flops = rows * C * per_coil_flops + px * 12
    other = rows * chunks * 2 * W + px * 4.5  # acc per chunk; xs, acc, ms per row; epilogue reads
    smem = cb * (rows * C * (fs + si + rest) + other)
    eff = cb * (rows * C * (fe + ie + rest) + other)
    return {"dram_bytes": dram, "flops": flops, "smem_traffic_bytes": int(smem), "smem_wavefront_bytes": int(eff),
            "blocks": rows, "threads": ROW_THREADS, "radices": radices, "fold_prologue": fold,
            "chunks": chunks}


def row_grad_work(B: int, C: int, H: int, W: int, complex_bytes: int, has_q: bool = False, has_r0: bool = True,
                  has_v: bool = True, want_gx: bool = True, want_red: bool = True, Cg: int | None = None) -> dict:
    """Work of one flat_row_grad launch (the fused backward with learned maps, row_step.cu) as coded.

    dram_bytes: S, x, g, [q], [Aᴴy], [v] read once; grad_S, [grad_x], [the per-row sums] written
    once; the mask once per sample. flops (FMA = 2): per coil two projections (forward and inverse
    transform each, counted as row_step_work counts one), the grad_S terms and two coil sums.
    smem_*: as row_step_work. ``Cg``: coils per chunk (row_plan(..., kernel="row_grad"); default C).
    """
    Cg = C if Cg is None else Cg
    chunks = -(-C // Cg)
    rows, px = B * H, B * H * W
    cb, real = complex_bytes, complex_bytes // 2
    coil = B * C * H * W
    dram = (cb * (coil * (2 + int(has_q)) + px * (2 + int(has_r0) + int(has_v) + int(want_gx)))
            + rows * 2 * real * int(want_red) + B * W * real)
    radices = row_radices(W)
    fold = bool(radices) and radices[0] in _ROW_BUTTERFLY
    if W > 1:  # the S·g stage reads Ss and gs from shared memory: the same two accesses as S·x's
        ff, fs, fe = _fft_counts(W, "coils" if fold else "smem", Cg, cb)
        fi, si, ie = _fft_counts(W, "mask", Cg, cb)
    else:
        ff = fs = fe = 0
        fi, si, ie = W, 1.5 * W, 1.5 * W
    pro_f, pro_s = (0, 0) if fold else (6 * W, 3 * W)  # separate S·z pass per projection
    # per coil and column: conj(g)·(u − q) + conj(x)·v, −c·(…), conj(S)·v and conj(S)·u accumulated
    epi_f = (30 + 4 * int(has_q)) * W
    per_coil_flops = 2 * (ff + fi + pro_f) + epi_f
    rest = 2 * pro_s + 3 * W  # + read Ss, P(S x), P(S g) in the epilogue
    flops = rows * C * per_coil_flops + px * (4 * int(want_gx) + 12 * int(want_red))
    other = rows * chunks * 6 * W + px * 8.5  # ax, ar, xs, gs per chunk; loads, init, ms, final reads
    smem = cb * (rows * C * (2 * (fs + si) + rest) + other)
    eff = cb * (rows * C * (2 * (fe + ie) + rest) + other)
    return {"dram_bytes": dram, "flops": flops, "smem_traffic_bytes": int(smem), "smem_wavefront_bytes": int(eff),
            "blocks": rows, "threads": ROW_THREADS, "radices": radices, "fold_prologue": fold,
            "chunks": chunks}


def _ishift(n: int) -> int:
    """Read offset of ifftshift: ifftshift(z)[i] = z[(i + n//2) mod n]."""
    return n // 2


def _fshift(n: int) -> int:
    """Read offset of fftshift: fftshift(u)[i] = u[(i + (n+1)//2) mod n]."""
    return (n + 1) // 2


class Engine:
    """The fused data-consistency ops on arrays of one runtime (see the module docstring)."""

    def __init__(self, rt):
        self.rt = rt
        self.xp = rt.xp
        # the one-pass row kernel, where the runtime can launch it (column masks only);
        # FLAT_CUPY_ROW_KERNEL=0 keeps every op on the cuFFT path (to compare the two on a GPU)
        self.rows = hasattr(rt, "launch_rows") and os.environ.get("FLAT_CUPY_ROW_KERNEL", "1") != "0"

    # ------------------------------------------------------------ plumbing
    def _launch(self, name, dtype, **kw):
        args = [(kind, kw[pname]) for pname, kind in SIGNATURES[name]]
        self.rt.launch(name, dtype, kw["B"], kw["H"] * kw["W"], args)

    def _coef(self, t, B):
        """A per-batch real coefficient as (contiguous 1-D array, stride 0 or 1)."""
        t = self.xp.ascontiguousarray(self.xp.reshape(t, (-1,)))
        if t.shape[0] not in (1, B):
            raise ValueError(f"dt/lam: expected shape () or ({B},), got {tuple(t.shape)}")
        return t, (0 if t.shape[0] == 1 else 1)

    def _real(self, dtype):
        return self.xp.float32 if self.xp.dtype(dtype) == self.xp.complex64 else self.xp.float64

    def _const(self, value, dtype):
        return self.xp.full((1,), value, dtype=self._real(dtype))

    @staticmethod
    def _dims(sens):
        B, C, H, W = sens.shape
        return B, C, H, W

    # ------------------------------------------------------------ building blocks
    def _expand(self, S, x, mask=None, centered=False):
        """Coil stack ``S ⊙ x`` (or ``M ⊙ y`` with ``x=None``), ifftshift-ed when ``centered``."""
        B, C, H, W = self._dims(S)
        buf = self.rt.empty(S.shape, S.dtype)
        m = mask if mask is not None else None
        self._launch(
            "prologue", S.dtype,
            A=S, X=x, M=m, out=buf, has_x=int(x is not None), has_m=int(m is not None),
            B=B, Cn=C, H=H, W=W,
            Bm=(m.shape[0] if m is not None else 1), Hm=(m.shape[1] if m is not None else 1),
            shH=_ishift(H) if centered else 0, shW=_ishift(W) if centered else 0,
        )
        return buf

    def _project(self, buf, mask):
        """In place: buf <- (unscaled) Fᴴ diag(ifftshift M) F buf; returns the scale 1/N to apply."""
        B, C, H, W = buf.shape
        column = mask.shape[1] == 1
        axes = (-1,) if column else (-2, -1)
        self.rt.fft(buf, axes, inverse=False)
        self._launch(
            "mask_apply", buf.dtype,
            buf=buf, M=mask, B=B, Cn=C, H=H, W=W, Bm=mask.shape[0], Hm=mask.shape[1],
            shH=0 if column else _ishift(H), shW=_ishift(W),
        )
        self.rt.fft(buf, axes, inverse=True)
        return 1.0 / (W if column else H * W)

    def _reduce(self, S, buf, scale, centered=False, x=None, v=None, r0=None, a=None, c=None):
        """x + a·v − c·(scale·Σ_c conj(S_c)·buf_c − r0) with fftshift-ed reads of buf if centered."""
        B, C, H, W = self._dims(S)
        if c is None:
            c = self._const(-1.0, S.dtype)
        cc, cs = self._coef(c, B)
        aa, as_ = self._coef(a, B) if a is not None else (cc, 0)
        out = self.rt.empty((B, H, W), S.dtype)
        self._launch(
            "reduce_epilogue", S.dtype,
            S=S, buf=buf, X=x, V=v, R0=r0, a=aa, a_stride=as_, cc=cc, c_stride=cs, out=out,
            scale=scale, has_x=int(x is not None), has_v=int(v is not None), has_r0=int(r0 is not None),
            B=B, Cn=C, H=H, W=W, shH=_fshift(H) if centered else 0, shW=_fshift(W) if centered else 0,
        )
        return out

    def _kspace_out(self, buf, mask=None, k=None, y=None, ck=None, cf=None, mask_fft=False):
        """Epilogue on buf = unscaled FFT2 of ifftshift(S ⊙ z): cf·M?·fft2c(S z) [+ k − ck·M·(k − y)]."""
        B, C, H, W = buf.shape
        if cf is None:
            cf = self._const(1.0, buf.dtype)
        cfa, cfs = self._coef(cf, B)
        cka, cks = self._coef(ck, B) if ck is not None else (cfa, 0)
        out = self.rt.empty(buf.shape, buf.dtype)
        self._launch(
            "kspace_epilogue", buf.dtype,
            buf=buf, K=k, Y=y, M=mask, ck=cka, ck_stride=cks, cf=cfa, cf_stride=cfs, out=out,
            scale=1.0 / math.sqrt(H * W), has_k=int(k is not None), has_y=int(y is not None),
            has_m=int(mask is not None), mask_fft=int(mask_fft),
            B=B, Cn=C, H=H, W=W,
            Bm=(mask.shape[0] if mask is not None else 1), Hm=(mask.shape[1] if mask is not None else 1),
            shH=_fshift(H), shW=_fshift(W),
        )
        return out

    def _fft2c_coils(self, S, z):
        """Unscaled FFT2 of ifftshift(S ⊙ z): feed to :meth:`_kspace_out`."""
        buf = self._expand(S, z, centered=True)
        self.rt.fft(buf, (-2, -1), inverse=False)
        return buf

    def _ifft2c_coils(self, k, mask=None):
        """Unscaled IFFT2 of ifftshift(M ⊙ k): read it fftshift-ed with scale 1/sqrt(HW)."""
        buf = self._expand(k, None, mask=mask, centered=True)
        self.rt.fft(buf, (-2, -1), inverse=True)
        return buf, 1.0 / math.sqrt(k.shape[-2] * k.shape[-1])

    def _row_plan(self, S, mask, kernel="row_step"):
        """The row kernel's plan for this call, or None when the cuFFT path must be taken."""
        if not self.rows or mask.shape[1] != 1:
            return None
        B, C, H, W = self._dims(S)
        return row_plan(C, W, self.xp.dtype(S.dtype).itemsize, self.rt.row_smem_limits(S.dtype), kernel)

    def _row_grad(self, S, x, g, mask, plan, c, keep_g=False, want_gx=True, q=None, sq=0.0, r0=None, v=None,
                  want_red=False):
        """The fused backward with learned maps (flat_row_grad, row_step.cu; docs/row_kernel.md):

            grad_S_c = −c·[(P(S_c x) − sq·q_c)·conj(g) + conj(x)·P(S_c g)]
            grad_x   = [keep_g]·g − c·AᴴA g                      (when want_gx)
            red[b,h] = (Re Σ_w conj(g)·r, Re Σ_w conj(g)·v),  r = AᴴA x − Aᴴy   (when want_red)

        with Aᴴy = Σ_c conj(S_c)·sq·q_c (q: the unscaled IFFT2 of ifftshift(M ⊙ y), read fftshift-ed)
        or the given r0. One pass over S; returns (grad_x or None, grad_S, red or None)."""
        B, C, H, W = self._dims(S)
        cc, cs = self._coef(c, B)
        gx = self.rt.empty((B, H, W), S.dtype) if want_gx else None
        gs = self.rt.empty(S.shape, S.dtype)
        red = self.rt.empty((B, H, 2), self._real(S.dtype)) if want_red else None
        kw = dict(S=S, X=x, G=g, V=v, R0=r0, Q=q, M=mask, cc=cc, c_stride=cs, gx_out=gx, gs_out=gs, red_out=red,
                  sq=float(sq or 0.0), has_x=int(keep_g), has_gx=int(want_gx), has_q=int(q is not None),
                  has_r0=int(r0 is not None), has_v=int(v is not None), has_red=int(want_red),
                  qshH=_fshift(H) if q is not None else 0, qshW=_fshift(W) if q is not None else 0,
                  B=B, Cn=C, H=H, W=W, Bm=mask.shape[0], Cg=plan["Cg"], ld=plan["ld"])
        args = [(kind, kw[pname]) for pname, kind in ROW_SIGNATURES["row_grad"]]
        self.rt.launch_rows("row_grad", S.dtype, B, H, plan["smem_bytes"], args)
        return gx, gs, red

    def _step(self, S, z, mask, keep_z=False, v=None, r0=None, a=None, c=None):
        """[keep_z]·z + a·v − c·(AᴴA z − r0): the row kernel for a column mask, else cuFFT + kernels."""
        plan = self._row_plan(S, mask)
        if plan is None:
            buf = self._expand(S, z)
            s = self._project(buf, mask)
            return self._reduce(S, buf, s, x=z if keep_z else None, v=v, r0=r0, a=a, c=c)
        B, C, H, W = self._dims(S)
        if c is None:
            c = self._const(-1.0, S.dtype)
        cc, cs = self._coef(c, B)
        aa, as_ = self._coef(a, B) if a is not None else (cc, 0)
        out = self.rt.empty((B, H, W), S.dtype)
        kw = dict(S=S, X=z, V=v, R0=r0, M=mask, a=aa, a_stride=as_, cc=cc, c_stride=cs, out=out,
                  has_x=int(keep_z), has_v=int(v is not None), has_r0=int(r0 is not None),
                  B=B, Cn=C, H=H, W=W, Bm=mask.shape[0], Cg=plan["Cg"], ld=plan["ld"])
        args = [(kind, kw[pname]) for pname, kind in ROW_SIGNATURES["row_step"]]
        self.rt.launch_rows("row_step", S.dtype, B, H, plan["smem_bytes"], args)
        return out

    def _grad_sens(self, x, g, coef, U=None, su=0.0, Q=None, sq=0.0, Wb=None, sw=1.0, w_centered=False):
        B, H, W = x.shape
        C = Wb.shape[1]
        co, cs = self._coef(coef, B)
        out = self.rt.empty(Wb.shape, Wb.dtype)
        self._launch(
            "grad_sens", x.dtype,
            X=x, G=g, U=U, Q=Q, Wb=Wb, coef=co, coef_stride=cs, out=out,
            su=su, sq=sq, sw=sw, has_u=int(U is not None), has_q=int(Q is not None),
            qshH=_fshift(H), qshW=_fshift(W),
            wshH=_fshift(H) if w_centered else 0, wshW=_fshift(W) if w_centered else 0,
            B=B, Cn=C, H=H, W=W,
        )
        return out

    def _grad_scalar(self, contrib, like):
        per_b = self.xp.reshape(contrib, (contrib.shape[0], -1)).sum(1)
        out = per_b.sum() if like.ndim == 0 else per_b
        return self.xp.asarray(out, dtype=like.dtype).reshape(like.shape)

    def _per_batch(self, t, ndim):
        return t if t.ndim == 0 else self.xp.reshape(t, (-1,) + (1,) * (ndim - 1))

    # ------------------------------------------------------------ forward ops
    def sens_expand(self, image, sens):
        return self._kspace_out(self._fft2c_coils(sens, image))

    def sense_forward(self, image, sens, mask):
        return self._kspace_out(self._fft2c_coils(sens, image), mask=mask, mask_fft=True)

    def sens_reduce(self, kspace, sens):
        buf, s = self._ifft2c_coils(kspace)
        return self._reduce(sens, buf, s, centered=True)

    def sense_adjoint(self, kspace, sens, mask):
        buf, s = self._ifft2c_coils(kspace, mask)
        return self._reduce(sens, buf, s, centered=True)

    def normal(self, image, sens, mask):
        return self._step(sens, image, mask)

    def dc_gradient(self, image, kspace, sens, mask):
        ahy = self.sense_adjoint(kspace, sens, mask)
        return self._step(sens, image, mask, r0=ahy)

    def flow_step(self, image, velocity, kspace, sens, mask, dt, lam, ahy=None):
        if ahy is None:
            ahy = self.sense_adjoint(kspace, sens, mask)
        return self._step(sens, image, mask, keep_z=True, v=velocity, r0=ahy, a=dt, c=dt * lam)

    def kspace_flow_step(self, kstate, image_update, kspace, sens, mask, dt, lam):
        buf = self._fft2c_coils(sens, image_update)
        return self._kspace_out(buf, mask=mask, k=kstate, y=kspace, ck=dt * lam, cf=dt)

    # ------------------------------------------------------------ backward ops: fn(grad, inputs, needs)
    def normal_backward(self, g, inputs, needs):
        image, sens, mask = inputs
        gx = gs = None
        plan = self._row_plan(sens, mask, "row_grad") if needs[1] else None
        if plan is not None:  # column mask: grad_S and grad_x in one pass over S (no coil stack)
            gx, gs, _ = self._row_grad(sens, image, g, mask, plan, self._const(-1.0, g.dtype), want_gx=needs[0])
        elif needs[1]:  # grad_S needs the projected stacks P(S g), P(S x) (C×H×W): cuFFT path
            w = self._expand(sens, g)
            s = self._project(w, mask)
            if needs[0]:
                gx = self._reduce(sens, w, s)
            u = self._expand(sens, image)
            self._project(u, mask)
            gs = self._grad_sens(image, g, self._const(-1.0, g.dtype), U=u, su=s, Wb=w, sw=s)
        elif needs[0]:
            gx = self._step(sens, g, mask)  # AᴴA g (AᴴA is Hermitian)
        return gx, gs, None

    def dc_gradient_backward(self, g, inputs, needs):
        image, kspace, sens, mask = inputs
        gx = gy = gs = None
        plan = self._row_plan(sens, mask, "row_grad") if needs[2] else None
        if plan is not None:  # q = ifft2c(M y) needs the 2-D transform (cuFFT); the rest in one pass
            q, sq = self._ifft2c_coils(kspace, mask)
            gx, gs, _ = self._row_grad(sens, image, g, mask, plan, self._const(-1.0, g.dtype), want_gx=needs[0],
                                       q=q, sq=sq)
        elif needs[2]:  # grad_S: cuFFT path, as in normal_backward
            w = self._expand(sens, g)
            s = self._project(w, mask)
            if needs[0]:
                gx = self._reduce(sens, w, s)
            u = self._expand(sens, image)
            self._project(u, mask)
            q, sq = self._ifft2c_coils(kspace, mask)
            gs = self._grad_sens(image, g, self._const(-1.0, g.dtype), U=u, su=s, Q=q, sq=sq, Wb=w, sw=s)
        elif needs[0]:
            gx = self._step(sens, g, mask)
        if needs[1]:
            gy = self._kspace_out(self._fft2c_coils(sens, g), mask=mask, cf=self._const(-1.0, g.dtype),
                                  mask_fft=True)
        return gx, gy, gs, None

    def flow_step_backward(self, g, inputs, needs):
        image, velocity, kspace, sens, mask, dt, lam, ahy = inputs
        c = dt * lam
        gx = gv = gy = gs = gdt = glam = gahy = None
        plan = self._row_plan(sens, mask, "row_grad") if needs[3] else None
        if plan is not None:  # column mask: grad_S, grad_x and the grad_dt/grad_lam sums in one pass
            q = sq = None
            if ahy is None:  # Aᴴy from y depends on S: its q = ifft2c(M y) term (2-D transform, cuFFT)
                q, sq = self._ifft2c_coils(kspace, mask)
            want_red = bool(needs[5] or needs[6])
            gx, gs, red = self._row_grad(sens, image, g, mask, plan, c, keep_g=True, want_gx=needs[0], q=q,
                                         sq=sq, r0=ahy, v=velocity if needs[5] else None, want_red=want_red)
            if needs[1]:
                gv = self._per_batch(dt, 3) * g
            if needs[2] and ahy is None:
                gy = self._kspace_out(self._fft2c_coils(sens, g), mask=mask, cf=c, mask_fft=True)
            if want_red:  # grad_dt = Re Σ conj(g)·(v − lam·r), grad_lam = −dt·Re Σ conj(g)·r
                gr, gvv = red[..., 0], red[..., 1]
                if needs[5]:
                    gdt = self._grad_scalar(gvv - self._per_batch(lam, 2) * gr, dt)
                if needs[6]:
                    glam = self._grad_scalar(-self._per_batch(dt, 2) * gr, lam)
            if ahy is not None and needs[7]:
                gahy = self._per_batch(c, 3) * g
            return gx, gv, gy, gs, None, gdt, glam, gahy
        w = s = None
        if needs[3]:  # grad_S needs P(S g) and P(S x) as coil stacks: cuFFT path
            w = self._expand(sens, g)
            s = self._project(w, mask)
        if needs[0]:  # (I − dt·lam·AᴴA) g
            gx = self._reduce(sens, w, s, x=g, c=c) if w is not None else self._step(sens, g, mask, keep_z=True, c=c)
        if needs[1]:
            gv = self._per_batch(dt, 3) * g
        if needs[2] and ahy is None:
            gy = self._kspace_out(self._fft2c_coils(sens, g), mask=mask, cf=c, mask_fft=True)
        u = su = None
        if needs[3]:
            u = self._expand(sens, image)
            su = self._project(u, mask)
        q = sq = None
        if ahy is None and (needs[3] or needs[5] or needs[6]):
            q, sq = self._ifft2c_coils(kspace, mask)
        if needs[3]:
            gs = self._grad_sens(image, g, c, U=u, su=su, Q=q, sq=sq or 0.0, Wb=w, sw=s)
        if needs[5] or needs[6]:
            r0 = ahy if ahy is not None else self._reduce(sens, q, sq, centered=True)
            # AᴴA x − Aᴴy
            r = self._reduce(sens, u, su, r0=r0) if u is not None else self._step(sens, image, mask, r0=r0)
            gconj = self.xp.conj(g)
            if needs[5]:
                gdt = self._grad_scalar(self.xp.real(gconj * (velocity - self._per_batch(lam, 3) * r)), dt)
            if needs[6]:
                glam = self._grad_scalar(self.xp.real(gconj * (-self._per_batch(dt, 3) * r)), lam)
        if ahy is not None and needs[7]:
            gahy = self._per_batch(c, 3) * g
        return gx, gv, gy, gs, None, gdt, glam, gahy

    def kspace_flow_step_backward(self, g, inputs, needs):
        kstate, image_update, kspace, sens, mask, dt, lam = inputs
        xp = self.xp
        dt4 = self._per_batch(dt, 4)
        c4 = self._per_batch(dt * lam, 4)
        m = mask[:, None]  # (Bm, 1, Hm, W)
        gk = gz = gy = gs = gdt = glam = None
        if needs[0] or needs[2]:
            cmg = c4 * m * g
            if needs[0]:
                gk = g - cmg
            if needs[2]:
                gy = cmg
        if needs[1] or needs[3]:
            ub, su = self._ifft2c_coils(g)
            if needs[1]:
                gz = self._reduce(sens, ub, su, centered=True, c=-dt)
            if needs[3]:
                gs = self._grad_sens(image_update, None, -dt, Wb=ub, sw=su, w_centered=True)
        if needs[5] or needs[6]:
            diff = m * (kstate - kspace)
            gconj = xp.conj(g)
            if needs[5]:
                fe = self.sens_expand(image_update, sens)
                gdt = self._grad_scalar(xp.real(gconj * (fe - self._per_batch(lam, 4) * diff)), dt)
            if needs[6]:
                glam = self._grad_scalar(xp.real(gconj * (-dt4 * diff)), lam)
        return gk, gz, gy, gs, None, gdt, glam

