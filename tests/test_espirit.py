"""ESPIRiT maps (flat/espirit.py): against the true maps of simulated data, against sigpy's
EspiritCalib, normalisation, precision, batching, eigen-solvers and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flat.data.demo import coil_sensitivities, load_assets, simulate_volume
from flat.coils import estimate_maps, network_maps
from flat.espirit import espirit_maps


def _volume(n=64, coils=8, slices=2, seed=3, name="ax_ventricles"):
    """Demo-style k-space (S, C, n, n), its true maps (C, n, n) and the RSS target (S, n, n)."""
    mags = load_assets()[name][:slices]
    sens = coil_sensitivities(n, coils, np.random.default_rng(seed))  # the draw simulate_volume makes first
    k, target = simulate_volume(mags, np.random.default_rng(seed), matrix=n, num_coils=coils,
                                noise_std=0.003, scale=1e-3)
    return torch.from_numpy(k), torch.from_numpy(sens), torch.from_numpy(target)


def _object(target):
    return target > 0.1 * target.amax(dim=(-2, -1), keepdim=True)


def _inner(a, b):  # per-pixel |<a, b>| over coils: 1 for equal unit vectors up to a phase
    return (a.conj() * b.to(a.dtype)).sum(-3).abs()


@pytest.mark.parametrize("num_low", [16, 8])
def test_matches_true_maps_inside_the_object(num_low):
    k, true, target = _volume()
    S = espirit_maps(k, num_low)
    obj = _object(target)
    support = S.abs().pow(2).sum(1) > 0
    # the support must hold (almost) the whole object: maps that crop signal lose it in any recon
    assert (support & obj).sum() >= 0.98 * obj.sum()
    inner = _inner(S, true[None])[support & obj]
    # true and estimated maps are unit vectors per pixel; 0.99 = an angle under 8 degrees.
    # Noise and the 8-column block (at 64 columns) keep a few edge pixels just under 0.995.
    assert inner.min() >= 0.99, f"min |<S, S_true>| = {inner.min():.4f}"


def test_normalised_inside_support_zero_outside_and_phase_reference():
    k, _, _ = _volume()
    S = espirit_maps(k, 16, ref_coil=2)
    ss = S.abs().pow(2).sum(1)
    support = ss > 0
    assert support.float().mean() > 0.3
    assert torch.allclose(ss[support], torch.ones(()), atol=1e-5)  # unit eigenvectors (complex64)
    assert (S[:, :, ~support[0]] == 0).all() if S.shape[0] == 1 else (S.permute(1, 0, 2, 3)[:, ~support] == 0).all()
    ref = S[:, 2][support]
    assert ref.imag.abs().max() <= 1e-5 * ref.abs().max()  # the reference coil is real, >= 0
    assert (ref.real >= 0).all()


def test_complex128_batched_and_power_iteration_agree():
    k, _, target = _volume()
    S64, lam = espirit_maps(k, 16, return_eigenvalues=True)
    S128 = espirit_maps(k.to(torch.complex128), 16)
    assert S128.dtype == torch.complex128 and S64.dtype == torch.complex64
    obj = _object(target) & (S64.abs().sum(1) > 0) & (S128.abs().sum(1) > 0)
    # single vs double precision: same eigenvector to ~1e-6 where the eigenvalue is well separated
    assert (_inner(S64, S128)[obj] >= 1 - 1e-4).all()
    # one slice at a time, with a per-slice width list, gives the same maps as the batch
    one = torch.cat([espirit_maps(k[i:i + 1], [16]) for i in range(k.shape[0])])
    assert torch.allclose(one, S64, atol=1e-5)
    # power iterations converge to the same eigenvector inside the object
    Sp = espirit_maps(k, 16, method="power", power_iters=100)
    assert (_inner(Sp, S64)[obj] >= 0.999).all()
    assert lam.shape == target.shape and lam[obj].min() > 0.9


def test_matches_sigpy_espiritcalib():
    # sigpy is a test dependency (setup.py [test]); it crops a square calibration region, so both
    # get a fully sampled 24 x 24 centre and the same kernel, threshold and crop.
    mr = pytest.importorskip("sigpy.mri")
    k, _, target = _volume(n=64, slices=1)
    k = k.to(torch.complex128)
    ref = mr.app.EspiritCalib(k[0].numpy(), calib_width=24, kernel_width=6, thresh=0.02, crop=0.95,
                              max_iter=100, show_pbar=False).run()
    ref = torch.from_numpy(np.asarray(ref))[None]
    S = espirit_maps(k, 24, calib_rows=24, kernel=6, threshold=0.02, crop=0.95)
    ours, theirs = S.abs().sum(1) > 0, ref.abs().sum(1) > 0
    assert (ours ^ theirs).float().mean() <= 0.005  # the same eigenvalue crop
    # inside the object the eigenvalue gap is large and sigpy's 100 power iterations have
    # converged; outside it the two largest eigenvalues can nearly coincide (no signal to
    # separate them), where a power iteration has not converged: compare where there is signal.
    where = ours & theirs & _object(target)
    inner = _inner(S, ref)[where]
    assert where.sum() > 500
    assert inner.min() >= 0.99, f"min |<S_flat, S_sigpy>| = {inner.min():.4f}"


def test_narrow_acs_block_still_covers_the_object():
    # 5 columns (fastMRI's 8x at 128 columns): the kernel is narrowed to keep 3 patch positions
    k, true, target = _volume(n=128, slices=1)
    S = espirit_maps(k, 5, crop=0.8)
    obj = _object(target)
    support = S.abs().sum(1) > 0
    assert (support & obj).sum() >= 0.97 * obj.sum()
    assert torch.quantile(_inner(S, true[None])[support & obj], 0.01) >= 0.95


def test_bad_input():
    k, _, _ = _volume(n=32, slices=1)
    with pytest.raises(TypeError, match="masked_kspace"):
        espirit_maps(k.abs(), 8)
    with pytest.raises(ValueError, match="masked_kspace"):
        espirit_maps(k[0], 8)
    with pytest.raises(ValueError, match="num_low_frequencies"):
        espirit_maps(k, 40)
    with pytest.raises(ValueError, match="num_low_frequencies"):
        espirit_maps(k, [8, 8])
    with pytest.raises(ValueError, match="crop"):
        espirit_maps(k, 8, crop=1.5)
    with pytest.raises(ValueError, match="method"):
        espirit_maps(k, 8, method="svd")
    with pytest.raises(ValueError, match="ref_coil"):
        espirit_maps(k, 8, ref_coil=99)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    k, _, target = _volume(slices=1)
    cpu = espirit_maps(k, 16)
    gpu = espirit_maps(k.cuda(), 16).cpu()
    where = _object(target) & (cpu.abs().sum(1) > 0)
    assert (_inner(gpu, cpu)[where] >= 1 - 1e-4).all()


def test_map_cache_computes_once_per_slice_and_flips():
    from flat.coils import MapCache

    k, _, _ = _volume(n=32, coils=4, slices=2)
    cache = MapCache()
    a = cache.get("vol.h5", 1, k[1], 8)
    assert torch.equal(a, network_maps(k[1:2], 8)[0])
    assert cache.get("vol.h5", 1, torch.zeros_like(k[1]), 8) is a  # cached: the k-space is not read again
    assert torch.equal(cache.get("vol.h5", 1, k[1], 8, flip_dims=(-1,)), torch.flip(a, (-1,)))
    assert len(cache.files["vol.h5"]) == 1
    with pytest.raises(ValueError, match="maps"):
        MapCache("sigpy")


def test_model_sens_espirit_uses_espirit_maps():
    import dataclasses

    from flat.config import get_preset
    from flat.model import FlatModel

    k, _, _ = _volume(n=32, coils=4, slices=1)
    cfg = dataclasses.replace(get_preset("tiny").model, sens="espirit")
    model = FlatModel(cfg).eval()
    mask = torch.zeros(32, dtype=torch.bool)
    mask[::2] = True
    mask[12:20] = True
    y = k * mask
    with torch.no_grad():
        out = model(y, mask, 8)
    # the model sees k-space divided by a positive scale; its maps do not depend on it
    # (up to complex64 rounding: measured max difference 1.0e-4 of unit-norm maps)
    want = network_maps(y, 8)
    assert torch.equal(out.sens.abs().sum(1) > 0, want.abs().sum(1) > 0)
    assert torch.allclose(out.sens, want, atol=1e-3)


def test_network_maps_are_espirit_maps_that_leave_nearly_real_images():
    """network_maps = ESPIRiT maps times a per-pixel phase (so SENSE is unchanged) chosen so the
    coil-combined image is nearly real and positive, as with ACS maps (docs/classical.md)."""
    import flat.ops as fo

    k, _, target = _volume(n=64, coils=8, slices=2)
    plain, rotated = espirit_maps(k, 16), network_maps(k, 16)
    inside = plain.abs().sum(1) > 0
    assert torch.equal(inside, rotated.abs().sum(1) > 0)
    assert (_inner(rotated, plain)[inside] >= 1 - 1e-5).all()  # |<S', S>| = 1: only a phase differs
    obj = _object(target) & inside
    for maps, near_real in ((plain, False), (rotated, True)):
        x = fo.sens_reduce(k, maps)[obj]
        frac = (x.real.clamp_min(0) / x.abs()).median().item()  # cos of the phase, 1 = real positive
        assert (frac > 0.99) == near_real, frac
    acs = network_maps(k, 16, "acs")
    assert torch.equal(acs, estimate_maps(k, 16, "acs"))  # ACS maps are left as they are
