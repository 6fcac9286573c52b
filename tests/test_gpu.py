"""Model-level GPU checks (marker ``gpu``; skipped without a CUDA device; run by scripts/gpu_check.sh).

* sync audit: a whole K-cascade (network + data consistency, every GPU backend) runs under
  ``torch.cuda.set_sync_debug_mode("error")``: no host synchronisation anywhere in it;
* CUDA-graph capture and replay of the cascade (flat/capture.py) with new data each call equals
  the eager forward (the same kernels in the same order: to rounding, 1e-6);
* determinism: two eager forwards on the same input are bitwise equal (no atomics);
* ``torch.compile`` of the cascade (inductor) equals eager, complex64 to 1e-5.
Sizes are knee-like (15 coils, 640 × 368) with a small U-Net so the check stays quick; the op-level
parity at knee/brain sizes, B = 1 and 8, is in tests/test_triton.py and tests/test_cupy.py.
"""
from __future__ import annotations

import pytest
import torch

import flat.ops as fo
from flat.ops.backends import unavailable_reason

pytestmark = pytest.mark.gpu

K = 4
SHAPE = (15, 640, 368)


def _backends():
    out = ["reference"]
    for be in ("triton", "cupy"):
        if torch.cuda.is_available() and unavailable_reason(be, "cuda") is None:
            out.append(be)
    return out


BACKENDS = _backends() if torch.cuda.is_available() else ["reference", "triton", "cupy"]


def _need(backend):
    if backend != "reference":
        reason = unavailable_reason(backend, "cuda")
        if reason:
            pytest.skip(f"{backend}: {reason}")


def _model(mode="flat"):
    from flat.config import ModelConfig
    from flat.model import FlatModel

    torch.manual_seed(0)
    cfg = ModelConfig(cascades=K, chans=8, pools=2, sigma=K ** -0.5, sens="acs", mode=mode)
    return FlatModel(cfg).cuda().eval()


def _batch(B, seed):
    C, H, W = SHAPE
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(B, H, W, dtype=torch.complex64, device="cuda", generator=g)
    S = torch.randn(B, C, H, W, dtype=torch.complex64, device="cuda", generator=g)
    S = S / S.abs().pow(2).sum(1, keepdim=True).sqrt()
    mask = torch.rand(W, device="cuda", generator=g) < 0.2
    mask[W // 2 - 15: W // 2 + 15] = True
    return fo.sens_expand(x, S) * mask, mask


def _rel(a, b):
    a, b = a.to(torch.complex128), b.to(torch.complex128)
    return float((a - b).abs().norm() / b.abs().norm())


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_cascade_has_no_host_sync(backend):
    """No host sync in a cascade: the whole K-step cascade runs with sync debug mode "error"
    (after one warm-up forward, which compiles kernels and builds plans and tables)."""
    _need(backend)
    model = _model()
    k, mask = _batch(1, 0)
    seen = {}

    def grab(*args, backend=None):
        seen["args"] = args
        return model.cascade(*args, backend=backend)

    with torch.no_grad():
        model(k, mask, 30, backend=backend, cascade=grab)  # warm-up, and the cascade's inputs
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            images, _ = model.cascade(*seen["args"], backend=backend)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    assert len(images) == K + 1 and torch.isfinite(torch.view_as_real(images[-1])).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [1, 8])
def test_gpu_graph_replay_equals_eager_with_changing_data(backend, B):
    _need(backend)
    from flat.capture import make_forward

    model = _model()
    fwd = make_forward(model, "graphs", backend=backend)
    with torch.no_grad():
        for seed in (1, 2, 3):  # new k-space and a new mask every call: the graph's inputs change
            k, mask = _batch(B, seed)
            got = fwd(k, mask, 30)
            want = model(k, mask, 30, backend=backend)
            for i, (a, b) in enumerate(zip(got.images, want.images)):
                err = _rel(a, b)
                assert err <= 1e-6, f"replay {seed}, state {i}: rel err {err:.3g} vs eager"
    assert len(fwd._graphs) == 1, "one shape must be captured once"


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_forward_is_deterministic(backend):
    _need(backend)
    model = _model()
    k, mask = _batch(2, 4)
    with torch.no_grad():
        a = model(k, mask, 30, backend=backend).images[-1]
        b = model(k, mask, 30, backend=backend).images[-1]
    assert torch.equal(a, b), f"two forwards differ: rel {_rel(a, b):.3g}"


def test_gpu_compiled_cascade_equals_eager():
    from flat.capture import make_forward

    backend = BACKENDS[-1]
    model = _model()
    fwd = make_forward(model, "compile", backend=backend)
    with torch.no_grad():
        for seed in (5, 6):
            k, mask = _batch(1, seed)
            got, want = fwd(k, mask, 30).images[-1], model(k, mask, 30, backend=backend).images[-1]
            assert _rel(got, want) <= 1e-5, f"{backend}: compiled vs eager {_rel(got, want):.3g}"


def test_gpu_vanilla_graph_replay():
    """The vanilla baseline's learned η_k are parameters read inside the captured graph."""
    from flat.capture import make_forward

    model = _model("vanilla")
    fwd = make_forward(model, "graphs", backend=BACKENDS[-1])
    with torch.no_grad():
        k, mask = _batch(1, 7)
        got, want = fwd(k, mask, 30).images[-1], model(k, mask, 30, backend=BACKENDS[-1]).images[-1]
    assert _rel(got, want) <= 1e-6


@pytest.mark.parametrize("extra", [[], ["--compile"], ["--cuda-graphs"]], ids=["eager", "compile", "graphs"])
def test_gpu_flat_recon_command_runs_on_the_device(tmp_path, capsys, extra):
    """The user's path end to end: `flat recon CKPT DATA OUT --device cuda --backend B` loads the
    model on the GPU and writes the same reconstruction eagerly, compiled and as CUDA graphs."""
    import h5py
    import numpy as np

    from flat.checkpoint import save_model
    from flat.config import Config, ModelConfig
    from tests.fastmri_files import make_fastmri_file, run_cli

    backend = BACKENDS[-1]
    cfg = Config(model=ModelConfig(cascades=K, chans=8, pools=2, sigma=K ** -0.5, sens="acs"))
    from flat.model import FlatModel

    torch.manual_seed(0)
    ck = tmp_path / "m.pt"
    save_model(ck, FlatModel(cfg.model), cfg)
    data = make_fastmri_file(tmp_path / "data" / "v.h5", S=3, C=15, H=64, W=48, recon=(32, 32))
    outs = {}
    for name, flags in (("ref", ["--device", "cpu", "--backend", "reference"]),
                        ("gpu", ["--device", "cuda", "--backend", backend, *extra])):
        out = tmp_path / name
        assert run_cli(["recon", ck, data, out, "--batch-size", "2", "--no-progress", *flags]) == 0
        with h5py.File(out / "v.h5") as f:
            outs[name] = f["reconstruction"][()]
    err = capsys.readouterr().err
    assert f"device cuda:0, backend {backend}" in err or f"device cuda, backend {backend}" in err, err
    rel = np.linalg.norm(outs["gpu"] - outs["ref"]) / np.linalg.norm(outs["ref"])
    assert rel <= 1e-4, f"GPU recon vs CPU reference: {rel:.3g}"  # complex64 on two devices, K steps
