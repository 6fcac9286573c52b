"""fastMRI's E2E-VarNet at its released size (12 cascades, chans 18, pools 4, learned
sensitivities: sens_chans 8, sens_pools 4), forward and forward+backward: fastMRI's own module
(its data consistency in the real layout) against :class:`flat.model.VarNet` holding the same
weights, whose data consistency runs on ``flat.ops`` with each backend.

Inputs are fastMRI's batch layout for both: k-space ``(1, C, H, W, 2)`` float32 and a bool mask
``(1, 1, 1, W, 1)``, ``num_low_frequencies=None``. Rows carry ``ratio_vs_fastmri`` = fastMRI's
median / this row's median (> 1: FLAT faster). Needs fastmri (``pip install --no-deps
fastmri==0.3.0`` plus the [test] extra); skipped without it.
"""
from __future__ import annotations

import os

import pytest
import torch

import workloads as W
from flat.ops.backends import unavailable_reason

fastmri_models = pytest.importorskip("fastmri.models", reason="fastmri is not importable")
from flat.model import load_fastmri_varnet  # noqa: E402

RELEASED = dict(num_cascades=12, sens_chans=8, sens_pools=4, chans=18, pools=4)
GPU_DATA = (W.Workload("knee", 1, 15, 640, 368),)
# CPU: knee's coil count at a quarter of its size (W = 92 as the op grid's knee/4); one forward
# is a few seconds on one core.
CPU_DATA = (W.Workload("knee/4", 1, 15, 160, 92),)
VARIANTS = ("fastmri", "reference", "triton", "cupy")
_FASTMRI: dict[tuple, float] = {}  # (mode, shape) -> fastMRI's median, this session


def _data():
    dev = W.bench_device()
    choice = os.environ.get("FLAT_BENCH_GRID", "").strip().lower()
    if choice == "smoke":
        return (W.Workload("smoke", 1, 4, 32, 24),)
    return GPU_DATA if (choice == "gpu" or (not choice and dev.type == "cuda")) else CPU_DATA


def _cases():
    return [pytest.param(wl, mode, v, id=f"varnet-{wl.name}-{wl.shape}-{mode}-{v}")
            for wl in _data() for mode in ("fwd", "fwd+bwd") for v in VARIANTS]


def _inputs(wl: W.Workload, device):
    t = W.make_model_inputs(wl, "cpu")
    k = torch.view_as_real(t["masked_kspace"]).contiguous()  # (1, C, H, W, 2)
    mask = t["mask"].reshape(1, 1, 1, -1, 1)  # bool
    return k.to(device), mask.to(device)


@pytest.mark.parametrize("wl,mode,variant", _cases())
def test_varnet(bench, wl, mode, variant):
    dev = bench.device
    key = dict(op="varnet_K12", mode=mode, variant=variant, shape=wl.shape)
    if variant not in ("fastmri", "reference"):
        reason = unavailable_reason(variant, dev.type)
        if reason is None and dev.type == "cpu":
            reason = "Triton on CPU tensors only runs under TRITON_INTERPRET=1; the interpreter is not benchmarked"
        if reason:
            bench.skip(f"{variant}: {reason}", **key)
    torch.manual_seed(0)
    ref = fastmri_models.VarNet(**RELEASED)
    model = ref if variant == "fastmri" else load_fastmri_varnet(ref.state_dict())
    model = model.to(dev).train(mode != "fwd")
    k, mask = _inputs(wl, dev)
    kw = {} if variant == "fastmri" else {"backend": variant}

    if mode == "fwd":
        def call():
            with torch.no_grad():
                return model(k, mask, **kw)
    else:
        def call():
            model.zero_grad(set_to_none=True)
            out = model(k, mask, **kw)
            out.square().mean().backward()
            return out

    if variant != "fastmri":  # same weights, same output (the parity tests hold it to 1e-5)
        with torch.no_grad():
            want, got = ref.to(dev)(k, mask), model(k, mask, **kw)
        assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    row = bench.run([call], items_per_call=wl.B, budget_s=2.0,
                    extra={"workload": wl.name, "C": wl.C, "H": wl.H, "W": wl.W, **RELEASED,
                           "parameters": sum(p.numel() for p in model.parameters()),
                           "throughput_unit": "slices/s"}, **key)
    if variant == "fastmri":
        _FASTMRI[(mode, wl.shape)] = row["median_s"]
    elif (mode, wl.shape) in _FASTMRI:
        row["ratio_vs_fastmri"] = row["_extra"]["ratio_vs_fastmri"] = _FASTMRI[(mode, wl.shape)] / row["median_s"]
