"""Pure-PyTorch implementation of every op: the CPU path, the oracle for the kernels.

All functions take canonical tensors (docs/operators.md): image ``(B, H, W)`` complex,
k-space/sens ``(B, C, H, W)`` complex, mask ``(Bm, Hm, W)`` real (``Hm == 1``: column mask),
``dt``/``lam`` real tensors of shape ``()`` or ``(B,)``.

The data-consistency ops use the algebraic form of docs/operators.md ("the column-mask identity"):
for any mask,

    ifft2c(M ⊙ fft2c(z)) = F⁻¹(ifftshift(M) ⊙ F z)

(a masked projection is a circulant operator and commutes with the cyclic shifts), with F the
un-shifted FFT along W only for a column mask (the H transform is unitary and cancels) and along
(H, W) for a 2-D mask. No fftshift is ever materialised on that path.

Backward formulas follow docs/operators.md ("backward") with PyTorch's convention for complex gradients
(``grad`` is the conjugate Wirtinger derivative ∂L/∂z̄ of a real loss):
for ``out = A(z)`` linear, ``grad_z = Aᴴ grad_out``; for ``out = conj(s) u``, ``grad_s = conj(grad_out) u``.
Conjugates are ``conj_physical``: a lazy ``.conj()`` inside a custom op gives wrong numbers under
torch.compile (docs/operators.md, "custom-op pitfalls"; caught by ``opcheck``).
"""
from __future__ import annotations

import torch

from flat.ops.backends import register_module

_DIMS = (-2, -1)


# ---------------------------------------------------------------- centered FFT (fastMRI's convention)
def fft2c(x):
    """Centered orthonormal 2-D FFT over the last two dims (numpy-style shifts, odd sizes too)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(x):
    """Centered orthonormal 2-D inverse FFT over the last two dims."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


# ---------------------------------------------------------------- helpers
def _kmask(mask):
    """(Bm, Hm, W) mask -> (Bm, 1, Hm, W), broadcast over coils of centered k-space."""
    return mask.unsqueeze(1)


def _apply_mask(mask, k):
    """M ⊙ k with masked entries exactly +0.0 (0.0 * -x would give -0.0; fastMRI re-released over this)."""
    m = _kmask(mask)
    return torch.where(m != 0, k * m, torch.zeros((), dtype=k.dtype, device=k.device))


def _projector(mask):
    """(shifted mask broadcast over coils, FFT dims) for P z = ifft2c(M ⊙ fft2c(z)) without shifts."""
    if mask.shape[-2] == 1:  # column mask: 1-D transforms along W (docs/operators.md)
        return _kmask(torch.fft.ifftshift(mask, dim=-1)), (-1,)
    return _kmask(torch.fft.ifftshift(mask, dim=_DIMS)), _DIMS


def _project(z, proj):
    """P z for (B, C, H, W) coil images; P is Hermitian (and idempotent for a 0/1 mask)."""
    m, dims = proj
    return torch.fft.ifftn(torch.fft.fftn(z, dim=dims) * m, dim=dims)


def _per_batch(t, ndim):
    """dt/lam of shape () or (B,) viewed to broadcast against a (B, ...) tensor of rank ndim."""
    return t if t.ndim == 0 else t.reshape(-1, *([1] * (ndim - 1)))


def _grad_scalar(contrib, like):
    """Reduce a per-element real contribution (B, ...) to the shape of dt/lam (() or (B,))."""
    per_b = contrib.reshape(contrib.shape[0], -1).sum(1)
    return per_b.sum() if like.ndim == 0 else per_b


def _adjoint_y(kspace, sens, mask):
    """Aᴴy and the per-coil q_c = ifft2c(M y_c) it is built from."""
    q = ifft2c(_apply_mask(mask, kspace))
    return (sens.conj_physical() * q).sum(1), q


# ---------------------------------------------------------------- forward ops
def sens_expand(image, sens):
    return fft2c(sens * image.unsqueeze(1))


def sens_reduce(kspace, sens):
    return (sens.conj_physical() * ifft2c(kspace)).sum(1)


def sense_forward(image, sens, mask):
    return _apply_mask(mask, fft2c(sens * image.unsqueeze(1)))


def sense_adjoint(kspace, sens, mask):
    return _adjoint_y(kspace, sens, mask)[0]


def normal(image, sens, mask):
    return (sens.conj_physical() * _project(sens * image.unsqueeze(1), _projector(mask))).sum(1)


def dc_gradient(image, kspace, sens, mask):
    return normal(image, sens, mask) - sense_adjoint(kspace, sens, mask)


def _residual(image, kspace, sens, mask, ahy):
    """AᴴA x − Aᴴy, with Aᴴy taken from ``ahy`` when given."""
    if ahy is None:
        ahy = sense_adjoint(kspace, sens, mask)
    return normal(image, sens, mask) - ahy


def flow_step(image, velocity, kspace, sens, mask, dt, lam, ahy):
    """x + dt·(v − lam·(AᴴA x − Aᴴy)): one Euler step of the conditional flow (docs/model.md)."""
    dt_, lam_ = _per_batch(dt, 3), _per_batch(lam, 3)
    return image + dt_ * (velocity - lam_ * _residual(image, kspace, sens, mask, ahy))


def kspace_flow_step(kstate, image_update, kspace, sens, mask, dt, lam):
    """k − dt·lam·M·(k − y) + dt·fft2c(S·z): the E2E-VarNet form of the step."""
    dt_, lam_ = _per_batch(dt, 4), _per_batch(lam, 4)
    return kstate - (dt_ * lam_) * _kmask(mask) * (kstate - kspace) + dt_ * sens_expand(image_update, sens)


def rss(x, dim):
    """Root-sum-of-squares over ``dim`` (real or complex input, real output)."""
    return x.abs().square().sum(dim).sqrt() if x.is_complex() else x.square().sum(dim).sqrt()


# ---------------------------------------------------------------- backward ops: fn(grad, inputs, needs)
def fft2c_backward(g, inputs, needs):
    return (ifft2c(g),)


def ifft2c_backward(g, inputs, needs):
    return (fft2c(g),)


def sens_expand_backward(g, inputs, needs):
    image, sens = inputs
    u = ifft2c(g)  # Fᴴ g per coil
    return (
        (sens.conj_physical() * u).sum(1) if needs[0] else None,
        image.conj_physical().unsqueeze(1) * u if needs[1] else None,
    )


def sens_reduce_backward(g, inputs, needs):
    kspace, sens = inputs
    return (
        fft2c(sens * g.unsqueeze(1)) if needs[0] else None,
        g.conj_physical().unsqueeze(1) * ifft2c(kspace) if needs[1] else None,
    )


def sense_forward_backward(g, inputs, needs):
    image, sens, mask = inputs
    u = ifft2c(_apply_mask(mask, g))
    return (
        (sens.conj_physical() * u).sum(1) if needs[0] else None,
        image.conj_physical().unsqueeze(1) * u if needs[1] else None,
        None,
    )


def sense_adjoint_backward(g, inputs, needs):
    kspace, sens, mask = inputs
    return (
        sense_forward(g, sens, mask) if needs[0] else None,
        g.conj_physical().unsqueeze(1) * ifft2c(_apply_mask(mask, kspace)) if needs[1] else None,
        None,
    )


def _normal_sens_grad(g, image, sens, proj, q=None):
    """∂/∂S of Re⟨g, Σ_c conj(S_c) (P(S_c x) − q_c)⟩: (P(S_c x) − q_c)·conj(g) + conj(x)·P(S_c g)."""
    pSx = _project(sens * image.unsqueeze(1), proj)
    if q is not None:
        pSx = pSx - q
    return pSx * g.conj_physical().unsqueeze(1) + image.conj_physical().unsqueeze(1) * _project(sens * g.unsqueeze(1), proj)


def normal_backward(g, inputs, needs):
    image, sens, mask = inputs
    return (
        normal(g, sens, mask) if needs[0] else None,  # AᴴA is Hermitian
        _normal_sens_grad(g, image, sens, _projector(mask)) if needs[1] else None,
        None,
    )


def dc_gradient_backward(g, inputs, needs):
    image, kspace, sens, mask = inputs
    q = ifft2c(_apply_mask(mask, kspace)) if needs[2] else None
    return (
        normal(g, sens, mask) if needs[0] else None,
        -sense_forward(g, sens, mask) if needs[1] else None,
        _normal_sens_grad(g, image, sens, _projector(mask), q) if needs[2] else None,
        None,
    )


def flow_step_backward(g, inputs, needs):
    image, velocity, kspace, sens, mask, dt, lam, ahy = inputs
    dt_, lam_ = _per_batch(dt, 3), _per_batch(lam, 3)
    c = dt_ * lam_
    grad_x = g - c * normal(g, sens, mask) if needs[0] else None  # (I − c·AᴴA) is Hermitian
    grad_v = dt_ * g if needs[1] else None
    grad_y = c.reshape(*c.shape, 1) * sense_forward(g, sens, mask) if needs[2] and ahy is None else None
    grad_s = None
    if needs[3]:
        q = ifft2c(_apply_mask(mask, kspace)) if ahy is None else None  # Aᴴy depends on S only if computed here
        grad_s = -c.reshape(*c.shape, 1) * _normal_sens_grad(g, image, sens, _projector(mask), q)
    grad_dt = grad_lam = None
    if needs[5] or needs[6]:
        r = _residual(image, kspace, sens, mask, ahy)
        if needs[5]:
            grad_dt = _grad_scalar((g.conj_physical() * (velocity - lam_ * r)).real, dt)
        if needs[6]:
            grad_lam = _grad_scalar((g.conj_physical() * (-dt_ * r)).real, lam)
    grad_ahy = c * g if ahy is not None and needs[7] else None
    return grad_x, grad_v, grad_y, grad_s, None, grad_dt, grad_lam, grad_ahy


def kspace_flow_step_backward(g, inputs, needs):
    kstate, image_update, kspace, sens, mask, dt, lam = inputs
    dt_, lam_ = _per_batch(dt, 4), _per_batch(lam, 4)
    m = _kmask(mask)
    cmg = (dt_ * lam_) * m * g
    u = ifft2c(g) if (needs[1] or needs[3]) else None
    grad_k = g - cmg if needs[0] else None
    grad_z = _per_batch(dt, 3) * (sens.conj_physical() * u).sum(1) if needs[1] else None
    grad_y = cmg if needs[2] else None
    grad_s = dt_ * image_update.conj_physical().unsqueeze(1) * u if needs[3] else None
    grad_dt = grad_lam = None
    if needs[5] or needs[6]:
        diff = m * (kstate - kspace)
        if needs[5]:
            grad_dt = _grad_scalar((g.conj_physical() * (sens_expand(image_update, sens) - lam_ * diff)).real, dt)
        if needs[6]:
            grad_lam = _grad_scalar((g.conj_physical() * (-dt_ * diff)).real, lam)
    return grad_k, grad_z, grad_y, grad_s, None, grad_dt, grad_lam


def rss_backward(g, inputs, needs):
    x, dim = inputs
    out = rss(x, dim).unsqueeze(dim)
    scale = torch.where(out > 0, g.unsqueeze(dim) / torch.where(out > 0, out, 1), 0)
    return (x * scale, None)


# ---------------------------------------------------------------- registration
register_module("reference", globals().get)
