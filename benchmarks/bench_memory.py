"""Peak memory and time of one training step at fastMRI's scale: FLAT's memory levers beside
fastMRI's own E2E-VarNet of the same size, in the same run (docs/training.md).

Model: 12 cascades, chans 18, pools 4, learned sensitivities (sens_chans 8, sens_pools 4) — the
``knee`` preset (``model.unet=fastmri``, k-space state) and ``fastmri.models.VarNet`` with the
same sizes. One step = zero_grad, forward, loss, backward, AdamW step (the optimiser state
exists already: warm-up steps run first):

* ``fastmri``: fastMRI's VarNet and its ``SSIMLoss`` on the RSS output, as its training module.
* ``flat``: FLAT's training step (:func:`flat.flow.loss.flat_loss`: SSIM + L1 on the output and
  the velocity alignment of every state), with the levers ``train.checkpoint_cascades``
  (``ckpt``) and ``train.amp=bf16`` (``bf16``) off and on.

Peak memory: above the level before the step, ``torch.cuda.max_memory_allocated`` on a GPU, the
CPU allocator's events replayed on the CPU (benchmarks/conftest.py). Sizes: the knee's 15 coils
at a quarter of its size on the CPU (W = 92 as the op grid's knee/4), the knee itself on a GPU;
``FLAT_BENCH_GRID=smoke`` for a seconds-long check. Rows carry ``peak_vs_fastmri`` and
``time_vs_fastmri`` (this row / fastMRI's row of the same run). Needs fastmri 0.3.0; skipped
without it.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

import pytest
import torch

import workloads as W

fastmri_models = pytest.importorskip("fastmri.models", reason="fastmri is not importable")
from fastmri.losses import SSIMLoss  # noqa: E402

from flat.config import get_preset  # noqa: E402
from flat.flow.loss import flat_loss  # noqa: E402
from flat.model import FlatModel  # noqa: E402

RELEASED = dict(num_cascades=12, sens_chans=8, sens_pools=4, chans=18, pools=4)
VARIANTS = ("fastmri", "flat", "flat+ckpt", "flat+bf16", "flat+ckpt+bf16")
_FASTMRI: dict[str, dict] = {}  # shape -> fastMRI's row, this session


def _workload():
    choice = os.environ.get("FLAT_BENCH_GRID", "").strip().lower()
    if choice == "smoke":
        return W.Workload("smoke", 1, 4, 32, 24)
    if choice == "gpu" or (not choice and W.bench_device().type == "cuda"):
        return W.Workload("knee", 1, 15, 640, 368)
    return W.Workload("knee/4", 1, 15, 160, 92)


def _fastmri_step(wl, dev):
    torch.manual_seed(0)
    model = fastmri_models.VarNet(**RELEASED).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    t = W.make_model_inputs(wl, "cpu")
    k = torch.view_as_real(t["masked_kspace"]).contiguous().to(dev)  # fastMRI's (1, C, H, W, 2)
    mask = t["mask"].reshape(1, 1, 1, -1, 1).to(dev)
    target, max_value = t["target"].to(dev), t["max_value"].to(dev)
    nlf = torch.tensor([t["num_low_frequencies"]], device=dev)
    ssim = SSIMLoss().to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(k, mask, nlf)
        loss = ssim(out.unsqueeze(1), target.unsqueeze(1), data_range=max_value)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _flat_step(wl, dev, variant):
    cfg = get_preset("knee")
    mc = dataclasses.replace(cfg.model, **{k: v for k, v in RELEASED.items() if k in ("chans", "pools", "sens_chans",
                                                                                       "sens_pools")})
    torch.manual_seed(0)
    model = FlatModel(mc).to(dev).train()
    model.set_memory_levers(checkpoint="ckpt" in variant, amp="bf16" if "bf16" in variant else "none")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    t = W.make_model_inputs(wl, dev)
    tc = cfg.train

    def step():
        opt.zero_grad(set_to_none=True)
        o = model(t["masked_kspace"], t["mask"], t["num_low_frequencies"])
        x_gt = model.target_image(t["kspace"], o).detach()
        loss, _ = flat_loss(o.images, o.times, o.scale, t["target"], t["max_value"], x_gt,
                            ssim_weight=tc.ssim_weight, l1_weight=tc.l1_weight,
                            velocity_weight=tc.velocity_weight)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_step_memory(device, device_info, variant):
    import conftest as harness  # benchmarks/conftest.py: the memory measurement and the summary rows

    wl = _workload()
    dev = device
    key = dict(op="train_step_K12", mode="fwd+bwd+adam", variant=variant, backend=variant, shape=wl.shape)
    if "bf16" in variant and dev.type == "cpu" and not _cpu_bf16_conv():
        harness._ROWS.append({**key, "status": "skipped", "reason": "no bf16 convolutions on this CPU build"})
        pytest.skip("bf16 convolutions are not available on this CPU build")
    step = _fastmri_step(wl, dev) if variant == "fastmri" else _flat_step(wl, dev, variant)
    # a step is seconds (CPU: tens of seconds under load), so not the harness's >= 7 rounds:
    # one warm-up (allocates the optimiser state), FLAT_BENCH_ROUNDS timed steps (default 3; 1
    # for bf16 on a CPU, which has no bf16 arithmetic and runs it several times slower), then
    # one step under the memory measurement
    rounds = int(os.environ.get("FLAT_BENCH_ROUNDS", "1" if ("bf16" in variant and dev.type == "cpu") else "3"))
    step()
    walls, cpus = [], []
    for _ in range(rounds):
        _sync(dev)
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(dev)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    peak, method = harness._peak_memory(step, dev)
    med = statistics.median(walls)
    row = {**key, "status": "ok", "median_s": med, "spread": (max(walls) - min(walls)) / med,
           "rounds": rounds, "timer": "time.perf_counter per step (median)", "peak_mem_bytes": peak,
           "peak_mem_method": method, "device": device_info["device"], "loadavg_1min": os.getloadavg()[0],
           "items_per_s": wl.B / med}
    if dev.type == "cpu":
        row["cpu_median_s"] = statistics.median(cpus)
    if variant == "fastmri":
        _FASTMRI[wl.shape] = row
    ref = _FASTMRI.get(wl.shape)
    if ref is not None:
        row["peak_vs_fastmri"] = peak / ref["peak_mem_bytes"] if ref["peak_mem_bytes"] else None
        row["time_vs_fastmri"] = med / ref["median_s"]
        if "cpu_median_s" in row:
            row["cpu_time_vs_fastmri"] = row["cpu_median_s"] / ref["cpu_median_s"]
    row["_extra"] = {}
    harness._ROWS.append(row)
    print(f"\n{variant} {wl.shape}: peak {peak / 2**20:.1f} MB ({row.get('peak_vs_fastmri') or float('nan'):.2f}x "
          f"fastMRI), step {med:.2f} s wall ({row.get('time_vs_fastmri', float('nan')):.2f}x), "
          f"{row.get('cpu_median_s', float('nan')):.2f} s CPU ({row.get('cpu_time_vs_fastmri', float('nan')):.2f}x); "
          f"load {row['loadavg_1min']:.1f}", flush=True)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _cpu_bf16_conv() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))
        return True
    except RuntimeError:
        return False
