"""A 12-cascade FLAT model: one training step (throughput, peak memory) and end-to-end
reconstruction (slices/second), per data-consistency backend.

Uses the model's public API: ``flat.model.FlatModel(ModelConfig(...))``, its ``forward(...,
backend=)``, ``target_image`` and ``flat.flow.loss.flat_loss`` (the step of ``flat.train``), and
``flat.inference.reconstruct`` for a volume. Backends: reference, triton, cupy (skipped where they
cannot run; Triton's CPU interpreter is never timed). Fixed ACS coil maps (``model.sens="acs"``).
"""
from __future__ import annotations

import pytest
import torch

import workloads as W

model_mod = pytest.importorskip("flat.model", reason="flat.model (the FLAT model) is not importable yet")
config_mod = pytest.importorskip("flat.config", reason="flat.config is not importable yet")
loss_mod = pytest.importorskip("flat.flow.loss", reason="flat.flow.loss is not importable yet")
inference_mod = pytest.importorskip("flat.inference", reason="flat.inference is not importable yet")
from flat.ops.backends import unavailable_reason  # noqa: E402

BACKENDS = ("reference", "triton", "cupy")


def _skip_reason(backend: str, dev: str) -> str | None:
    if backend == "reference":
        return None
    reason = unavailable_reason(backend, dev)
    if reason is None and dev == "cpu":
        reason = "Triton on CPU tensors only runs under TRITON_INTERPRET=1; the interpreter is not benchmarked"
    return None if reason is None else f"{backend}: {reason}"


def _model(mw: W.ModelWorkload, device):
    cfg = config_mod.ModelConfig(cascades=mw.cascades, chans=mw.chans, pools=mw.pools,
                                 sigma=mw.cascades ** -0.5, sens="acs")  # mean Δt·λ = 1 (docs/model.md)
    torch.manual_seed(0)
    return model_mod.FlatModel(cfg).to(device)


def _cases(kind):
    return [pytest.param(mw, be, id=f"{kind}-{mw.data.name}-{mw.data.shape}-K{mw.cascades}-{be}")
            for mw in W.model_grid(W.bench_device()) for be in BACKENDS]


@pytest.mark.parametrize("mw,backend", _cases("train"))
def test_train_step(bench, mw, backend):
    wl = mw.data
    key = dict(op=f"flat_train_step_K{mw.cascades}", mode="fwd+bwd+adamw", variant=backend, shape=wl.shape)
    reason = _skip_reason(backend, bench.device.type)
    if reason:
        bench.skip(reason, **key)
    b = W.make_model_inputs(wl, bench.device)
    model = _model(mw, bench.device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    nlf = torch.full((wl.B,), b["num_low_frequencies"], device=bench.device)
    mask = b["mask"].expand(wl.B, -1)

    def step():  # the step of flat.train.train (velocity alignment on, as FLAT trains)
        o = model(b["masked_kspace"], mask, nlf, backend=backend)
        x_gt = model.target_image(b["kspace"], o)
        loss, _ = loss_mod.flat_loss(o.images, o.times, o.scale, b["target"], b["max_value"], x_gt,
                                     velocity_weight=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    loss = step()
    assert torch.isfinite(loss), f"training loss is {loss}"
    n_params = sum(p.numel() for p in model.parameters())
    bench.run([step], items_per_call=wl.B, budget_s=2.0,
              extra={"workload": wl.name, "B": wl.B, "C": wl.C, "H": wl.H, "W": wl.W, "cascades": mw.cascades,
                     "chans": mw.chans, "pools": mw.pools, "parameters": n_params, "throughput_unit": "slices/s"},
              **key)


@pytest.mark.parametrize("mw,backend", _cases("recon"))
def test_reconstruct(bench, mw, backend):
    wl = W.Workload(mw.data.name, mw.slices, mw.data.C, mw.data.H, mw.data.W, mw.data.mask)
    key = dict(op=f"flat_recon_K{mw.cascades}", mode="no_grad", variant=backend,
               shape=f"{mw.slices}sl x{wl.C}x{wl.H}x{wl.W}")
    reason = _skip_reason(backend, bench.device.type)
    if reason:
        bench.skip(reason, **key)
    b = W.make_model_inputs(wl, "cpu")  # a volume arrives from disk on the CPU; recon moves it
    model = _model(mw, bench.device).eval()

    def recon():  # end to end: transfer, normalise, ACS maps, K steps, magnitude back on the CPU
        return inference_mod.reconstruct(model, b["masked_kspace"], b["mask"], b["num_low_frequencies"],
                                         backend=backend)

    out = recon()
    assert out.shape == (wl.B, wl.H, wl.W) and torch.isfinite(out).all()
    bench.run([recon], items_per_call=wl.B, budget_s=2.0,
              extra={"workload": wl.name, "slices": wl.B, "C": wl.C, "H": wl.H, "W": wl.W,
                     "cascades": mw.cascades, "chans": mw.chans, "pools": mw.pools,
                     "throughput_unit": "slices/s"},
              **key)
