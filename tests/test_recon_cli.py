"""`flat recon` (zero-filled, CG-SENSE, the FLAT hook), ACS coil maps, and bad input handling."""
import sys
import types

import h5py
import numpy as np
import pytest
import torch

from flat.coils import estimate_sens_acs
from flat.data.masks import create_mask_for_mask_type, volume_seed
from flat.recon import cg_sense, zero_filled
from tests.fastmri_files import (FASTMRI_REASON, HAS_FASTMRI, crop, ifft2c, make_fastmri_file, run_cli,
                                 truncate)


def _recon(path):
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == ["reconstruction"]
        r = f["reconstruction"][()]
    assert r.dtype == np.float32
    return r


def _zf_reference(path, mask_type="equispaced_fraction", cf=0.08, acc=4):
    """Zero-filled RSS the fastMRI way, in numpy: per-volume seeded mask, header padding zeroed,
    RSS of the coil images, centre crop to the recon size."""
    with h5py.File(path, "r") as f:
        k = f["kspace"][()]
    S, C, H, W = k.shape
    m, _ = create_mask_for_mask_type(mask_type, [cf], [acc])((1, H, W, 2), seed=volume_seed(path.name))
    m = m.numpy().reshape(-1)
    m[:2] = 0
    m[W - 2 :] = 0  # the generator's header pads 2 columns each side
    img = np.sqrt((np.abs(ifft2c(k.astype(np.complex128) * m)) ** 2).sum(1))
    return crop(img, 16, 16)


def test_zero_filled_cli_matches_fastmri_definition(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for i in range(2):
        make_fastmri_file(data / f"file_{i}.h5", S=3, seed=i)
    for mt in ("random", "equispaced_fraction"):
        out = tmp_path / f"out_{mt}"
        assert run_cli(["recon", "-", data, out, "--method", "zero-filled", "--mask-type", mt,
                        "--no-progress"], monkeypatch) == 0
        for i in range(2):
            got = _recon(out / f"file_{i}.h5")
            want = _zf_reference(data / f"file_{i}.h5", mt)
            assert got.shape == (3, 16, 16)
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


@pytest.mark.skipif(not HAS_FASTMRI, reason=FASTMRI_REASON)
def test_zero_filled_cli_matches_fastmri_itself(tmp_path, monkeypatch):
    import fastmri
    from fastmri.data import subsample
    from fastmri.data.mri_data import SliceDataset
    from fastmri.data.transforms import VarNetDataTransform, center_crop

    data = tmp_path / "data"
    make_fastmri_file(data / "file_brain_AXT2_0.h5", S=3, W=21, center=9, maximum=16, seed=3)
    assert run_cli(["recon", "-", data, tmp_path / "out", "--method", "zero-filled", "--mask-type", "random",
                    "--accelerations", "4", "--center-fractions", "0.2", "--no-progress"], monkeypatch) == 0
    got = _recon(tmp_path / "out" / "file_brain_AXT2_0.h5")
    ds = SliceDataset(data, "multicoil",
                      transform=VarNetDataTransform(subsample.create_mask_for_mask_type("random", [0.2], [4])))
    want = np.stack([center_crop(fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(s.masked_kspace)), 0), s.crop_size).numpy()
                     for s in ds])
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def test_undersampled_input_uses_its_mask(tmp_path, monkeypatch):
    m = np.zeros(20, bool)
    m[8:12] = True
    m[3::3] = True
    p = make_fastmri_file(tmp_path / "data" / "test_vol.h5", mask=m)
    assert run_cli(["recon", "-", p, tmp_path / "out", "--method", "zero-filled", "--no-progress"], monkeypatch) == 0
    with h5py.File(p, "r") as f:
        k = f["kspace"][()]
    want = crop(np.sqrt((np.abs(ifft2c(k.astype(np.complex128))) ** 2).sum(1)), 16, 16)
    got = _recon(tmp_path / "out" / "test_vol.h5")
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def _phantom(B=2, C=6, H=32, W=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    obj = (((xx / 0.7) ** 2 + (yy / 0.8) ** 2) < 1).double() * (1 + 0.3 * torch.cos(4 * xx))
    x = (obj * torch.exp(1j * (0.4 * xx - 0.2 * yy))).to(torch.complex128)
    x = x.expand(B, H, W) * (1 + 0.1 * torch.randn(B, 1, 1, generator=g))
    maps = [torch.exp(-((xx - 1.3 * np.cos(a)) ** 2 + (yy - 1.3 * np.sin(a)) ** 2)) * np.exp(1j * a)
            for a in np.linspace(0, 2 * np.pi, C, endpoint=False)]
    s = torch.stack(maps).to(torch.complex128)
    s = (s / s.abs().pow(2).sum(0).sqrt()).expand(B, C, H, W)
    return x, s


def test_cg_sense_solves_normal_equations():
    import flat.ops as fo

    x, s = _phantom()
    m = torch.zeros(32, dtype=torch.bool)
    m[::2] = True
    m[13:19] = True
    y = fo.sense_forward(x, s, m)
    rec = cg_sense(y, m, s, iters=60, lam=0.0, tol=1e-12)
    assert torch.linalg.vector_norm(rec - x) / torch.linalg.vector_norm(x) < 1e-6  # noiseless, R=2 SENSE: exact
    full = torch.ones(32, dtype=torch.bool)
    rec = cg_sense(fo.sense_forward(x, s, full), full, s, iters=3)
    assert torch.linalg.vector_norm(rec - x) / torch.linalg.vector_norm(x) < 1e-10
    lam = 0.1
    rec = cg_sense(y, m, s, iters=100, lam=lam, tol=1e-14)
    resid = fo.normal(rec, s, m) + lam * rec - fo.sense_adjoint(y, s, m)
    assert torch.linalg.vector_norm(resid) / torch.linalg.vector_norm(fo.sense_adjoint(y, s, m)) < 1e-8


def test_acs_sensitivities():
    import flat.ops as fo

    x, s = _phantom(C=8)
    k = fo.sens_expand(x, s).to(torch.complex64)
    for nl in (8, torch.tensor([8, 12])):
        est = estimate_sens_acs(k, nl)
        assert est.shape == k.shape and est.dtype == k.dtype
        ss = est.abs().pow(2).sum(1)
        inside = x.abs() > 0.5
        assert torch.allclose(ss[inside], torch.ones(()), atol=1e-5)
    # inside the object the ACS maps match the true maps up to a common phase per pixel
    est = estimate_sens_acs(k.to(torch.complex128), 12, window="hann")
    ph = (est * s.conj()).sum(1, keepdim=True)
    err = (est - s * ph / ph.abs().clamp_min(1e-12)).abs().pow(2).sum(1).sqrt()[(x.abs() > 0.5)]
    assert err.mean() < 0.1
    with pytest.raises(ValueError, match="num_low_frequencies"):
        estimate_sens_acs(k, 0)
    with pytest.raises(TypeError, match="complex"):
        estimate_sens_acs(k.real, 8)


def test_cg_sense_beats_zero_filled_on_demo_data(tmp_path, monkeypatch):
    from flat.data.demo import write_demo_dataset
    from flat.metrics import evaluate_folders

    files = write_demo_dataset(tmp_path / "demo", matrix=64, num_coils=8)
    test = tmp_path / "demo" / "test"
    res = {}
    for method in ("zero-filled", "cg-sense"):
        assert run_cli(["recon", "-", files["test"][1], tmp_path / method, "--method", method, "--no-progress"],
                       monkeypatch) == 0
        res[method] = evaluate_folders(tmp_path / method / files["test"][1].name, files["test"][1])["mean"]
    assert res["cg-sense"]["PSNR"] > res["zero-filled"]["PSNR"] + 1.0
    assert res["cg-sense"]["SSIM"] > res["zero-filled"]["SSIM"]
    assert test.is_dir()


def test_flat_method_calls_inference_api(tmp_path, monkeypatch):
    calls = {}
    fake = types.ModuleType("flat.inference")

    def load_model(path, map_location=None):
        calls["load"] = (str(path), map_location)
        return "MODEL"

    def reconstruct(model, masked_kspace, mask, num_low_frequencies, *, backend=None):
        calls.setdefault("rec", []).append((model, tuple(masked_kspace.shape), masked_kspace.dtype,
                                            tuple(mask.shape), mask.dtype, num_low_frequencies, backend))
        return zero_filled(masked_kspace)

    fake.load_model, fake.reconstruct = load_model, reconstruct
    monkeypatch.setitem(sys.modules, "flat.inference", fake)
    ck = tmp_path / "model.pt"
    ck.write_bytes(b"x")
    data = make_fastmri_file(tmp_path / "data" / "v.h5", S=3)
    assert run_cli(["recon", ck, data, tmp_path / "out", "--batch-size", "2", "--backend", "reference",
                    "--no-progress"], monkeypatch) == 0
    assert calls["load"] == (str(ck), "cpu")
    assert [c[1] for c in calls["rec"]] == [(2, 4, 24, 20), (1, 4, 24, 20)]
    model, _, dt, mshape, mdt, nl, be = calls["rec"][0]
    assert model == "MODEL" and dt == torch.complex64 and mshape == (20,) and mdt == torch.bool
    assert isinstance(nl, int) and be == "reference"
    want = _zf_reference(data)
    got = _recon(tmp_path / "out" / "v.h5")
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if not e.startswith("flat recon: note")]
    assert len(err) == 1 and err[0].startswith("flat recon: error:"), err
    for n in needles:
        assert n in err[0], err[0]


def test_bad_input(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run_cli(["recon", "-", tmp_path / "missing", out, "--method", "zero-filled"], monkeypatch) == 1
    _one_line_error(capsys, "missing", "no such file")
    data = tmp_path / "data"
    make_fastmri_file(data / "a_good.h5")
    truncate(make_fastmri_file(data / "b_trunc.h5"))
    assert run_cli(["recon", "-", data, out, "--method", "zero-filled"], monkeypatch) == 1
    _one_line_error(capsys, "b_trunc.h5")
    assert not out.exists()  # nothing written, not even the good volume
    (data / "b_trunc.h5").unlink()
    p = make_fastmri_file(data / "c_nok.h5")
    with h5py.File(p, "a") as f:
        del f["kspace"]
    assert run_cli(["recon", "-", data, out, "--method", "cg-sense"], monkeypatch) == 1
    _one_line_error(capsys, "c_nok.h5", "missing dataset 'kspace'")
    assert not out.exists()
    p.unlink()
    assert run_cli(["recon", "-", data, out, "--accelerations", "4", "8", "--method", "zero-filled"], monkeypatch) == 1
    _one_line_error(capsys, "--accelerations", "--center-fractions")
    assert run_cli(["recon", "-", data, out], monkeypatch) == 1
    _one_line_error(capsys, "CHECKPOINT")
    assert run_cli(["recon", tmp_path / "nope.pt", data, out], monkeypatch) == 1
    _one_line_error(capsys, "nope.pt")
    with pytest.raises(SystemExit) as e:  # argparse: usage + one error line, status 2
        run_cli(["recon", "-", data, out, "--method", "magic"], monkeypatch)
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not out.exists()


def test_failure_midway_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import flat.recon as fr

    data = tmp_path / "data"
    make_fastmri_file(data / "v.h5", S=3)
    real = fr.zero_filled
    n = {"calls": 0}

    def flaky(*a, **k):
        n["calls"] += 1
        if n["calls"] == 2:
            raise RuntimeError("simulated failure in the middle of a volume")
        return real(*a, **k)

    monkeypatch.setattr(fr, "zero_filled", flaky)
    out = tmp_path / "out"
    assert run_cli(["recon", "-", data, out, "--method", "zero-filled", "--batch-size", "2"], monkeypatch) == 1
    _one_line_error(capsys, "simulated failure")
    assert not out.exists() or not any(out.iterdir())


def test_cli_modules_import_light():
    import subprocess

    code = ("import sys, flat.cli.recon, flat.cli.eval, flat.cli.data, argparse; "
            "p = argparse.ArgumentParser(); [m.add_arguments(argparse.ArgumentParser()) "
            "for m in (flat.cli.recon, flat.cli.eval, flat.cli.data)]; "
            "print(sorted(m for m in ('torch', 'numpy', 'h5py', 'skimage') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__import__("pathlib").Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "[]"
    from flat.data.masks import MASK_TYPES
    from flat.cli.recon import MASK_TYPES as CLI_MASK_TYPES

    assert MASK_TYPES == CLI_MASK_TYPES


def test_entry_point_one_line_error(tmp_path):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "flat", "recon", "-", str(tmp_path / "missing"), str(tmp_path / "out"),
                        "--method", "zero-filled"], capture_output=True, text=True, cwd=root)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"flat recon: error: {tmp_path / 'missing'}: no such file or folder (DATA)"]
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
