"""CG-SENSE (flat.recon.cg_sense): ESPIRiT maps by default, Tikhonov weight, residual stopping,
maps read from HDF5 files, bad input."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import flat.ops as fo
from flat.coils import estimate_sens_acs, read_sens_maps
from flat.data.demo import load_assets, simulate_volume
from flat.data.masks import apply_mask, create_mask_for_mask_type
from flat.metrics import psnr
from flat.recon import CG_ITERS, CG_LAM, cg_sense, zero_filled


def _undersampled(n=64, coils=8, slices=2, acc=4, cf=0.08):
    mags = load_assets()["ax_ventricles"][:slices]
    k, target = simulate_volume(mags, np.random.default_rng(5), matrix=n, num_coils=coils,
                                noise_std=0.003, scale=1e-3)
    mf = create_mask_for_mask_type("equispaced_fraction", [cf], [acc])
    masked, mask, nl = apply_mask(torch.from_numpy(k), mf, seed=(1, 2, 3))
    return masked, mask.reshape(-1).bool(), nl, target


def test_espirit_default_beats_acs_maps_and_zero_filled():
    masked, mask, nl, target = _undersampled(n=128)  # the demo's size: 8 coils, 10 ACS columns at 4x
    maxval = float(target.max())
    zf = psnr(target, zero_filled(masked).numpy(), maxval)
    esp = psnr(target, cg_sense(masked, mask, num_low_frequencies=nl, iters=CG_ITERS, lam=CG_LAM).abs().numpy(), maxval)
    acs = psnr(target, cg_sense(masked, mask, num_low_frequencies=nl, iters=CG_ITERS, lam=CG_LAM,
                                maps="acs").abs().numpy(), maxval)
    # measured on these two slices: see the margins below; docs/classical.md has the same
    # comparison on the demo validation volumes
    assert esp > zf + 6.0, (esp, zf)  # measured +8.6 dB (lam 1e-3), +7.9 dB (lam 3e-3)
    assert esp > acs + 2.0, (esp, acs)  # measured +3.7 dB, +3.3 dB


def test_maps_acs_is_the_tukey_acs_estimate_and_sens_overrides_maps():
    masked, mask, nl, _ = _undersampled(slices=1)
    s = estimate_sens_acs(masked, nl, window="tukey")
    a = cg_sense(masked, mask, num_low_frequencies=nl, maps="acs", iters=5)
    b = cg_sense(masked, mask, s, iters=5)
    assert torch.equal(a, b)
    c = cg_sense(masked, mask, s, num_low_frequencies=nl, maps="espirit", iters=5)  # sens wins
    assert torch.equal(a, c)


def test_tikhonov_solution_and_residual_stopping():
    masked, mask, nl, _ = _undersampled(slices=1)
    masked = masked.to(torch.complex128)
    s = estimate_sens_acs(masked, nl, window="tukey")
    ahy = fo.sense_adjoint(masked, s, mask)

    def rel_residual(x, lam):
        r = fo.normal(x, s, mask) + lam * x - ahy
        return float(torch.linalg.vector_norm(r) / torch.linalg.vector_norm(ahy))

    lam = 0.05  # well conditioned: CG converges to the Tikhonov solution
    assert rel_residual(cg_sense(masked, mask, s, iters=200, lam=lam, tol=1e-12), lam) < 1e-10
    # residual stopping: the iterations stop at the first one whose residual is below tol, so
    # a large iteration budget gives exactly the result of that many iterations
    tol = 1e-3
    x = cg_sense(masked, mask, s, iters=500, lam=lam, tol=tol)
    assert rel_residual(x, lam) <= tol * (1 + 1e-9)
    n = next(i for i in range(1, 500) if rel_residual(cg_sense(masked, mask, s, iters=i, lam=lam, tol=0), lam) <= tol)
    assert torch.equal(x, cg_sense(masked, mask, s, iters=n, lam=lam, tol=0))
    assert n < 100
    # lam > 0 shrinks the solution
    assert x.abs().sum() < cg_sense(masked, mask, s, iters=n, lam=0.0, tol=0).abs().sum()


def test_recon_defaults_are_the_tuned_values():
    import inspect

    from flat.recon import recon_files, reconstruct_volume

    for fn in (recon_files, reconstruct_volume):
        p = inspect.signature(fn).parameters
        assert p["cg_iters"].default == CG_ITERS and p["cg_lam"].default == CG_LAM
    assert inspect.signature(cg_sense).parameters["maps"].default == "espirit"
    assert inspect.signature(recon_files).parameters["maps"].default == "espirit"


def test_read_sens_maps(tmp_path):
    s = (torch.randn(3, 4, 8, 6, dtype=torch.complex64))
    p = tmp_path / "maps.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("sens_maps", data=s.numpy())
    got = read_sens_maps(p, (3, 4, 8, 6))
    assert got.dtype == torch.complex64 and torch.equal(got, s)
    with pytest.raises(ValueError, match="shape"):
        read_sens_maps(p, (3, 4, 8, 7))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("maps", data=s.numpy())
    with pytest.raises(ValueError, match="sens_maps"):
        read_sens_maps(tmp_path / "other.h5")
    with h5py.File(tmp_path / "real.h5", "w") as f:
        f.create_dataset("sens_maps", data=s.real.numpy())
    with pytest.raises(ValueError, match="complex"):
        read_sens_maps(tmp_path / "real.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="HDF5"):
        read_sens_maps(tmp_path / "junk.h5")


def test_bad_input():
    masked, mask, nl, _ = _undersampled(n=32, slices=1)
    with pytest.raises(ValueError, match="maps"):
        cg_sense(masked, mask, num_low_frequencies=nl, maps="bart")
    with pytest.raises(ValueError, match="sens"):
        cg_sense(masked, mask, torch.ones(1, 8, 32, 31, dtype=torch.complex64))
    with pytest.raises(ValueError, match="num_low_frequencies"):
        cg_sense(masked, mask)
    with pytest.raises(ValueError, match="lam"):
        cg_sense(masked, mask, num_low_frequencies=nl, lam=-1.0)
    with pytest.raises(ValueError, match="iters"):
        cg_sense(masked, mask, num_low_frequencies=nl, iters=-1)
    with pytest.raises(ValueError, match="iters"):
        cg_sense(masked, mask, num_low_frequencies=nl, iters=2.5)
    with pytest.raises(ValueError, match="masked_kspace"):
        cg_sense(masked.abs(), mask, num_low_frequencies=nl)


def test_cli_defaults_are_the_library_defaults():
    from flat.cli import build_parser
    from flat.recon import CG_TOL

    args = build_parser().parse_args(["recon", "-", "data", "out", "--method", "cg-sense"])
    assert (args.cg_iters, args.cg_lam, args.cg_tol, args.maps) == (CG_ITERS, CG_LAM, CG_TOL, "espirit")
    assert build_parser().parse_args(["recon", "-", "d", "o", "--tikhonov", "0.01"]).cg_lam == 0.01


def test_recon_cli_maps_file_and_acs(tmp_path, monkeypatch):
    """``flat recon --maps FILE`` uses the file's maps: the true maps of simulated data give the
    same result as passing them to cg_sense; ``--maps acs`` differs from the ESPIRiT default."""
    from flat.cli import main
    from flat.data.demo import coil_sensitivities, ismrmrd_header, write_fastmri_file
    from flat.data.masks import volume_seed

    n, coils = 32, 4
    mags = load_assets()["ax_ventricles"][:2]
    sens = coil_sensitivities(n, coils, np.random.default_rng(0))
    k, target = simulate_volume(mags, np.random.default_rng(0), matrix=n, num_coils=coils, noise_std=0.003, scale=1e-3)
    data = write_fastmri_file(tmp_path / "vol.h5", k, target, ismrmrd_header(n, 220.0, coils, 2, 3.0), {})
    maps = tmp_path / "maps.h5"
    with h5py.File(maps, "w") as f:
        f.create_dataset("sens_maps", data=np.broadcast_to(sens, (2, coils, n, n)).astype(np.complex64))

    def recon(name, *extra):
        assert main(["recon", "-", str(data), str(tmp_path / name), "--method", "cg-sense", "--center-fractions",
                     "0.1875", "--cg-iters", "10", "--no-progress", *extra]) == 0
        with h5py.File(tmp_path / name / "vol.h5") as f:
            return np.asarray(f["reconstruction"])

    got = recon("file", "--maps", str(maps))
    mf = create_mask_for_mask_type("equispaced_fraction", [0.1875], [4])
    masked, mask, _ = apply_mask(torch.from_numpy(k), mf, seed=volume_seed("vol.h5"))
    want = cg_sense(masked, mask.reshape(-1).bool(), torch.from_numpy(sens).expand(2, -1, -1, -1).to(torch.complex64),
                    iters=10, lam=CG_LAM).abs().numpy()
    assert np.allclose(got, want, rtol=0, atol=1e-6 * want.max())
    assert not np.allclose(recon("acs", "--maps", "acs"), recon("esp"), rtol=0, atol=1e-3 * want.max())
    # a maps file of the wrong shape, or a missing one: one line, exit 1, nothing written
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("sens_maps", data=np.zeros((1, coils, n, n), np.complex64))
    assert main(["recon", "-", str(data), str(tmp_path / "bad_out"), "--method", "cg-sense", "--maps",
                 str(tmp_path / "bad.h5"), "--no-progress"]) != 0
    assert main(["recon", "-", str(data), str(tmp_path / "bad_out"), "--method", "cg-sense", "--maps",
                 str(tmp_path / "nothing.h5"), "--no-progress"]) != 0
    assert not (tmp_path / "bad_out").exists() or not any((tmp_path / "bad_out").iterdir())
