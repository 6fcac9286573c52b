"""flat.ops as a drop-in for fastMRI code: fastMRI's keywords and scalar types, rss semantics,
TorchScript through torch.ops.flat, and every Python snippet of the README runs as written."""
import pathlib
import re

import numpy as np
import pytest
import torch

import flat.ops as fo
from tests import oracle
from tests.helpers import assert_rel_close, random_sens

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _data(B=2, C=3, H=6, W=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, H, W, dtype=torch.complex128, generator=g)
    y = torch.randn(B, C, H, W, dtype=torch.complex128, generator=g)
    S = random_sens(B, C, H, W, generator=g)
    m = torch.tensor([1.0, 0, 1, 0, 1], dtype=torch.float64)
    return x, y, S, m


def test_fft2c_takes_fastmri_norm_keyword():
    _, y, _, _ = _data()
    assert torch.equal(fo.fft2c(y, norm="ortho"), fo.fft2c(y))
    assert torch.equal(fo.ifft2c(y, norm="ortho"), fo.ifft2c(y))
    for bad in ("forward", "backward", None):
        with pytest.raises(ValueError, match="norm"):
            fo.fft2c(y, norm=bad)


@pytest.mark.parametrize("scalar", [np.float32(0.25), np.float64(0.25), np.int64(1)])
def test_numpy_scalars_are_floats(scalar):
    x, y, S, m = _data()
    got = fo.flow_step(x, x, y, S, m, scalar, np.float32(2))
    want = fo.flow_step(x, x, y, S, m, float(scalar), 2.0)
    assert torch.equal(got, want)


def test_rss_decides_by_dtype_and_real_layout_flag():
    _, y, _, _ = _data()
    r = torch.view_as_real(y)  # (B, C, H, W, 2)
    assert_rel_close(fo.rss(r, dim=1, real_layout=True), oracle.rss(y), name="rss real layout")
    # a real tensor is real values, as fastMRI's rss: sqrt(Σ r²) keeps the trailing 2
    plain = fo.rss(r, dim=1)
    assert plain.shape == r.shape[:1] + r.shape[2:]
    assert_rel_close(plain, r.square().sum(1).sqrt(), name="rss plain real")
    assert_rel_close(fo.rss(y, dim=1), oracle.rss(y), name="rss complex")


def test_flat_backend_errors_name_the_variable(monkeypatch):
    x, _, S, m = _data()
    monkeypatch.setenv("FLAT_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FLAT_BACKEND"):
        fo.normal(x, S, m)
    monkeypatch.setenv("FLAT_BACKEND", "cupy")  # a real backend that cannot run here
    with pytest.raises(fo.BackendUnavailableError, match="FLAT_BACKEND"):
        fo.normal(x, S, m)


def test_torchscript_calls_the_custom_ops():
    """The documented scriptable entry: torch.ops.flat.* with canonical tensors."""

    @torch.jit.script
    def cascade(x, y, S, m, dt, lam):
        ahy = torch.ops.flat.sense_adjoint(y, S, m, "reference")
        for _ in range(2):
            x = torch.ops.flat.flow_step(x, x * 0, None, S, m, dt, lam, ahy, "reference")
        return x

    x, y, S, m = _data()
    mc = m.reshape(1, 1, -1)
    dt, lam = torch.tensor(0.3, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    want = x
    for _ in range(2):
        want = fo.flow_step(want, want * 0, y, S, m, 0.3, 2.0)
    assert_rel_close(cascade(x, y, S, mc, dt, lam), want, name="scripted cascade")


def _readme_snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_snippets():
    assert _readme_snippets(), "README.md has no ```python blocks"


@pytest.mark.parametrize("i", range(len(_readme_snippets())))
def test_readme_snippet_runs_as_written(i):
    torch.manual_seed(0)
    exec(compile(_readme_snippets()[i], f"README.md snippet {i}", "exec"), {})
