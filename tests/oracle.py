"""The one oracle of the tests: every op of flat/ops/table.py in the literal fastMRI form
(explicit fftshift/ifftshift, 2-D transforms, masks applied in centered k-space), in complex128.

Written with torch so that autograd through it gives independent reference gradients for the
hand-written backward formulas; ``test_oracle_fft_matches_numpy`` (tests/test_ops.py) anchors its
centered FFT to numpy's. Functions are named like the ops and take their canonical arguments in
table order; given numpy arrays they return numpy arrays. Masks may be canonical ``(Bm, Hm, W)``
or ``(B, 1, H, W)`` (:func:`full_mask`).
"""
import functools

import numpy as np
import torch

AX = (-2, -1)


def _t(a):
    return torch.from_numpy(np.array(a)) if isinstance(a, np.ndarray) else a


def _numpy_in_numpy_out(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kw):
        out = fn(*map(_t, args), **{k: _t(v) for k, v in kw.items()})
        if any(isinstance(a, np.ndarray) for a in (*args, *kw.values())):
            return out.detach().numpy()
        return out
    return wrapped


def _fft2c(x):
    x = _t(x)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=AX), norm="ortho"), dim=AX)


def _ifft2c(x):
    x = _t(x)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(x, dim=AX), norm="ortho"), dim=AX)


fft2c = _numpy_in_numpy_out(_fft2c)
ifft2c = _numpy_in_numpy_out(_ifft2c)


def full_mask(mask, B, H, W):
    """Any accepted mask form -> (B, 1, H, W) float64 array."""
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim == 1:
        m = m.reshape(1, 1, 1, W)
    elif m.ndim == 2:
        m = m.reshape(m.shape[0], 1, 1, W)
    elif m.ndim == 4 and m.shape[-1] == 1 and m.shape[-2] == W:  # fastMRI (1, Hm, W, 1)
        m = m.reshape(1, 1, m.shape[1], W)
    elif m.ndim == 5:
        m = m.reshape(m.shape[0], 1, m.shape[2], W)
    return np.broadcast_to(m, (B, 1, H, W))


def _kmask(M):
    """Canonical (Bm, Hm, W) -> (Bm, 1, Hm, W) over coils; (B, 1, H, W) as it is."""
    M = _t(M)
    return M if M.ndim == 4 else M[:, None]


def _b(t, nd):
    t = torch.as_tensor(_t(t), dtype=torch.float64) if not isinstance(t, torch.Tensor) else t
    return t.reshape(-1, *([1] * (nd - 1))) if t.ndim else t


@_numpy_in_numpy_out
def sens_expand(x, S):
    return _fft2c(_t(S) * _t(x)[:, None])


@_numpy_in_numpy_out
def sens_reduce(k, S):
    return (_t(S).conj() * _ifft2c(k)).sum(1)


@_numpy_in_numpy_out
def sense_forward(x, S, M):
    return _kmask(M) * _fft2c(_t(S) * _t(x)[:, None])


@_numpy_in_numpy_out
def sense_adjoint(k, S, M):
    return (_t(S).conj() * _ifft2c(_kmask(M) * _t(k))).sum(1)


@_numpy_in_numpy_out
def normal(x, S, M):
    return sense_adjoint(sense_forward(x, S, M), S, M)


@_numpy_in_numpy_out
def dc_gradient(x, y, S, M):
    return sense_adjoint(sense_forward(x, S, M) - _t(y), S, M)


@_numpy_in_numpy_out
def flow_step(x, v, y, S, M, dt, lam, ahy=None):
    r = normal(x, S, M) - (sense_adjoint(y, S, M) if ahy is None else _t(ahy))
    return _t(x) + _b(dt, 3) * (_t(v) - _b(lam, 3) * r)


@_numpy_in_numpy_out
def kspace_flow_step(k, z, y, S, M, dt, lam):
    k, y = _t(k), _t(y)
    return k - _b(dt, 4) * _b(lam, 4) * _kmask(M) * (k - y) + _b(dt, 4) * _fft2c(_t(S) * _t(z)[:, None])


@_numpy_in_numpy_out
def rss(x, dim=1):
    return _t(x).abs().square().sum(dim).sqrt()
