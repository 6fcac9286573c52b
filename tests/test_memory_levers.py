"""Memory levers of the model (docs/training.md): activation checkpointing of the cascade (and
sensitivity) networks computes the same loss and gradients; bf16 autocast reaches the networks'
convolutions and never a data-consistency op, which keeps getting complex64 inputs."""
import dataclasses

import pytest
import torch
from torch import nn

import flat.ops as fo
from flat.config import ModelConfig, apply_overrides, get_preset
from flat.model import FlatModel
from tests.helpers import random_sens

B, C, H, W = 2, 3, 24, 20

# both network families: FLAT's U-Net with fixed ACS maps, and VarNet's layout (k-space state,
# learned maps), as the knee/brain presets use
CONFIGS = {
    "flat-unet": ModelConfig(cascades=3, chans=4, pools=2, time_dim=8, dc_per_step=1.0),
    "fastmri-unet": ModelConfig(cascades=3, chans=4, pools=2, time_dim=8, dc_per_step=1.0, unet="fastmri",
                                state="kspace", sens="learned", sens_chans=4, sens_pools=2),
}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensors: one thread is faster than two fighting over a loaded machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    img = ((yy / 0.7) ** 2 + (xx / 0.6) ** 2 < 1).to(torch.complex64) * (1 + 0.3j)
    img = img.expand(B, H, W) + 0.05 * torch.randn(B, H, W, dtype=torch.complex64, generator=g)
    full = fo.sens_expand(img, random_sens(B, C, H, W, dtype=torch.complex64, generator=g))
    mask = torch.zeros(W, dtype=torch.bool)
    mask[::3] = True
    mask[W // 2 - 2:W // 2 + 2] = True
    return full * mask, mask, 4


def _model(cfg):
    torch.manual_seed(0)
    model = FlatModel(cfg)
    with torch.no_grad():  # off the zero-initialised output layers, so every parameter has a gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _loss_and_grads(model, levers):
    model.set_memory_levers(**levers)
    y, mask, nlf = _data()
    out = model(y, mask, nlf)
    loss = sum(x.abs().square().mean() for x in out.images[1:]) + out.output.mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_checkpointing_gives_the_same_loss_and_gradients(name):
    model = _model(CONFIGS[name])
    loss0, g0 = _loss_and_grads(model, {})
    loss1, g1 = _loss_and_grads(model, {"checkpoint": True})
    # the recomputation runs the very same float32 kernels on the same inputs: equal up to the
    # order of the gradient accumulation (a few ulps)
    assert torch.allclose(loss0, loss1, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys() and len(g0) == sum(1 for _ in model.parameters())
    for n in g0:
        scale = g0[n].abs().max().clamp_min(1e-12)
        assert (g0[n] - g1[n]).abs().max() <= 1e-5 * scale, n


@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_reaches_the_networks_and_never_the_dc_ops(name, checkpoint, monkeypatch):
    model = _model(CONFIGS[name])
    with torch.no_grad():
        ref = model(*_data()).output

    dc_calls = []
    for op in ("flow_step", "kspace_flow_step", "sens_reduce", "sense_adjoint"):
        real = getattr(fo, op)

        def spy(*args, _real=real, _op=op, **kw):
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_complex()]
            dc_calls.append((_op, torch.is_autocast_enabled("cpu"), {t.dtype for t in tensors}))
            return _real(*args, **kw)

        monkeypatch.setattr(fo, op, spy)
    conv_dtypes = {"cascade": set(), "sens": set()}

    def hook(where):
        return lambda mod, inp, out: conv_dtypes[where].add(out.dtype)

    for k, net in enumerate(model.nets):
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(hook("cascade"))
    if model.sens_net is not None:
        for m in model.sens_net.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(hook("sens"))

    _, grads = _loss_and_grads(model, {"amp": "bf16", "checkpoint": checkpoint})
    assert conv_dtypes["cascade"] == {torch.bfloat16}
    assert conv_dtypes["sens"] <= {torch.float32}  # the sensitivity net stays float32
    ops = {c[0] for c in dc_calls}
    assert ("flow_step" in ops) or ("kspace_flow_step" in ops)
    for op, autocast_on, dtypes in dc_calls:
        if op in ("flow_step", "kspace_flow_step"):
            assert not autocast_on, f"{op} ran under autocast"
        assert dtypes == {torch.complex64}, (op, dtypes)
    assert all(torch.isfinite(g).all() for g in grads.values())
    with torch.no_grad():
        out = model(*_data()).output
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operation); through three
    # cascades of a few layers the output stays within a few per cent of float32
    rel = (out - ref).norm() / ref.norm()
    assert rel < 5e-2, float(rel)


def test_memory_lever_keys_are_validated():
    with pytest.raises(ValueError, match="train.amp"):
        apply_overrides(get_preset("tiny"), ["train.amp=fp16"])
    with pytest.raises(ValueError, match="amp"):
        FlatModel(CONFIGS["flat-unet"]).set_memory_levers(amp="float16")
    cfg = apply_overrides(get_preset("tiny"), ["train.amp=bf16", "train.checkpoint_cascades=true"])
    assert cfg.train.amp == "bf16" and cfg.train.checkpoint_cascades is True
    for name in ("knee", "brain"):
        m = get_preset(name).model
        assert (m.cascades, m.chans, m.pools, m.sens, m.unet) == (12, 18, 4, "learned", "fastmri")
        assert dataclasses.replace(m).sens_chans == 8 and m.sens_pools == 4
