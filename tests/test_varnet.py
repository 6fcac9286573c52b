"""fastMRI's E2E-VarNet on FLAT (docs/varnet.md): fastMRI's weights load as they are, the output is
fastMRI's own, FLAT and the vanilla baseline start from it exactly, and ``flat recon --method
varnet`` writes what fastMRI's pretrained-VarNet inference writes.

Tolerances: fastMRI's VarNet and ours do the same arithmetic in a different order (complex64
multiplies vs fastMRI's real-layout ones, FLAT's fused DC step), a few float32 roundings per
cascade, so outputs agree to ~1e-6 relative; 1e-5 (float32) and 1e-12 (float64) hold an order of
magnitude of headroom while a wrong sign, shift, normalisation or a dropped layer errs by O(1).
"""
from collections import defaultdict

import h5py
import numpy as np
import pytest
import torch

import flat.ops as fo
from flat.model import FlatModel, VarNet, flat_from_varnet, load_fastmri_varnet, varnet_sizes
from flat.model.varnet import fastmri_num_low_frequencies
from tests.fastmri_files import FASTMRI_REASON, HAS_FASTMRI, make_fastmri_file, run_cli

needs_fastmri = pytest.mark.skipif(not HAS_FASTMRI, reason=FASTMRI_REASON)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread. With two on a busy 2-core machine, OpenMP's
    barrier spinning made each forward ~50x slower (2 s instead of 0.04 s of CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
SMALL = dict(num_cascades=3, sens_chans=4, sens_pools=2, chans=4, pools=2)


def _fastmri_varnet(seed=0, **sizes):
    """A randomly initialised fastmri.models.VarNet, with random DC weights in (0.2, 1.2)."""
    from fastmri.models import VarNet as FastVarNet

    torch.manual_seed(seed)
    ref = FastVarNet(**(sizes or SMALL)).eval()
    with torch.no_grad():
        for c in ref.cascades:
            c.dc_weight.uniform_(0.2, 1.2)
    return ref


def _batch(B=2, C=4, H=20, W=18, seed=0, dtype=torch.float32):
    """fastMRI's layout: k-space (B, C, H, W, 2) zero off the mask, bool mask (1, 1, 1, W, 1)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 1, 1, W, 1, dtype=torch.bool)
    mask[..., 1::3, :] = True
    mask[..., W // 2 - 2:W // 2 + 2, :] = True
    k = torch.randn(B, C, H, W, 2, generator=g, dtype=torch.float64) * mask
    return k.to(dtype), mask


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@needs_fastmri
@pytest.mark.parametrize("H,W", [(20, 18), (17, 33)])  # odd sizes: fastMRI's padding to 16
def test_output_equals_fastmri_float32_and_float64(H, W):
    ref = _fastmri_varnet()
    ours = load_fastmri_varnet(ref.state_dict())
    k, mask = _batch(H=H, W=W)
    with torch.no_grad():
        for nlf in (None, 4):
            want = ref(k, mask, nlf)
            got = ours(k, mask, nlf)
            assert got.shape == want.shape == (2, H, W) and got.dtype == torch.float32
            assert _rel(got, want) <= 1e-5
        # complex layout and a (W,) mask give the same
        assert _rel(ours(torch.view_as_complex(k), mask.reshape(-1)), want) <= 1e-5
        ref.double(), ours.double()
        want, got = ref(k.double(), mask), ours(k.double(), mask)
        assert got.dtype == torch.float64 and _rel(got, want) <= 1e-12


@needs_fastmri
@pytest.mark.parametrize("backend", fo.available_backends())
def test_every_backend_matches_fastmri(backend):
    ref = _fastmri_varnet(seed=1)
    ours = load_fastmri_varnet(ref.state_dict())
    k, mask = _batch(B=1, seed=1)
    with torch.no_grad():
        assert _rel(ours(k, mask, backend=backend), ref(k, mask)) <= 1e-5


@needs_fastmri
def test_gradients_equal_fastmri():
    """Fine-tuning sees fastMRI's gradients: every parameter's, through FLAT's DC ops."""
    ref = _fastmri_varnet(seed=2).double()
    ours = load_fastmri_varnet(ref.state_dict()).double()
    k, mask = _batch(B=1, seed=2, dtype=torch.float64)
    ref(k, mask).square().sum().backward()
    ours(k, mask).square().sum().backward()
    theirs = dict(ref.named_parameters())
    # the first cascade's DC weight has gradient 0 (k = y there), so errors are taken relative to
    # the largest gradient norm of any parameter
    scale = max(float(p.grad.norm()) for p in theirs.values())
    for name, p in ours.named_parameters():
        g, want = p.grad, theirs[name].grad
        assert float((g - want).norm()) <= 1e-10 * max(float(want.norm()), 1e-3 * scale), name


@needs_fastmri
def test_sizes_read_from_the_state_dict(tmp_path):
    sizes = dict(num_cascades=2, sens_chans=3, sens_pools=1, chans=5, pools=3)
    ref = _fastmri_varnet(seed=3, **sizes)
    path = tmp_path / "varnet.pt"
    torch.save(ref.state_dict(), path)
    assert varnet_sizes(ref.state_dict()) == sizes
    ours = load_fastmri_varnet(path)
    assert isinstance(ours, VarNet) and not ours.training
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    k, mask = _batch(B=1, H=16, W=16, seed=3)
    with torch.no_grad():
        assert _rel(ours(k, mask), ref(k, mask)) <= 1e-5
    # a Lightning checkpoint of fastMRI's VarNetModule: keys under state_dict, prefixed "varnet."
    torch.save({"epoch": 3, "state_dict": {f"varnet.{k}": v for k, v in ref.state_dict().items()}}, path)
    again = load_fastmri_varnet(path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such state dict"):
        load_fastmri_varnet(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="weights_only"):
        load_fastmri_varnet(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a fastMRI VarNet state dict"):
        load_fastmri_varnet({"conv.weight": torch.zeros(1)})
    sd = VarNet(**SMALL).state_dict()
    sd["cascades.0.model.unet.conv.layers.0.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(ValueError, match="does not match"):
        load_fastmri_varnet(sd)
    with pytest.raises(TypeError, match="path_or_state_dict"):
        load_fastmri_varnet(3)
    with pytest.raises(ValueError, match="num_cascades"):
        VarNet(num_cascades=0)


@needs_fastmri
def test_num_low_frequencies_from_the_mask_as_fastmri():
    from fastmri.models.varnet import SensitivityModel

    sm = SensitivityModel(2, 1)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        W = int(torch.randint(4, 40, (1,), generator=g))
        m = torch.rand(3, W, generator=g) < 0.5
        c, n = W // 2, int(torch.randint(0, W // 2, (1,), generator=g))
        m[:, c - n:c + n] = True
        _, want = sm.get_pad_and_num_low_freqs(m.reshape(3, 1, 1, W, 1), None)
        assert torch.equal(fastmri_num_low_frequencies(m), want)


# ---------------------------------------------------------------- FLAT and the baseline from VarNet


@needs_fastmri
@pytest.mark.parametrize("mode", ["flat", "vanilla"])
def test_flat_and_vanilla_start_as_the_varnet(mode):
    ref = _fastmri_varnet(seed=4)
    model = flat_from_varnet(ref.state_dict(), mode).eval()
    cfg = model.cfg
    assert (cfg.unet, cfg.state, cfg.sens, cfg.cascades, cfg.chans, cfg.pools) == ("fastmri", "kspace", "learned", 3, 4, 2)
    eta = [float(c.dc_weight.detach()) for c in ref.cascades]
    if mode == "flat":  # DC weights on the schedule: Δt_k/σ² = η_k
        assert np.allclose(cfg.dc_weights(), eta, rtol=1e-12)
        assert any(".film." in n for n, _ in model.named_parameters())
    else:
        assert np.allclose(model.dc_weight.detach().numpy(), eta, rtol=1e-7)
    k, mask = _batch(seed=4)
    with torch.no_grad():
        want = ref(k, mask)
        out = model(k, mask, None)  # fastMRI's layout, mask and num_low_frequencies=None
        assert _rel(out.output, want) <= 1e-5
        # the intermediate states are E2E-VarNet's SENSE-combined images
        assert len(out.images) == 4 and out.images[-1].shape == (2, 20, 18)


@needs_fastmri
def test_flat_from_varnet_trains_and_round_trips(tmp_path):
    from flat.config import Config
    from flat.inference import load_model

    ref = _fastmri_varnet(seed=5)
    model = flat_from_varnet(ref.state_dict(), "flat")
    k, mask = _batch(B=1, seed=5)
    out = model(k, mask, None)
    out.output.sum().backward()
    film = [p for n, p in model.named_parameters() if ".film." in n]
    assert film and all(p.grad is not None for p in film)  # the time conditioning learns
    path = tmp_path / "m.pt"
    torch.save({"kind": "flat-model", "config": Config(model=model.cfg).to_dict(),
                "model": model.state_dict()}, path)
    again = load_model(path)
    with torch.no_grad():
        assert torch.equal(again(k, mask, None).output, model.eval()(k, mask, None).output)


def test_flat_from_varnet_refuses_dc_weights_off_the_euler_range():
    sd = VarNet(**SMALL).state_dict()
    sd["cascades.1.dc_weight"] = torch.tensor([-0.1])
    with pytest.raises(ValueError, match="outside \\(0, 2\\).*vanilla"):
        flat_from_varnet(sd, "flat")
    assert isinstance(flat_from_varnet(sd, "vanilla"), FlatModel)
    with pytest.raises(ValueError, match="mode"):
        flat_from_varnet(sd, "both")


def test_fastmri_unet_config_is_checked():
    from flat.config import ModelConfig

    with pytest.raises(ValueError, match="model.unet"):
        ModelConfig(unet="resnet").validate()
    with pytest.raises(ValueError, match="model.shared_weights"):
        ModelConfig(unet="fastmri", shared_weights=True).validate()
    with pytest.raises(ValueError, match="model.time_grid"):
        ModelConfig(cascades=2, time_grid=(0.0, 0.5)).validate()
    with pytest.raises(ValueError, match="model.time_grid"):
        ModelConfig(cascades=2, time_grid=(0.0, 0.7, 0.5)).validate()
    cfg = ModelConfig(cascades=2, time_grid=(0.0, 0.25, 1.0), sigma=1.0)
    cfg.validate()
    assert cfg.dc_weights() == [0.25, 0.75]


# ---------------------------------------------------------------- flat recon --method varnet


def _fastmri_pretrained_inference(state_dict_file, data_path):
    """What fastMRI's fastmri_examples/varnet/run_pretrained_varnet_inference.py computes, step by
    step: SliceDataset + VarNetDataTransform() (the file's mask, header padding out), the model on
    each slice with num_low_frequencies inferred from the mask, the recon-size crop (a square of the
    image width when narrower), slices stacked in order per volume. (The script's
    ``crop_size = crop_size[0]`` expects the collated crop as one pair per batch element; the
    DataLoader of torch 2 collates it as ``[h's, w's]``, so the pair is read as such here.)"""
    import fastmri.data.transforms as T
    from fastmri.data import SliceDataset
    from fastmri.models import VarNet as FastVarNet

    model = FastVarNet(**varnet_sizes(torch.load(state_dict_file, weights_only=True)))
    model.load_state_dict(torch.load(state_dict_file, weights_only=True))
    model.eval()
    loader = torch.utils.data.DataLoader(SliceDataset(data_path, "multicoil", transform=T.VarNetDataTransform()))
    outputs = defaultdict(list)
    for masked_kspace, mask, _, _, fname, slice_num, _, crop_size in loader:
        crop_size = (int(crop_size[0][0]), int(crop_size[1][0]))  # batch size 1
        with torch.no_grad():
            output = model(masked_kspace, mask)
        if output.shape[-1] < crop_size[1]:
            crop_size = (output.shape[-1], output.shape[-1])
        outputs[fname[0]].append((int(slice_num[0]), T.center_crop(output, crop_size)[0]))
    return {f: np.stack([o.numpy() for _, o in sorted(v, key=lambda t: t[0])]) for f, v in outputs.items()}


@needs_fastmri
def test_flat_recon_varnet_equals_fastmri_inference(tmp_path, monkeypatch):
    """A randomly initialised fastMRI VarNet, saved as fastMRI saves it; held-out undersampled files
    (test-set layout: a ``mask`` dataset, no target); ``flat recon FILE DATA OUT --method varnet``
    equals fastMRI's own pretrained-VarNet inference on them, per volume."""
    ref = _fastmri_varnet(seed=6)
    weights = tmp_path / "varnet_state_dict.pt"
    torch.save(ref.state_dict(), weights)
    data = tmp_path / "test"
    rng = np.random.default_rng(6)
    for i, (W, center, maximum) in enumerate([(20, 8, 15), (21, 9, 16)]):
        m = rng.random(W) < 0.3
        m[W // 2 - 2:W // 2 + 2] = True
        make_fastmri_file(data / f"file_{i}.h5", S=3, W=W, center=center, maximum=maximum, mask=m, seed=10 + i)
    out = tmp_path / "out"
    assert run_cli(["recon", str(weights), data, out, "--method", "varnet", "--no-progress"], monkeypatch) == 0
    want = _fastmri_pretrained_inference(weights, data)
    assert sorted(want) == ["file_0.h5", "file_1.h5"]
    for fname, w in want.items():
        with h5py.File(out / fname, "r") as f:
            got = f["reconstruction"][()]
        assert got.dtype == np.float32 and got.shape == w.shape == (3, 16, 16)
        assert np.abs(got - w).max() / np.abs(w).max() <= 1e-4, fname


@needs_fastmri
def test_flat_recon_varnet_fully_sampled_equals_fastmri_transform(tmp_path, monkeypatch):
    """Fully sampled input: the mask is fastMRI's mask function seeded by the file name and the
    centre width the mask function's, as fastMRI's VarNetDataTransform(mask_func) feeds its VarNet."""
    import fastmri.data.transforms as T
    from fastmri.data import SliceDataset, subsample

    ref = _fastmri_varnet(seed=7)
    weights = tmp_path / "varnet.pt"
    torch.save(ref.state_dict(), weights)
    data = tmp_path / "val"
    make_fastmri_file(data / "file_brain_AXT2_0.h5", S=2, W=21, center=9, maximum=16, seed=3)
    out = tmp_path / "out"
    assert run_cli(["recon", str(weights), data, out, "--method", "varnet", "--mask-type", "random",
                    "--accelerations", "4", "--center-fractions", "0.2", "--no-progress"], monkeypatch) == 0
    mask_func = subsample.create_mask_for_mask_type("random", [0.2], [4])
    want = []
    with torch.no_grad():
        for s in SliceDataset(data, "multicoil", transform=T.VarNetDataTransform(mask_func)):
            o = ref(s.masked_kspace[None], s.mask[None], s.num_low_frequencies)
            want.append(T.center_crop(o, s.crop_size)[0].numpy())
    want = np.stack(want)
    with h5py.File(out / "file_brain_AXT2_0.h5", "r") as f:
        got = f["reconstruction"][()]
    assert got.shape == want.shape and np.abs(got - want).max() / np.abs(want).max() <= 1e-4


def test_flat_recon_varnet_bad_weights_one_line(tmp_path, monkeypatch, capsys):
    data = tmp_path / "d"
    make_fastmri_file(data / "f.h5", S=1)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    for ckpt, says in (("-", "needs a fastMRI VarNet state dict"), (tmp_path / "missing.pt", "no such state dict"),
                       (tmp_path / "bad.pt", "weights_only"), (tmp_path / "other.pt", "not a fastMRI VarNet")):
        capsys.readouterr()
        assert run_cli(["recon", ckpt, data, tmp_path / "out", "--method", "varnet", "--no-progress"], monkeypatch) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("flat recon: error:") and says in err[0], err
    assert not (tmp_path / "out").exists()


@needs_fastmri
@pytest.mark.parametrize("mode", ["flat", "vanilla"])
def test_flat_train_init_from_varnet(tmp_path, monkeypatch, mode):
    """``flat train --init-from FILE``: the run starts as the VarNet (architecture from the file,
    FLAT's DC weights on the grid); with a vanishing learning rate its model.pt still computes it."""
    from flat.inference import load_model
    from tests.fastmri_files import make_tiny_splits

    ref = _fastmri_varnet(seed=8)
    weights = tmp_path / "varnet.pt"
    torch.save(ref.state_dict(), weights)
    data = make_tiny_splits(tmp_path / "data", seed=0)
    out = tmp_path / "run"
    assert run_cli(["train", "--train", data / "train", "--val", data / "val", "--out", out, "--preset", "tiny",
                    "--init-from", weights, "--set", f"model.mode={mode}", "--set", "train.max_steps=1",
                    "--set", "train.lr=1e-12", "--set", "train.weight_decay=0", "--set", "train.threads=1",
                    "--no-progress"], monkeypatch) == 0
    model = load_model(out / "model.pt")
    cfg = model.cfg
    assert (cfg.mode, cfg.unet, cfg.cascades, cfg.chans, cfg.pools, cfg.sens_chans) == (mode, "fastmri", 3, 4, 2, 4)
    k, mask = _batch(seed=8)
    with torch.no_grad():
        assert _rel(model(k, mask, None).output, ref(k, mask)) <= 1e-5
