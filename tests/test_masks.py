"""fastMRI's masks: flat.data.masks must draw exactly fastMRI's columns for the same seed."""
import numpy as np
import pytest
import torch

from flat.data import masks as fm
from tests.fastmri_files import FASTMRI_REASON, HAS_FASTMRI


# ---- an independent transcription of fastmri/data/subsample.py (v0.3.0), kept deliberately literal
def ref_mask(kind, cfs, accs, shape, seed=None, offset=None, rng=None):
    rng = rng if rng is not None else np.random.RandomState()
    state = rng.get_state()
    if seed is not None:
        rng.seed(seed)
    num_cols = shape[-2]
    choice = rng.randint(len(cfs))
    cf, acc = cfs[choice], accs[choice]
    nlow = round(num_cols * cf)
    center = np.zeros(num_cols, dtype=np.float32)
    pad = (num_cols - nlow + 1) // 2
    center[pad : pad + nlow] = 1
    if kind == "random":
        prob = (num_cols / acc - nlow) / (num_cols - nlow)
        accel = rng.uniform(size=num_cols) < prob
    elif kind == "equispaced":
        if offset is None:
            offset = rng.randint(0, high=round(acc))
        accel = np.zeros(num_cols, dtype=np.float32)
        accel[offset::acc] = 1
    else:
        adj = (acc * (nlow - num_cols)) / (nlow * acc - num_cols)
        if offset is None:
            offset = rng.randint(0, high=round(adj))
        accel = np.zeros(num_cols)
        accel[np.around(np.arange(offset, num_cols - 1, adj)).astype(np.uint)] = 1.0
    if seed is not None:
        rng.set_state(state)
    m = np.maximum(center, accel.astype(np.float32))
    shp = [1] * len(shape)
    shp[-2] = num_cols
    return m.reshape(shp), nlow


CASES = [
    ("random", [0.08], [4]), ("random", [0.08, 0.04], [4, 8]),
    ("equispaced", [0.08], [4]), ("equispaced", [0.04], [8]),
    ("equispaced_fraction", [0.08], [4]), ("equispaced_fraction", [0.08, 0.04], [4, 8]),
]
SHAPES = [(1, 640, 368, 2), (15, 320, 320, 2), (4, 24, 21, 2), (1, 16, 97, 2)]
SEEDS = [0, 123, tuple(map(ord, "file_brain_AXT2_200_2000019.h5")), tuple(map(ord, "x.h5"))]


@pytest.mark.parametrize("kind,cfs,accs", CASES)
def test_masks_match_transcription(kind, cfs, accs):
    f = fm.create_mask_for_mask_type(kind, cfs, accs)
    for shape in SHAPES:
        for seed in SEEDS:
            got, nlow = f(shape, seed=seed)
            want, wlow = ref_mask(kind, cfs, accs, shape, seed=seed)
            assert nlow == wlow
            assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{kind} {shape} {seed}")


@pytest.mark.parametrize("kind", ["equispaced", "equispaced_fraction"])
def test_explicit_offset(kind):
    f = fm.create_mask_for_mask_type(kind, [0.08], [4])
    got, _ = f((1, 32, 100, 2), offset=2, seed=5)
    want, _ = ref_mask(kind, [0.08], [4], (1, 32, 100, 2), seed=5, offset=2)
    np.testing.assert_array_equal(got.numpy(), want)


def test_unseeded_stream_and_state_restore():
    # A seeded call must not disturb the private unseeded stream (fastMRI's temp_seed).
    a = fm.RandomMaskFunc([0.08], [4], seed=7)
    b = fm.RandomMaskFunc([0.08], [4], seed=7)
    m1, _ = a((1, 8, 64, 2))
    a((1, 8, 64, 2), seed=(1, 2, 3))
    m2, _ = a((1, 8, 64, 2))
    n1, _ = b((1, 8, 64, 2))
    n2, _ = b((1, 8, 64, 2))
    assert torch.equal(m1, n1) and torch.equal(m2, n2)
    rng = np.random.RandomState(7)
    r1, _ = ref_mask("random", [0.08], [4], (1, 8, 64, 2), rng=rng)
    np.testing.assert_array_equal(m1.numpy(), r1)


def test_centre_block_position_and_counts():
    # Odd centre width in an even number of columns: fastMRI puts the extra column on the right.
    f = fm.create_mask_for_mask_type("equispaced_fraction", [0.08], [4])
    m, nlow = f((1, 10, 320, 2), seed=0)
    m = m.reshape(-1)
    assert nlow == 26
    pad = (320 - 26 + 1) // 2
    assert m[pad : pad + 26].all()
    assert abs(int(m.sum()) - 80) <= 2  # equispaced_fraction hits N / acceleration


@pytest.mark.skipif(not HAS_FASTMRI, reason=FASTMRI_REASON)
@pytest.mark.parametrize("kind,cfs,accs", CASES)
def test_masks_match_fastmri(kind, cfs, accs):
    from fastmri.data import subsample

    ours = fm.create_mask_for_mask_type(kind, cfs, accs)
    theirs = subsample.create_mask_for_mask_type(kind, cfs, accs)
    for shape in SHAPES:
        for seed in SEEDS:
            a, na = ours(shape, seed=seed)
            b, nb = theirs(shape, seed=seed)
            assert na == nb and torch.equal(a, b), (kind, shape, seed)


def test_apply_mask_layouts_padding_and_positive_zeros():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(3, 8, 40, dtype=torch.complex64, generator=g)
    f = fm.create_mask_for_mask_type("random", [0.1], [4])
    seed = fm.volume_seed("vol.h5")
    mc, maskc, nl = fm.apply_mask(k, f, seed=seed, padding=(3, 36))
    mr, maskr, nl2 = fm.apply_mask(torch.view_as_real(k), f, seed=seed, padding=(3, 36))
    assert nl == nl2 and maskr.shape == (1, 1, 40, 1) and maskc.shape == (1, 1, 40)
    assert torch.equal(maskc.reshape(-1), maskr.reshape(-1))
    assert torch.equal(torch.view_as_real(mc), mr)
    col = maskc.reshape(-1)
    assert not col[:3].any() and not col[36:].any()
    # masked zeros are +0.0, never -0.0 (fastMRI re-released a test set over this)
    zeros = torch.view_as_real(mc)[..., ~col.bool(), :]
    assert (zeros == 0).all() and not torch.signbit(zeros).any()
    want, _ = ref_mask("random", [0.1], [4], (1, 8, 40, 2), seed=seed)
    want = want.reshape(-1).copy()
    want[:3] = 0
    want[36:] = 0
    np.testing.assert_array_equal(col.numpy(), want)


@pytest.mark.skipif(not HAS_FASTMRI, reason=FASTMRI_REASON)
def test_apply_mask_matches_fastmri():
    from fastmri.data import subsample, transforms

    k = torch.randn(4, 16, 33, 2)
    for kind in ("random", "equispaced_fraction"):
        ours = fm.create_mask_for_mask_type(kind, [0.08], [4])
        theirs = subsample.create_mask_for_mask_type(kind, [0.08], [4])
        a = fm.apply_mask(k, ours, seed=(1, 2), padding=(2, 30))
        b = transforms.apply_mask(k, theirs, seed=(1, 2), padding=(2, 30))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_num_low_frequencies_from_mask():
    for W, nlow in [(320, 26), (368, 30), (21, 3)]:
        m = np.zeros(W, bool)
        pad = (W - nlow + 1) // 2
        m[pad : pad + nlow] = True
        m[::5] = m[::5] | False
        got = fm.num_low_frequencies_from_mask(m)
        assert nlow - 1 <= got <= nlow  # symmetric estimate, as fastMRI's VarNet


def test_bad_arguments():
    with pytest.raises(ValueError, match="not supported"):
        fm.create_mask_for_mask_type("gaussian", [0.08], [4])
    with pytest.raises(ValueError, match="same length"):
        fm.create_mask_for_mask_type("random", [0.08, 0.04], [4])
    with pytest.raises(ValueError, match="3 or more"):
        fm.RandomMaskFunc([0.08], [4])((10, 2))
