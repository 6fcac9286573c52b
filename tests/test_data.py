"""fastMRI file reader, header parsing, SliceDataset and the per-slice transform."""
import numpy as np
import pytest
import torch

from flat.data.fastmri import DataError, SliceDataset, parse_ismrmrd_header, read_volume_info
from flat.data.masks import create_mask_for_mask_type, volume_seed
from flat.data.transforms import UnrolledDataTransform, UnrolledSample, center_crop
from tests.fastmri_files import FASTMRI_REASON, HAS_FASTMRI, header_xml, make_fastmri_file, truncate


@pytest.fixture
def folder(tmp_path):
    make_fastmri_file(tmp_path / "b_vol.h5", S=3, seed=1)
    make_fastmri_file(tmp_path / "a_vol.h5", S=2, seed=2)
    return tmp_path


def test_header_padding_and_sizes():
    h = parse_ismrmrd_header(header_xml((640, 372, 1), (320, 320, 1), center=176, maximum=351))
    assert h["encoding_size"] == (640, 372, 1) and h["recon_size"] == (320, 320, 1)
    # fastMRI: padding_left = enc_y // 2 - center, padding_right = padding_left + maximum + 1
    assert h["padding_left"] == 10 and h["padding_right"] == 362


def test_volume_info_and_dataset(folder):
    info = read_volume_info(folder / "b_vol.h5")
    assert info.kspace_shape == (3, 4, 24, 20) and info.recon_size == (16, 16, 1)
    assert (info.padding_left, info.padding_right) == (2, 18)
    assert info.attrs["acquisition"] == "AXT1" and info.attrs["max"] > 0 and "norm" in info.attrs
    ds = SliceDataset(folder)
    assert len(ds) == 5 and isinstance(ds, torch.utils.data.Dataset)
    assert [v.fname for v in ds.volumes] == ["a_vol.h5", "b_vol.h5"]
    assert ds.volume_slices() == {"a_vol.h5": range(0, 2), "b_vol.h5": range(2, 5)}
    kspace, mask, target, attrs, fname, sl = ds[3]
    assert kspace.shape == (4, 24, 20) and kspace.dtype == np.complex64 and mask is None
    assert target.shape == (16, 16) and fname == "b_vol.h5" and sl == 1
    assert attrs["padding_left"] == 2 and attrs["recon_size"] == (16, 16, 1)


def test_transform_sample_and_determinism(folder):
    mf = create_mask_for_mask_type("random", [0.2], [4])
    ds = SliceDataset(folder, UnrolledDataTransform(mf))
    s = ds[2]
    assert isinstance(s, UnrolledSample)
    assert s.masked_kspace.dtype == torch.complex64 and s.masked_kspace.shape == (4, 24, 20)
    assert s.mask.dtype == torch.bool and s.mask.shape == (20,)
    assert not s.mask[:2].any() and not s.mask[18:].any()  # header padding forced out
    assert s.target.dtype == torch.float32 and s.target.shape == (16, 16)
    assert s.crop_size == (16, 16) and s.fname == "b_vol.h5" and s.slice_num == 0
    assert s.max_value == pytest.approx(read_volume_info(folder / "b_vol.h5").attrs["max"])
    assert s.num_low_frequencies == 4
    # same mask for every slice of the volume, and on every call
    for i in (3, 4):
        assert torch.equal(ds[i].mask, s.mask)
    assert torch.equal(ds[2].masked_kspace, s.masked_kspace)
    unsampled = torch.view_as_real(s.masked_kspace)[:, :, ~s.mask]
    assert (unsampled == 0).all() and not torch.signbit(unsampled).any()
    # the seed is fastMRI's tuple(map(ord, fname))
    m, _ = mf((1, 24, 20, 2), seed=volume_seed("b_vol.h5"))
    want = m.reshape(-1).bool()
    want[:2] = False
    want[18:] = False
    assert torch.equal(s.mask, want)


def test_batches_with_default_collate(folder):
    mf = create_mask_for_mask_type("equispaced_fraction", [0.2], [4])
    dl = torch.utils.data.DataLoader(SliceDataset(folder, UnrolledDataTransform(mf)), batch_size=2)
    b = next(iter(dl))
    assert b.masked_kspace.shape == (2, 4, 24, 20) and b.mask.shape == (2, 20)


def test_test_split_file_uses_its_mask(tmp_path):
    m = np.zeros(20, bool)
    m[8:12] = True
    m[2::4] = True
    make_fastmri_file(tmp_path / "t.h5", mask=m)
    info = read_volume_info(tmp_path / "t.h5")
    assert info.has_mask and not info.has_target
    s = SliceDataset(tmp_path, UnrolledDataTransform(create_mask_for_mask_type("random", [0.08], [8])))[0]
    want = torch.from_numpy(m)
    want[:2] = False
    want[18:] = False
    assert torch.equal(s.mask, want)
    assert s.num_low_frequencies == 4 and s.max_value == 0.0 and s.target.numel() == 0
    assert s.crop_size == (16, 16)  # header recon size when there is no target


@pytest.mark.skipif(not HAS_FASTMRI, reason=FASTMRI_REASON)
def test_matches_fastmri_slicedataset_and_varnet_transform(folder):
    import fastmri.data.mri_data as mri
    from fastmri.data import subsample
    from fastmri.data.transforms import VarNetDataTransform

    ours = SliceDataset(folder, UnrolledDataTransform(create_mask_for_mask_type("random", [0.2], [4])))
    theirs = mri.SliceDataset(folder, "multicoil",
                              transform=VarNetDataTransform(subsample.create_mask_for_mask_type("random", [0.2], [4])))
    assert len(ours) == len(theirs)
    for i in range(len(ours)):
        a, b = ours[i], theirs[i]
        assert torch.equal(torch.view_as_real(a.masked_kspace), b.masked_kspace)
        assert torch.equal(a.mask, b.mask.reshape(-1))
        assert a.num_low_frequencies == b.num_low_frequencies and a.max_value == b.max_value
        assert torch.equal(a.target, b.target) and a.crop_size == tuple(b.crop_size)
        assert (a.fname, a.slice_num) == (b.fname, b.slice_num)
    meta = theirs.raw_samples[0].metadata
    info = ours.volumes[0]
    assert (meta["padding_left"], meta["padding_right"]) == (info.padding_left, info.padding_right)
    assert meta["encoding_size"] == info.encoding_size and meta["recon_size"] == info.recon_size


def test_center_crop_matches_fastmri_convention():
    x = torch.arange(7 * 6).reshape(7, 6)
    c = center_crop(x, (3, 4))
    assert torch.equal(c, x[2:5, 1:5])
    with pytest.raises(ValueError, match="centre-crop"):
        center_crop(x, (8, 2))


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        SliceDataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no .h5 files"):
        SliceDataset(tmp_path)
    p = truncate(make_fastmri_file(tmp_path / "trunc.h5"))
    with pytest.raises(DataError, match="trunc.h5.*(truncated|corrupt)"):
        read_volume_info(p)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="junk.h5"):
        read_volume_info(tmp_path / "junk.h5")
    import h5py

    p = make_fastmri_file(tmp_path / "nok.h5")
    with h5py.File(p, "a") as f:
        del f["kspace"]
    with pytest.raises(DataError, match="missing dataset 'kspace'"):
        read_volume_info(p)
    p = make_fastmri_file(tmp_path / "nohdr.h5")
    with h5py.File(p, "a") as f:
        del f["ismrmrd_header"]
    with pytest.raises(DataError, match="missing dataset 'ismrmrd_header'"):
        read_volume_info(p)
    p = make_fastmri_file(tmp_path / "badhdr.h5")
    with h5py.File(p, "a") as f:
        del f["ismrmrd_header"]
        f.create_dataset("ismrmrd_header", data=np.bytes_(b"<ismrmrdHeader"))
    with pytest.raises(DataError, match="not valid XML"):
        read_volume_info(p)
    p = make_fastmri_file(tmp_path / "notgt.h5")
    with h5py.File(p, "a") as f:
        del f["reconstruction_rss"]
    with pytest.raises(DataError, match="reconstruction_rss"):
        read_volume_info(p, require_target=True)
