"""The demo data set: fastMRI-format files from shipped Colin27 anatomy, deterministic."""
import h5py
import numpy as np
import pytest

from flat.data import demo
from flat.data.fastmri import SliceDataset, parse_ismrmrd_header, read_volume_info
from tests.fastmri_files import FASTMRI_REASON, HAS_FASTMRI, ifft2c, run_cli


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.write_demo_dataset(out, seed=0, matrix=32, num_coils=4)


def test_assets_shipped_with_notice():
    assert demo.ASSET_FILE.is_file() and demo.ASSET_FILE.stat().st_size < 4e6
    notice = (demo.ASSET_DIR / "LICENSE-colin27.txt").read_text()
    assert "Chris Rorden" in notice and "BSD" in notice and "simulated" in notice.lower()
    a = demo.load_assets()
    assert set(a) == {v[1] for v in demo.VOLUMES}
    for split in ("train", "val", "test"):
        n = sum(a[name].shape[0] for s, name, *_ in demo.VOLUMES if s == split)
        assert n == demo.demo_sizes["slices"][split]


def test_layout_and_splits(small):
    out, files = small
    assert set(files) == {"train", "val", "test"}
    assert [len(files[k]) for k in ("train", "val", "test")] == [7, 2, 2]
    for split, paths in files.items():
        for p in paths:
            assert p.parent == out / split and p.is_file()
    p = files["test"][0]
    with h5py.File(p, "r") as f:
        k = f["kspace"][()]
        t = f["reconstruction_rss"][()]
        assert k.dtype == np.complex64 and k.shape[1:] == (4, 32, 32)
        assert t.dtype == np.float32 and t.shape == (k.shape[0], 32, 32)
        assert f.attrs["max"] == pytest.approx(t.max()) and f.attrs["norm"] == pytest.approx(np.linalg.norm(t), rel=1e-5)
        assert f.attrs["acquisition"] == "AXT1" and f.attrs["patient_id"]
        assert "not raw scanner data" in f.attrs["source"]
    rss = np.sqrt((np.abs(ifft2c(k.astype(np.complex128))) ** 2).sum(1))
    assert np.abs(rss - t).max() <= 1e-5 * t.max()
    info = read_volume_info(p)
    assert info.encoding_size == (32, 32, 1) and info.recon_size == (32, 32, 1)
    assert (info.padding_left, info.padding_right) == (0, 32)
    # anatomy differs between splits (disjoint slabs)
    names = {s: {q.stem.split("_", 3)[3] for q in v} for s, v in files.items()}
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"])


def test_default_header_is_consistent():
    n = demo.demo_sizes["matrix"]
    h = parse_ismrmrd_header(demo.ismrmrd_header(n, 220.0, 8, 10, 3.0))
    assert h["encoding_size"] == (n, n, 1) and h["recon_size"] == (n, n, 1)
    assert (h["padding_left"], h["padding_right"]) == (0, n)


def test_deterministic(small, tmp_path):
    _, files = small
    again = demo.write_demo_dataset(tmp_path, seed=0, matrix=32, num_coils=4)
    for a, b in zip(files["val"], again["val"]):
        with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
            assert np.array_equal(f["kspace"][()], g["kspace"][()])
    other = demo.write_demo_dataset(tmp_path / "s1", seed=1, matrix=32, num_coils=4)
    with h5py.File(files["val"][0], "r") as f, h5py.File(other["val"][0], "r") as g:
        assert not np.array_equal(f["kspace"][()], g["kspace"][()])


def test_coil_maps_normalised():
    s = demo.coil_sensitivities(24, 8, np.random.default_rng(0))
    np.testing.assert_allclose((np.abs(s) ** 2).sum(0), 1.0, rtol=1e-12)


def test_reads_in_flat_slicedataset(small):
    out, _ = small
    ds = SliceDataset(out / "train")
    assert len(ds) == demo.demo_sizes["slices"]["train"]


@pytest.mark.skipif(not HAS_FASTMRI, reason=FASTMRI_REASON)
def test_reads_in_fastmri_slicedataset(small):
    from fastmri.data import subsample
    from fastmri.data.mri_data import SliceDataset as FastSliceDataset
    from fastmri.data.transforms import VarNetDataTransform

    out, _ = small
    for split in ("train", "val", "test"):
        ds = FastSliceDataset(out / split, "multicoil",
                              transform=VarNetDataTransform(subsample.create_mask_for_mask_type("random", [0.08], [4])))
        assert len(ds) == demo.demo_sizes["slices"][split]
        s = ds[0]
        assert s.masked_kspace.shape == (4, 32, 32, 2) and s.target.shape == (32, 32) and s.crop_size == (32, 32)


def test_cli(tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    assert run_cli(["data", "demo", f], monkeypatch) == 1
    assert "not a folder" in capsys.readouterr().err
    assert run_cli(["data", "demo", tmp_path / "d", "--matrix", "24", "--coils", "2"], monkeypatch) == 0
    assert "simulated" in capsys.readouterr().out
    assert len(list((tmp_path / "d").rglob("*.h5"))) == 11
    assert not list((tmp_path / "d").rglob(".*tmp"))
    assert run_cli(["data", "demo", tmp_path / "e", "--matrix", "999"], monkeypatch) == 1
    assert "matrix" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_varied_training_set(tmp_path, monkeypatch):
    """varied=True: the training slabs become acquisitions of varied matrix, coils, noise, contrast
    and orientation (small sizes here to keep the test fast); val/test keep the fixed acquisition."""
    import re

    import torch

    import flat.ops as fo

    monkeypatch.setattr(demo, "VARIED_MATRICES", ((24, 0.5), (40, 0.5)))  # > the 32 asset size too
    monkeypatch.setattr(demo, "VARIED_COILS", (2, 3, 5))
    monkeypatch.setattr(demo, "ASSET_SIZE", 32)
    monkeypatch.setattr(demo, "load_assets", lambda: {k: v[:, ::5, ::5][:, :32, :32] for k, v in _assets().items()})
    files = demo.write_demo_dataset(tmp_path / "a", seed=0, matrix=32, num_coils=4, varied=True)
    chunks = sum(-(-demo.load_assets()[name].shape[0] // demo.VARIED_CHUNK)
                 for s, name, *_ in demo.VOLUMES if s == "train")
    assert len(files["train"]) == chunks and len(files["val"]) == 2 and len(files["test"]) == 2
    seen = set()
    for p in files["train"]:
        with h5py.File(p, "r") as f:
            k, t, sim = f["kspace"][()], f["reconstruction_rss"][()], f.attrs["simulation"]
        n, c = (int(v) for v in re.match(r"matrix (\d+), (\d+) coils", sim).groups())
        assert k.shape[1:] == (c, n, n) and k.shape[0] <= demo.VARIED_CHUNK
        rss = fo.rss(fo.ifft2c(torch.from_numpy(k)), dim=1).numpy()
        np.testing.assert_allclose(rss, t, rtol=1e-4, atol=1e-4 * float(t.max()))
        seen.add((n, c))
    assert len({n for n, _ in seen}) == 2 and len({c for _, c in seen}) >= 2  # it does vary
    for p in files["val"] + files["test"]:
        with h5py.File(p, "r") as f:
            assert f["kspace"].shape[1:] == (4, 32, 32)
    again = demo.write_demo_dataset(tmp_path / "b", seed=0, matrix=32, num_coils=4, varied=True)
    for a, b in zip(files["train"], again["train"]):
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            np.testing.assert_array_equal(fa["kspace"][()], fb["kspace"][()])


_ASSETS = {}


def _assets():
    if not _ASSETS:
        _ASSETS.update(np.load(demo.ASSET_FILE))
    return _ASSETS
