"""Capture-ready inference on the CPU (flat/capture.py, FlatModel.cascade; docs/gpu.md).

The K-cascade of the model compiles as one graph (``fullgraph=True``: no Python float per step,
no host sync) and a new batch of the same shape does not recompile; ``make_forward("compile")``
equals the eager forward. The CUDA-graph mode and the sync audit need a GPU (tests/test_gpu.py).
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

import flat.ops as fo
from flat.capture import make_forward
from flat.config import ModelConfig
from flat.model import FlatModel
from tests.helpers import assert_rel_close, random_sens

B, C, H, W, K = 2, 3, 16, 12, 3


def _model(**kw):
    torch.manual_seed(0)
    return FlatModel(ModelConfig(cascades=K, chans=4, pools=1, sigma=K ** -0.5, sens="acs", **kw)).eval()


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    S = random_sens(B, C, H, W, dtype=torch.complex64, generator=g)
    x = torch.randn(B, H, W, dtype=torch.complex64, generator=g)
    mask = torch.rand(W, generator=g) < 0.4
    mask[W // 2 - 1: W // 2 + 1] = True
    return fo.sens_expand(x, S) * mask, mask


def _cascade_args(model, k, mask):
    """What FlatModel.forward hands its cascade: captured by a stand-in cascade."""
    seen = {}

    def grab(*args, backend=None):
        seen["args"] = args
        return model.cascade(*args, backend=backend)

    with torch.no_grad():
        model(k, mask, 2, cascade=grab)
    return seen["args"]


@pytest.mark.parametrize("mode", ["flat", "vanilla"])
def test_cascade_compiles_fullgraph_once_across_batches(mode):
    model = _model(mode=mode)
    counter = torch._dynamo.testing.CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(model.cascade, backend=counter, fullgraph=True, dynamic=False)
    for seed in (1, 2):  # new data (and a new mask) per batch, same shapes
        args = _cascade_args(model, *_batch(seed))
        t, dts, lam = args[4:]
        assert t.dtype == dts.dtype == lam.dtype == torch.float32 and lam.ndim == 0
        with torch.no_grad():
            got, _ = compiled(*args)
            want, _ = model.cascade(*args)
        assert len(got) == K + 1
        for a, b in zip(got, want):
            assert_rel_close(a, b, rtol=1e-6, name="compiled cascade state")
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for 2 batches of one shape"


def test_make_forward_compile_equals_eager():
    model = _model()
    k, mask = _batch(4)
    # aot_eager: the same trace through AOT autograd as inductor, without its minutes of codegen
    # on the CPU (inductor's numerics are checked on the GPU, tests/test_gpu.py)
    fwd = make_forward(model, "compile", backend="reference", compiler="aot_eager")
    with torch.no_grad():
        want = model(k, mask, 2, backend="reference")
        got = fwd(k, mask, 2)
        k2, mask2 = _batch(5)
        got2, want2 = fwd(k2, mask2, 2), model(k2, mask2, 2, backend="reference")
    for a, b in zip(got.images + got2.images, want.images + want2.images):
        assert_rel_close(a, b, rtol=1e-5, name="make_forward('compile') state")
    assert torch.equal(got.times, want.times) and torch.equal(got.scale, want.scale)
    # the volume API takes it as ``forward`` (what flat recon --compile does); same shapes: no recompile
    from flat.inference import reconstruct

    vol = reconstruct(model, k2, mask2, 2, backend="reference", forward=fwd)
    assert_rel_close(vol, reconstruct(model, k2, mask2, 2, backend="reference"), rtol=1e-5, name="reconstruct")


def test_make_forward_refuses_bad_modes_and_cpu_graphs():
    model = _model()
    with pytest.raises(ValueError, match="mode"):
        make_forward(model, "fast")
    with pytest.raises(TypeError, match="model"):
        make_forward(torch.nn.Linear(2, 2), "compile")
    k, mask = _batch(6)
    with torch.no_grad(), pytest.raises(ValueError, match="CUDA"):
        make_forward(model, "graphs")(k, mask, 2)
    eager = make_forward(model, "eager")
    with torch.no_grad():
        assert torch.equal(eager(k, mask, 2).output, model(k, mask, 2).output)
