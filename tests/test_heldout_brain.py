"""flat/data/heldout.py: held-out brain volumes are valid fastMRI data from slabs the demo never
uses, with the RSS of the fully sampled coil images as target, deterministic, at any size."""
import struct

import numpy as np
import pytest
import torch

from flat.data.demo import VOLUMES
from flat.data.heldout import BRAIN_SLABS, write_brain_set


def _nifti(path, vol):
    """A minimal little-endian NIfTI-1 file of a uint8 volume indexed [z, y, x] (as read_nifti returns)."""
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, vol.shape[2], vol.shape[1], vol.shape[0], 1, 1, 1, 1)
    struct.pack_into("<h", hdr, 70, 2)  # uint8
    struct.pack_into("<f", hdr, 108, 352.0)  # data offset
    struct.pack_into("<2f", hdr, 112, 1.0, 0.0)
    path.write_bytes(bytes(hdr) + np.ascontiguousarray(vol, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(181), np.arange(217), np.arange(181), indexing="ij")
    blob = ((z - 90) ** 2 / 80**2 + (y - 108) ** 2 / 95**2 + (x - 90) ** 2 / 70**2) < 1
    vol = blob * (120 + 60 * rng.random(blob.shape))
    return _nifti(tmp_path_factory.mktemp("atlas") / "atlas.nii", vol)


def test_slabs_are_disjoint_from_the_demo_volumes():
    used = {(o, i) for _, _, o, a, b, s in VOLUMES for i in range(a, b, s)}
    for name, slabs in BRAIN_SLABS.items():
        for _, orient, a, b, s in slabs:
            assert not {(orient, i) for i in range(a, b, s)} & used, name
    heldout = {(o, i) for _, o, a, b, s in BRAIN_SLABS["heldout"] for i in range(a, b, s)}
    confirm = {(o, i) for _, o, a, b, s in BRAIN_SLABS["confirm"] for i in range(a, b, s)}
    assert not heldout & confirm


@pytest.mark.parametrize("matrix, coils", [(32, 3), (176, 2)])  # below and above the asset size
def test_files_are_fastmri_volumes(atlas, tmp_path, matrix, coils):
    import flat.ops as fo
    from flat.data.fastmri import read_volume

    slabs = BRAIN_SLABS["confirm"][:1]
    paths = write_brain_set(atlas, tmp_path, slabs, sizes=[(matrix, coils)], seed=3)
    assert [p.name for p in paths] == [f"brain_{slabs[0][0]}_{matrix}c{coils}.h5"]
    kspace, mask, target, info = read_volume(paths[0])
    n_slices = len(range(*slabs[0][2:]))
    assert mask is None and kspace.shape == (n_slices, coils, matrix, matrix) and target.shape[1:] == (matrix, matrix)
    assert kspace.dtype == np.complex64 and np.isfinite(kspace).all() and target.max() > 0
    rss = fo.rss(fo.ifft2c(torch.from_numpy(kspace)), dim=1).numpy()
    np.testing.assert_allclose(rss, target, rtol=1e-4, atol=1e-4 * float(target.max()))
    again = write_brain_set(atlas, tmp_path / "again", slabs, sizes=[(matrix, coils)], seed=3)
    np.testing.assert_array_equal(read_volume(again[0])[0], kspace)
    other = write_brain_set(atlas, tmp_path / "other", slabs, sizes=[(matrix, coils)], seed=4)
    assert not np.array_equal(read_volume(other[0])[0], kspace)  # the seed draws coils, phase, noise


def test_bad_sizes(atlas, tmp_path):
    with pytest.raises(ValueError, match="sizes"):
        write_brain_set(atlas, tmp_path, "heldout", sizes=[(8, 2)])
