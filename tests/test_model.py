"""The unrolled flow (docs/model.md): Euler steps are flow_step, the baseline switch, sensitivities,
variable-step inference with shared weights, checkpoints and the inference API."""
import dataclasses

import pytest
import torch
from torch import nn

import flat.ops as fo
from flat.config import Config, ModelConfig, get_preset
from flat.flow.schedule import steps_from_grid, time_grid
from flat.model import FlatModel
from flat.model.sens import SensitivityModel
from tests.helpers import assert_rel_close, random_sens

TINY = get_preset("tiny").model
B, C, H, W = 2, 4, 24, 20


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    img = ((yy / 0.7) ** 2 + (xx / 0.6) ** 2 < 1).to(torch.complex64) * (1 + 0.3j)
    img = img.expand(B, H, W) + 0.05 * torch.randn(B, H, W, dtype=torch.complex64, generator=g)
    sens = random_sens(B, C, H, W, dtype=torch.complex64, generator=g)
    full = fo.sens_expand(img, sens)
    mask = torch.zeros(W, dtype=torch.bool)
    mask[::3] = True
    mask[W // 2 - 2:W // 2 + 2] = True
    return full * mask, mask, 4, sens, full


class FixedVelocity(nn.Module):
    """A stand-in velocity net v(x, t) = 0.3·x + 0.1 that records the times it was called with."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3))
        self.times = []

    def forward(self, x, t=None):
        self.times.append(None if t is None else t.clone())
        return self.w * x + 0.1


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_euler_step_is_flow_step(alpha):
    cfg = dataclasses.replace(TINY, cascades=4, alpha=alpha, sens="given", sigma=0.7)
    model = FlatModel(cfg)
    model.nets = nn.ModuleList(FixedVelocity() for _ in range(4))
    y, mask, nlf, sens, _ = _data()
    out = model(y, mask, nlf, sens=sens)
    t = time_grid(4, "power", alpha)
    dts = steps_from_grid(t)
    assert len(out.images) == 5 and torch.equal(out.times, t) and cfg.gain() == 4.0
    yn = y / out.scale.reshape(-1, 1, 1, 1)
    assert_rel_close(out.images[0], fo.sense_adjoint(yn, sens, mask), name="x_0 = Aᴴy")
    for k in range(4):
        v = cfg.gain() * (0.3 * out.images[k] + 0.1)  # v = g·U(x, t), g = K by default
        want = fo.flow_step(out.images[k], v, yn, sens, mask, float(dts[k]),
                            1 / 0.7**2)  # λ = 1/σ²
        assert_rel_close(out.images[k + 1], want, name=f"x_{k + 1}")
        assert torch.allclose(model.nets[k].times[0], torch.full((B,), float(t[k])))


def test_kspace_state_is_kspace_flow_step():
    cfg = dataclasses.replace(TINY, cascades=2, sens="given", state="kspace")
    model = FlatModel(cfg)
    model.nets = nn.ModuleList(FixedVelocity() for _ in range(2))
    y, mask, nlf, sens, _ = _data()
    out = model(y, mask, nlf, sens=sens)
    yn = y / out.scale.reshape(-1, 1, 1, 1)
    k = yn
    for step in range(2):
        x = fo.sens_reduce(k, sens)
        k = fo.kspace_flow_step(k, cfg.gain() * (0.3 * x + 0.1), yn, sens, mask, 0.5, 1 / cfg.noise_scale() ** 2)
        assert_rel_close(out.images[step + 1], fo.sens_reduce(k, sens), name=f"x_{step + 1}")


def test_vanilla_baseline_switch():
    cfg = dataclasses.replace(TINY, mode="vanilla", sens="given")
    model = FlatModel(cfg)
    assert all(net.t_mlp is None for net in model.nets)  # no time input
    assert cfg.gain() == 1.0  # the residual is the network output itself
    assert isinstance(model.dc_weight, nn.Parameter) and model.dc_weight.shape == (cfg.cascades,)
    y, mask, nlf, sens, full = _data()
    model.nets = nn.ModuleList(FixedVelocity() for _ in range(cfg.cascades))
    out = model(y, mask, nlf, sens=sens)
    yn = y / out.scale.reshape(-1, 1, 1, 1)
    want = fo.flow_step(out.images[0], 0.3 * out.images[0] + 0.1, yn, sens, mask, 1.0, model.dc_weight[0])
    assert_rel_close(out.images[1], want, name="vanilla step")
    out.output.sum().backward()
    assert model.dc_weight.grad is not None and model.dc_weight.grad.abs().sum() > 0  # free DC weights learn
    assert model.nets[0].times == [None]
    # FLAT mode has no free DC weight: it is Δt/σ²
    assert FlatModel(dataclasses.replace(TINY, sens="given")).dc_weight is None


def test_gradients_reach_every_parameter():
    y, mask, nlf, sens, full = _data()
    for mode, sens_mode in (("flat", "learned"), ("vanilla", "acs")):
        cfg = dataclasses.replace(TINY, mode=mode, sens=sens_mode)
        model = FlatModel(cfg)
        for p in model.parameters():  # leave the zero init so every path carries signal
            nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
        out = model(y, mask, nlf)
        x_gt = model.target_image(full, out)
        (out.output.mean() + (out.images[1] - x_gt).abs().mean()).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"{mode}/{sens_mode}: no gradient for {missing}"


def test_shared_weights_variable_steps():
    cfg = dataclasses.replace(TINY, shared_weights=True, sens="given", cascades=3)
    model = FlatModel(cfg)
    assert len(model.nets) == 1
    y, mask, nlf, sens, _ = _data()
    for K in (2, 3, 7):
        out = model(y, mask, nlf, sens=sens, steps=K)
        assert len(out.images) == K + 1 and out.times.numel() == K + 1
    per_cascade = FlatModel(dataclasses.replace(TINY, sens="given"))
    with pytest.raises(ValueError, match="steps"):
        per_cascade(y, mask, nlf, sens=sens, steps=5)
    with pytest.raises(ValueError, match="steps.*unstable"):  # fewer steps than trained: Δt·λ = 3
        model(y, mask, nlf, sens=sens, steps=1)


def test_learned_sens_starts_at_acs_estimate():
    from flat.coils import estimate_sens_acs

    y, mask, nlf, _, _ = _data()
    est = SensitivityModel(chans=4, pools=1)(y, nlf)
    ref = estimate_sens_acs(y, nlf, threshold=0.0)
    assert_rel_close(est, ref, rtol=1e-5, name="learned sens at init")
    assert torch.allclose(est.abs().pow(2).sum(1), torch.ones(B, H, W), atol=1e-5)


def test_scale_invariance():
    """Inputs are normalised: scaling k-space by c scales the output by c (σ means the same everywhere)."""
    model = FlatModel(dataclasses.replace(TINY, sens="given"))
    for p in model.parameters():
        nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
    y, mask, nlf, sens, _ = _data()
    a = model(y, mask, nlf, sens=sens).output
    b = model(y * 1e-4, mask, nlf, sens=sens).output
    assert_rel_close(b, a * 1e-4, rtol=1e-4, name="scaled output")


def test_dc_step_complex64_under_autocast():
    model = FlatModel(dataclasses.replace(TINY, sens="given"))
    y, mask, nlf, sens, _ = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(y, mask, nlf, sens=sens)
    assert all(x.dtype == torch.complex64 for x in out.images)
    assert torch.isfinite(out.output).all()


def test_bad_inputs_name_the_argument():
    model = FlatModel(dataclasses.replace(TINY, sens="given"))
    y, mask, nlf, sens, _ = _data()
    with pytest.raises(ValueError, match="mask"):
        model(y, torch.ones(W + 1, dtype=torch.bool), nlf, sens=sens)
    with pytest.raises(ValueError, match="masked_kspace"):
        model(y.abs(), mask, nlf, sens=sens)
    with pytest.raises(ValueError, match="sens"):
        model(y, mask, nlf)  # configured with given maps
    with pytest.raises(ValueError, match="model.mode"):
        ModelConfig(mode="diffusion").validate()


def test_checkpoint_roundtrip_and_reconstruct(tmp_path):
    from flat.inference import load_model, reconstruct, reconstruct_trajectory
    from flat.train import save_model

    cfg = get_preset("tiny")
    model = FlatModel(cfg.model)
    for p in model.parameters():
        nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    save_model(tmp_path / "m.pt", model, cfg)
    loaded = load_model(tmp_path / "m.pt")
    assert isinstance(loaded.config, Config) and loaded.config == cfg and not loaded.training
    y, mask, nlf, _, _ = _data()
    rec = reconstruct(loaded, y, mask, nlf)
    assert rec.shape == (B, H, W) and rec.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        assert torch.allclose(rec, model(y, mask, nlf).output, atol=1e-6 * float(rec.max()))
    traj = reconstruct_trajectory(loaded, y, mask, nlf)
    assert traj.shape == (cfg.model.cascades + 1, B, H, W) and torch.equal(traj[-1], rec)
    with pytest.raises(ValueError, match="mask"):
        reconstruct(loaded, y, mask[None], nlf)
    # user maps: a model.sens=given model needs them, and gets them through reconstruct(sens=)
    given_cfg = cfg.replace(model=dataclasses.replace(cfg.model, sens="given"))
    save_model(tmp_path / "g.pt", FlatModel(given_cfg.model), given_cfg)
    given = load_model(tmp_path / "g.pt")
    _, _, _, sens, _ = _data()
    assert reconstruct(given, y, mask, nlf, sens=sens).shape == (B, H, W)
    with pytest.raises(ValueError, match="sens"):
        reconstruct(given, y, mask, nlf)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_model(tmp_path / "missing.pt")


@pytest.mark.parametrize("sens_mode", ["acs", "learned"])
def test_fastmri_batch_layout_and_inferred_num_low_frequencies(sens_mode):
    """fastMRI's real layout (B, C, H, W, 2), its mask (B, 1, 1, W, 1) and num_low_frequencies=None
    give exactly what the complex layout, a (W,) mask and the centre width fastMRI infers give."""
    from flat.model.varnet import fastmri_num_low_frequencies

    torch.manual_seed(0)
    model = FlatModel(dataclasses.replace(TINY, sens=sens_mode)).eval()
    y, mask, _, _, _ = _data()
    nlf = fastmri_num_low_frequencies(mask.reshape(1, -1))
    assert int(nlf) == 4  # the _data mask: 4 centre columns, every third outside
    with torch.no_grad():
        want = model(y, mask, int(nlf))
        for m in (mask.reshape(1, 1, 1, W, 1), mask.reshape(1, 1, 1, W, 1).expand(B, 1, 1, W, 1).float(),
                  mask.reshape(1, 1, W, 1)):
            got = model(torch.view_as_real(y), m, None)
            assert torch.equal(got.output, want.output)
        assert torch.equal(model(y, mask, 0).output, want.output)  # fastMRI: 0 also means "infer"
    with pytest.raises(ValueError, match="num_low_frequencies"):
        model(y, mask, W + 1)
    with pytest.raises(ValueError, match="masked_kspace"):
        model(torch.view_as_real(y)[..., :1], mask, None)
