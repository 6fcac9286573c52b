"""The FLAT loss (docs/model.md) on hand-made cases."""
import pytest
import torch

from flat.flow.loss import center_crop, final_loss, flat_loss, ssim, velocity_alignment
from flat.flow.schedule import time_grid


def test_ssim_identity_and_range():
    x = torch.rand(2, 20, 20)
    assert torch.allclose(ssim(x, x, torch.ones(2)), torch.ones(2), atol=1e-6)
    y = torch.rand(2, 20, 20)
    s = ssim(x, y, torch.ones(2))
    assert bool((s < 0.5).all()) and bool((s > -1).all())


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 32, 32, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(1, 32, 32, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(x, y, torch.ones(1, dtype=torch.float64)).item()
    # skimage with the same uniform 7x7 window and sample covariance; it averages over the
    # valid ('crop') region, as our un-padded convolution does
    ref = skm.structural_similarity(x[0].numpy(), y[0].numpy(), data_range=1.0, win_size=7)
    assert ours == pytest.approx(ref, abs=1e-6)


def test_final_loss_zero_at_target_and_crops():
    tgt = torch.rand(2, 10, 12) + 0.1
    pred = torch.zeros(2, 16, 16)
    pred[:, 3:13, 2:14] = tgt  # target sits in the centre of a larger image
    loss, parts = final_loss(pred, tgt, tgt.amax(dim=(1, 2)))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(center_crop(pred, (10, 12)), tgt)


def test_final_loss_l1_by_hand():
    tgt = torch.ones(1, 8, 8)
    pred = torch.full((1, 8, 8), 1.5)
    _, parts = final_loss(pred, tgt, torch.tensor([2.0]), ssim_weight=0.0, l1_weight=1.0)
    assert parts["l1"] == pytest.approx(0.25)  # |1.5 - 1| / max 2


def test_velocity_alignment_zero_on_straight_path():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 6, 6, dtype=torch.complex64, generator=g)
    xgt = torch.randn(2, 6, 6, dtype=torch.complex64, generator=g)
    t = time_grid(4, "power", 1.0)
    images = [(1 - float(tk)) * x0 + float(tk) * xgt for tk in t]
    assert velocity_alignment(images, xgt, t).item() == pytest.approx(0.0, abs=1e-6)


def test_velocity_alignment_by_hand():
    # K = 2 uniform, x0 = 0, x_gt = 1: states 0 -> 0.6 -> 1.
    # step 0: v = 0.6/0.5 = 1.2, u = (0.5 - 0)/0.5 = 1.0 -> |v - u| = 0.2; step 1: v = 0.8, u = 0.8 -> 0
    x0 = torch.zeros(1, 2, 2, dtype=torch.complex64)
    xgt = torch.ones(1, 2, 2, dtype=torch.complex64)
    images = [x0, torch.full_like(x0, 0.6), xgt]
    t = time_grid(2)
    assert velocity_alignment(images, xgt, t).item() == pytest.approx(0.1, abs=1e-6)


def test_velocity_alignment_equals_explicit_formula():
    g = torch.Generator().manual_seed(3)
    K = 3
    t = time_grid(K, "power", 0.5)
    images = [torch.randn(2, 5, 5, dtype=torch.complex128, generator=g) for _ in range(K + 1)]
    xgt = torch.randn(2, 5, 5, dtype=torch.complex128, generator=g)
    x0 = images[0]
    want = 0.0
    for k in range(K):
        dt = float(t[k + 1] - t[k])
        v = (images[k + 1] - images[k]) / dt
        u = ((1 - float(t[k + 1])) * x0 + float(t[k + 1]) * xgt - images[k]) / dt
        want += (v - u).abs().mean().item() / K
    assert velocity_alignment(images, xgt, t).item() == pytest.approx(want, rel=1e-10)


def test_flat_loss_combines_terms():
    x = [torch.ones(1, 8, 8, dtype=torch.complex64) * 0.5, torch.ones(1, 8, 8, dtype=torch.complex64)]
    t = time_grid(1)
    tgt = torch.full((1, 8, 8), 2.0)
    scale = torch.tensor([2.0])  # normalised 1.0 -> input 2.0: final output is exact
    loss0, p0 = flat_loss(x, t, scale, tgt, torch.tensor([2.0]), None)
    assert loss0.item() == pytest.approx(0.0, abs=1e-6)
    xgt = torch.full((1, 8, 8), 0.9, dtype=torch.complex64)
    loss1, p1 = flat_loss(x, t, scale, tgt, torch.tensor([2.0]), xgt, velocity_weight=2.0)
    assert p1["velocity"] == pytest.approx(0.1, abs=1e-6)
    assert loss1.item() == pytest.approx(0.2, abs=1e-5)
    with pytest.raises(ValueError, match="x_gt"):
        flat_loss(x, t, scale, tgt, torch.tensor([2.0]), None, velocity_weight=1.0)
