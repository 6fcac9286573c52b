"""Bad input is refused with ValueError/TypeError naming the argument and the shapes seen."""
import pytest
import torch

import flat.ops as fo

B, C, H, W = 2, 3, 8, 6
c = lambda *s, dtype=torch.complex64: torch.randn(*s, dtype=dtype)  # noqa: E731
X, Y, S, M = c(B, H, W), c(B, C, H, W), c(B, C, H, W), torch.ones(W)


@pytest.mark.parametrize("call,exc,words", [
    # wrong rank
    (lambda: fo.normal(c(B, 2, H, W), S, M), ValueError, ["image", "(2, 2, 8, 6)"]),
    (lambda: fo.sense_adjoint(c(C, H, W), S, M), ValueError, ["kspace", "(3, 8, 6)"]),
    (lambda: fo.fft2c(c(H)), ValueError, ["x"]),
    # batch / coil / size mismatch
    (lambda: fo.normal(c(1, H, W), S, M), ValueError, ["image", "(1, 8, 6)", "(2, 8, 6)"]),
    (lambda: fo.sense_adjoint(c(B, 4, H, W), S, M), ValueError, ["sens", "(2, 4, 8, 6)"]),
    (lambda: fo.flow_step(X, c(B, H, W + 1), Y, S, M, 0.1, 1.0), ValueError, ["velocity"]),
    (lambda: fo.flow_step(X, X, c(B, C, H + 1, W), S, M, 0.1, 1.0), ValueError, ["kspace"]),
    (lambda: fo.flow_step(X, X, None, S, M, 0.1, 1.0), ValueError, ["kspace", "ahy"]),
    (lambda: fo.kspace_flow_step(Y, c(B, H, W - 1), Y, S, M, 0.1, 1.0), ValueError, ["image_update"]),
    # masks that do not broadcast
    (lambda: fo.normal(X, S, torch.ones(W + 1)), ValueError, ["mask", "(7,)"]),
    (lambda: fo.normal(X, S, torch.ones(3, W)), ValueError, ["mask", "(3, 6)"]),
    (lambda: fo.normal(X, S, torch.ones(B, 1, H - 1, W)), ValueError, ["mask"]),
    (lambda: fo.normal(X, S, torch.ones(B, 2, H, W)), ValueError, ["mask"]),
    (lambda: fo.normal(X, S, torch.ones(W, dtype=torch.complex64)), TypeError, ["mask"]),
    # real where complex is needed, half precision, non-tensors
    (lambda: fo.normal(X.real, S, M), TypeError, ["image", "real"]),
    (lambda: fo.fft2c(torch.randn(4, 4)), TypeError, ["x", "real"]),
    (lambda: fo.normal(X, S.to(torch.complex32), M), TypeError, ["sens", "half"]),
    (lambda: fo.fft2c(torch.randn(4, 4, 2).half()), TypeError, ["x", "half"]),
    (lambda: fo.normal(X.numpy(), S, M), TypeError, ["image"]),
    (lambda: fo.fft2c(torch.ones(4, 4, dtype=torch.int64)), TypeError, ["x"]),
    # dt / lam
    (lambda: fo.flow_step(X, X, Y, S, M, torch.ones(3), 1.0), ValueError, ["dt", "(3,)"]),
    (lambda: fo.flow_step(X, X, Y, S, M, 0.1, torch.ones(B, 1)), ValueError, ["lam"]),
    (lambda: fo.flow_step(X, X, Y, S, M, 0.1, 1j), TypeError, ["lam"]),
    (lambda: fo.flow_step(X, X, Y, S, M, torch.tensor(0.1j), 1.0), TypeError, ["dt"]),
    (lambda: fo.flow_step(X, X, Y, S, M, "0.1", 1.0), TypeError, ["dt"]),
    # rss
    (lambda: fo.rss(Y, dim=4), ValueError, ["dim"]),
    (lambda: fo.rss(torch.view_as_real(Y), dim=-1, real_layout=True), ValueError, ["dim"]),
    (lambda: fo.rss(Y, real_layout=True), ValueError, ["real_layout"]),
    (lambda: fo.fft2c(Y, norm="forward"), ValueError, ["norm", "ortho"]),
    # backends
    (lambda: fo.normal(X, S, M, backend="magic"), ValueError, ["backend", "magic"]),
])
def test_bad_input_is_refused(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in message: {msg}"


def test_mixed_devices_refused():
    meta = torch.empty(B, C, H, W, dtype=torch.complex64, device="meta")
    with pytest.raises(ValueError, match="mixed devices"):
        fo.normal(X, meta, M)
    with pytest.raises(ValueError, match="mask"):
        fo.normal(X, S, torch.ones(W, device="meta"))
