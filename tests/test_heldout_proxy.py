"""scripts/heldout_proxy.py: the non-brain held-out check set is valid fastMRI data, simulated like
the demo, with the RSS of the fully sampled coil images as its target, and deterministic."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def proxy():
    spec = importlib.util.spec_from_file_location("heldout_proxy", ROOT / "scripts" / "heldout_proxy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("large", [False, True])
def test_files_are_fastmri_volumes(proxy, tmp_path, large):
    import flat.ops as fo
    from flat.data.fastmri import read_volume

    n, coils = 32, 4
    paths = proxy.write_set(tmp_path, n, coils, large=large)
    assert len(paths) == len(proxy.volumes(n, large))
    for p in paths:
        kspace, mask, target, info = read_volume(p)
        assert mask is None and kspace.shape[1:] == (coils, n, n) and target.shape[1:] == (n, n)
        assert kspace.dtype == np.complex64 and np.isfinite(kspace).all()
        # the target is the RSS of the fully sampled coil images (fastMRI's convention)
        rss = fo.rss(fo.ifft2c(torch.from_numpy(kspace)), dim=1).numpy()
        np.testing.assert_allclose(rss, target, rtol=1e-4, atol=1e-4 * float(target.max()))
    # deterministic: the same call writes the same k-space
    again = proxy.write_set(tmp_path / "again", n, coils, large=large)
    for a, b in zip(paths, again):
        np.testing.assert_array_equal(read_volume(a)[0], read_volume(b)[0])
