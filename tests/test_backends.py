"""The backend registry: selection order, clear refusals, import discipline."""
import os
import subprocess
import sys

import pytest
import torch

import flat.backends as fb
import flat.ops as fo

X = torch.randn(1, 4, 4, dtype=torch.complex64)
S = torch.randn(1, 2, 4, 4, dtype=torch.complex64)
M = torch.ones(4)


def test_reference_always_available():
    assert fo.available_backends()[0] == "reference"
    assert fb.resolve("auto", "cpu") == "reference"


def test_selection_order(monkeypatch):
    monkeypatch.setenv("FLAT_BACKEND", "reference")
    assert fb.requested() == "reference"
    with fo.use_backend("auto"):
        assert fb.requested() == "auto"  # context beats environment
        assert fb.requested("reference") == "reference"  # keyword beats context
    monkeypatch.setenv("FLAT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        fo.normal(X, S, M)


def test_unavailable_backend_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # Triton cannot run CPU tensors without the interpreter
    with pytest.raises(fb.BackendUnavailableError, match="triton"):
        fo.normal(X, S, M, backend="triton")
    with pytest.raises(fb.BackendUnavailableError, match="cupy"):
        fo.normal(X, S, M, backend="cupy")
    with pytest.raises(fb.BackendUnavailableError, match="cupy"):
        with fo.use_backend("cupy"):
            fo.normal(X, S, M)


def test_use_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend"):
        with fo.use_backend("fast"):
            pass


def test_import_touches_no_cupy_and_no_cuda():
    code = (
        "import sys, torch, flat, flat.ops as fo\n"
        "fo.normal(torch.ones(1,4,4,dtype=torch.complex64), torch.ones(1,1,4,4,dtype=torch.complex64), torch.ones(4))\n"
        "fo.available_backends()\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FLAT_BACKEND"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
