"""Time grids (docs/model.md): Σ Δt = 1, exact end points, the power law, validation of σ."""
import math

import pytest
import torch

from flat.config import ModelConfig, apply_overrides, get_preset
from flat.flow.schedule import steps_from_grid, time_grid


@pytest.mark.parametrize("K", [1, 2, 3, 6, 12])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 3.0])
def test_grid_sums_to_one(K, alpha):
    t = time_grid(K, "power", alpha)
    dt = steps_from_grid(t)
    assert t.shape == (K + 1,) and dt.shape == (K,)
    assert t[0].item() == 0.0 and t[-1].item() == 1.0
    assert abs(dt.sum().item() - 1.0) < 1e-12
    assert bool((dt > 0).all())


def test_power_law_formula_and_uniform():
    K, alpha = 5, 0.7
    t = time_grid(K, "power", alpha)
    for k in range(K + 1):
        assert t[k].item() == pytest.approx(1 - (1 - k / K) ** (1 + alpha), abs=1e-15)
    u = time_grid(4, "uniform")
    assert torch.allclose(u, torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert torch.equal(time_grid(4, "power", 0.0), u)
    # alpha > 0: big steps first, small steps near the target
    dt = steps_from_grid(t)
    assert bool((dt[1:] < dt[:-1]).all())


def test_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="kind"):
        time_grid(3, "cosine")
    with pytest.raises(ValueError, match="alpha"):
        time_grid(3, "power", -1.0)
    with pytest.raises(ValueError, match="t:"):
        steps_from_grid(torch.tensor([0.0, 0.6, 0.5, 1.0]))


def test_dc_weight_derived_from_sigma():
    cfg = ModelConfig(cascades=6, sigma=1 / math.sqrt(6))
    assert cfg.dc_weights() == pytest.approx([1.0] * 6)  # Δt·λ = (1/6)·6
    # by default σ follows from the mean Δt·λ, for any K
    for K in (2, 6, 10):
        cfg = ModelConfig(cascades=K, dc_per_step=1.5)
        assert cfg.noise_scale() == pytest.approx(1 / math.sqrt(1.5 * K))
        assert cfg.dc_weights() == pytest.approx([1.5] * K)
    # σ is fixed by the training K: a shared-weight model run with more steps takes smaller DC steps
    assert ModelConfig(cascades=6).dc_weights(12) == pytest.approx([0.75] * 12)
    # the demo's α = 0.2 grid: Δt_k·λ with λ = 1/σ² = 6·1.5, mean 1.5, largest first
    demo = get_preset("demo").model
    w = demo.dc_weights()
    assert sum(w) / 6 == pytest.approx(1.5)
    assert w[0] == pytest.approx(9 * (1 - (5 / 6) ** 1.2)) and w == sorted(w, reverse=True)


def test_sigma_validated():
    with pytest.raises(ValueError, match="model.sigma"):
        ModelConfig(sigma=-1.0).validate()
    with pytest.raises(ValueError, match="model.sigma.*unstable"):
        ModelConfig(cascades=6, sigma=0.2).validate()  # Δt·λ = 4.2 > 2
    with pytest.raises(ValueError, match="model.dc_per_step"):
        ModelConfig(dc_per_step=2.5).validate()
    with pytest.raises(ValueError, match="model.dc_per_step.*unstable"):
        ModelConfig(cascades=6, dc_per_step=1.5, alpha=1.0).validate()  # first step 1.5·6·0.31 > 2
    with pytest.raises(ValueError, match="model.sigma"):
        apply_overrides(get_preset("demo"), ["model.sigma=0.1"])
    # vanilla has no σ in its update, so the check does not apply
    ModelConfig(mode="vanilla", sigma=0.1).validate()
