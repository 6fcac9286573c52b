"""ESPIRiT coil sensitivities in PyTorch (Uecker et al., MRM 2014), batched over slices.

The fully sampled centre of k-space (the ACS block) is consistent with a small set of k-space
kernels: every ``kh x kw`` patch of it lies in a low-dimensional signal subspace. ESPIRiT finds that
subspace by an SVD of the calibration matrix (one row per patch), turns the projection onto it into
a per-pixel ``C x C`` operator ``G(x)`` in image space, and takes as sensitivities at ``x`` the
eigenvector of ``G(x)`` whose eigenvalue is 1 (where the coils see signal the largest eigenvalue is
close to 1; outside the object it drops, which gives the support). See docs/classical.md for the
derivation of ``G`` that this code follows and for the checks against sigpy and the true maps.

    sens = espirit_maps(masked_kspace, num_low_frequencies)      # (B, C, H, W), Σ_c |S_c|² = 1

Works on any device and in complex64 / complex128 (the dtype of the input).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from flat.coils import acs_block, centre_widths


def _pair(v, name: str) -> tuple[int, int]:
    kh, kw = (v, v) if isinstance(v, int) else tuple(int(x) for x in v)
    if kh < 1 or kw < 1:
        raise ValueError(f"{name}: must be >= 1, got {v}")
    return kh, kw


def calibration_kernels(calib: torch.Tensor, kernel: tuple[int, int], threshold: float) -> torch.Tensor:
    """Signal-subspace kernels ``(n, C, kh, kw)`` of one calibration region ``(C, h, w)``.

    The calibration matrix has one row per ``kh x kw`` patch (all coils); its right singular
    vectors with singular value above ``threshold`` times the largest span the patches. They come
    from the eigen-decomposition of the small Gram matrix ``AᴴA`` (``C·kh·kw`` square), whose
    eigenvalues are the squared singular values. The kernels are the rows of ``Vᴴ``: every patch
    (a row of ``A``) is a combination of them.
    """
    C, h, w = calib.shape
    kh, kw = kernel
    patches = calib.unfold(1, kh, 1).unfold(2, kw, 1)  # (C, ph, pw, kh, kw)
    A = patches.permute(1, 2, 0, 3, 4).reshape(-1, C * kh * kw)
    evals, V = torch.linalg.eigh(A.mH @ A)  # ascending σ²
    sv = evals.clamp_min(0).sqrt()
    keep = sv > threshold * sv[-1]
    # rows of A are combinations of the rows of Vᴴ: those rows are the kernels
    return V[:, keep].mH.reshape(-1, C, kh, kw)


def image_space_operator(kernels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Per-pixel ``G(x)``, ``(H, W, C, C)``, of the kernels ``(n, C, kh, kw)`` on an ``H x W``
    image (centred coordinates, as :func:`flat.ops.ifft2c` images).

    ``G(x) = 1/(kh·kw) Σ_i a_i(x) a_i(x)ᴴ`` with ``a_i(c, x) = Σ_Δ k_i(c, Δ) e^{+2πiΔ·x}``.
    ``G`` is a trigonometric polynomial of degree ``< k`` per axis, so it is evaluated exactly on a
    small ``2kh x 2kw`` grid, brought back to its (2k-1)^2 coefficients, zero-padded and
    transformed once to ``H x W``: C² FFTs of the image size instead of n·C.
    """
    n, C, kh, kw = kernels.shape
    H, W = shape
    if H < 2 * kh - 1 or W < 2 * kw - 1:
        raise ValueError(f"image {H}x{W} is too small for a {kh}x{kw} kernel")
    Mh, Mw = 2 * kh, 2 * kw
    # a_i on the small grid: unnormalised inverse DFT of the kernel placed at the origin
    a = torch.fft.ifft2(kernels, s=(Mh, Mw), norm="forward")  # (n, C, Mh, Mw)
    G_small = torch.einsum("icyx,idyx->cdyx", a, a.conj()) / (kh * kw)  # (C, C, Mh, Mw)
    # G(x) = Σ_δ g(δ) e^{-2πiδ·x}, so its coefficients are g[δ mod M] = ifft2(G_small)
    g = torch.fft.ifft2(G_small)
    g = torch.roll(g, shifts=(kh - 1, kw - 1), dims=(-2, -1))[..., : 2 * kh - 1, : 2 * kw - 1]
    full = g.new_zeros(C, C, H, W)
    full[..., : 2 * kh - 1, : 2 * kw - 1] = g
    full = torch.roll(full, shifts=(-(kh - 1), -(kw - 1)), dims=(-2, -1))  # δ at δ mod (H, W)
    G = torch.fft.fft2(full)  # G at every pixel, x = 0 at index 0
    # fftshift puts x = 0 at the image centre (index N // 2), as ifft2c does
    G = torch.fft.fftshift(G, dim=(-2, -1))
    return G.permute(2, 3, 0, 1).contiguous()


def espirit_maps(
    masked_kspace: torch.Tensor,
    num_low_frequencies: Union[int, Sequence[int], torch.Tensor],
    *,
    kernel: Union[int, tuple[int, int]] = 6,
    calib_rows: Optional[int] = None,
    threshold: float = 0.02,
    crop: Optional[float] = None,
    ref_coil: Optional[int] = None,
    method: str = "eigh",
    power_iters: int = 50,
    return_eigenvalues: bool = False,
):
    """ESPIRiT maps ``(B, C, H, W)`` from masked k-space ``(B, C, H, W)`` (complex64/complex128).

    Args:
        masked_kspace: k-space whose centre ``num_low_frequencies`` columns are fully sampled
            (fastMRI's layout: W is the phase-encode axis, H the fully sampled readout).
        num_low_frequencies: width of the fully sampled centre block (int or one per slice).
        kernel: k-space kernel size (``k`` or ``(kh, kw)``). ``kw`` is narrowed where the ACS block
            is narrow: to at most ``num_low // 2`` (so that more than half the block's columns are
            patch positions; wider kernels on 5- or 10-column blocks gave lower eigenvalues inside
            the object and 0.4 to 0.7 dB less CG-SENSE PSNR on the demo validation volumes), and
            further until the calibration matrix has at least as many rows (patches) as columns
            (``C·kh·kw``), without which its SVD cannot separate signal from null space
            (docs/classical.md).
        calib_rows: rows of the centred calibration region; ``None`` (default) takes all H rows
            (fastMRI samples every readout row), which gave the most accurate maps.
        threshold: singular values above ``threshold`` times the largest span the signal space.
        crop: maps are zero where the largest eigenvalue of ``G(x)`` is at or below ``crop``.
            ``None`` (default): 0.9 for kernels at least 4 columns wide, 0.95 for narrower ones.
            The eigenvalue map of a wider kernel falls off more sharply at the object's edge, and
            0.95 cut into the object there on held-out brain slabs; a narrow kernel's map is
            smooth and the tighter crop is the better one (docs/classical.md).
        ref_coil: the phase of every map is taken relative to this coil's; ``None`` (default):
            relative to a virtual coil, the first principal component of the calibration data
            over coils (as BART's ecalib rotates its maps), which sees the whole object. A single
            coil's phase is undefined where that coil sees little, which puts phase jumps into
            the coil-combined image: harmless for CG-SENSE (it reports magnitudes) but not for a
            network that reads real and imaginary parts (docs/classical.md).
        method: ``"eigh"`` (batched Hermitian eigen-decomposition, exact) or ``"power"``
            (``power_iters`` power iterations; only matrix products, faster on some GPUs).
        return_eigenvalues: also return the largest eigenvalue per pixel ``(B, H, W)`` (real).

    Inside the support ``Σ_c |S_c|² = 1`` (unit eigenvectors); outside it ``S = 0``.
    """
    k = masked_kspace
    if not isinstance(k, torch.Tensor) or not torch.is_complex(k):
        raise TypeError(f"masked_kspace: expected a complex tensor (B, C, H, W), got "
                        f"{getattr(k, 'dtype', type(k).__name__)}")
    if k.dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"masked_kspace: expected complex64 or complex128, got {k.dtype}")
    if k.ndim != 4:
        raise ValueError(f"masked_kspace: expected (B, C, H, W), got shape {tuple(k.shape)}")
    B, C, H, W = k.shape
    kh, kw0 = _pair(kernel, "kernel")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold: must lie in [0, 1), got {threshold}")
    if crop is not None and not 0 <= crop < 1:
        raise ValueError(f"crop: must lie in [0, 1), got {crop}")
    if ref_coil is not None and not 0 <= ref_coil < C:
        raise ValueError(f"ref_coil: must lie in [0, {C}), got {ref_coil}")
    if method not in ("eigh", "power"):
        raise ValueError(f"method: expected 'eigh' or 'power', got {method!r}")
    if calib_rows is not None and calib_rows < 1:
        raise ValueError(f"calib_rows: must be >= 1 or None, got {calib_rows}")
    rows = H if calib_rows is None else min(int(calib_rows), H)
    r0 = (H - rows + 1) // 2  # centred like the ACS columns
    nl = centre_widths(num_low_frequencies, B)

    maps, eigs = [], []
    for b in range(B):
        if not 2 <= nl[b] <= W:
            raise ValueError(f"num_low_frequencies: {nl[b]} is outside [2, W={W}]")
        s, e = acs_block(W, nl[b])
        if rows < kh + 1:
            raise ValueError(f"calib_rows: {rows} rows are too few for a kernel of {kh} rows")
        kw = min(kw0, max(1, nl[b] // 2))
        while kw > 1 and (rows - kh + 1) * (nl[b] - kw + 1) < C * kh * kw:
            kw -= 1
        kern = calibration_kernels(k[b, :, r0:r0 + rows, s:e], (kh, kw), threshold)
        G = image_space_operator(kern, (H, W))  # (H, W, C, C)
        if method == "eigh":
            lam, vec = torch.linalg.eigh(G)
            lam, vec = lam[..., -1], vec[..., -1]  # (H, W), (H, W, C)
        else:
            vec = torch.ones(H, W, C, 1, dtype=G.dtype, device=G.device) / C ** 0.5
            for _ in range(power_iters):
                vec = G @ vec
                vec = vec / torch.linalg.vector_norm(vec, dim=-2, keepdim=True).clamp_min(1e-30)
            lam = (vec.mH @ G @ vec).real[..., 0, 0]
            vec = vec[..., 0]
        if ref_coil is None:  # the virtual coil: top eigenvector of the calibration data's coil covariance
            calib = k[b, :, r0:r0 + rows, s:e].reshape(C, -1)
            virtual = torch.linalg.eigh(calib @ calib.mH)[1][:, -1]
            ref = (vec @ virtual.conj())[..., None]
        else:
            ref = vec[..., ref_coil : ref_coil + 1]
        phase = ref.conj() / ref.abs().clamp_min(torch.finfo(lam.dtype).tiny)
        vec = torch.where(ref.abs() > 0, vec * phase, vec)
        c = (0.9 if kw >= 4 else 0.95) if crop is None else crop
        vec = vec * (lam > c)[..., None]
        maps.append(vec.permute(2, 0, 1))
        eigs.append(lam)
    out = torch.stack(maps).to(k.dtype)
    if return_eigenvalues:
        return out, torch.stack(eigs)
    return out
