"""Independent complex128 numpy implementation of every op, in the literal fastMRI form
(explicit fftshifts, 2-D transforms, masks applied in centered k-space). The oracle for all tests."""
import numpy as np

AX = (-2, -1)


def fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=AX), norm="ortho"), axes=AX)


def ifft2c(x):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=AX), norm="ortho"), axes=AX)


def full_mask(mask, B, H, W):
    """Any accepted mask form -> (B, 1, H, W) float array."""
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


def _b(t, nd):
    t = np.asarray(t, dtype=np.float64)
    return t.reshape(-1, *([1] * (nd - 1))) if t.ndim else t


def sens_expand(x, S):
    return fft2c(S * x[:, None])


def sens_reduce(k, S):
    return (np.conj(S) * ifft2c(k)).sum(1)


def sense_forward(x, S, M):
    return M * fft2c(S * x[:, None])


def sense_adjoint(k, S, M):
    return (np.conj(S) * ifft2c(M * k)).sum(1)


def normal(x, S, M):
    return sense_adjoint(sense_forward(x, S, M), S, M)


def dc_gradient(x, y, S, M):
    return sense_adjoint(sense_forward(x, S, M) - y, S, M)


def flow_step(x, v, y, S, M, dt, lam, ahy=None):
    r = normal(x, S, M) - (sense_adjoint(y, S, M) if ahy is None else ahy)
    return x + _b(dt, 3) * (v - _b(lam, 3) * r)


def kspace_flow_step(k, z, y, S, M, dt, lam):
    return k - _b(dt, 4) * _b(lam, 4) * M * (k - y) + _b(dt, 4) * fft2c(S * z[:, None])


def rss(x, dim=1):
    return np.sqrt((np.abs(x) ** 2).sum(dim))
