"""Reading fastMRI multicoil HDF5 files as fastMRI ships them.

A file holds ``kspace`` complex64 ``(S, C, H, W)`` (H readout, W phase encode), usually
``reconstruction_rss`` float32 ``(S, h, w)`` (absent in the test split), ``ismrmrd_header`` (XML) and
attrs ``max``, ``norm``, ``acquisition``, ``patient_id``. Test-split files are already undersampled
and carry a column ``mask`` dataset ``(W,)``.

From the header we take, as fastMRI's ``SliceDataset`` does: the encoded and recon matrix sizes
and ``kspace_encoding_step_1`` centre/maximum, which give the zero-padded phase-encode columns
``[0, padding_left)`` and ``[padding_right, W)`` that were never acquired; those are forced out of
every mask.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as etree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from torch.utils.data import Dataset

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
H5_SUFFIXES = (".h5", ".hdf5")


class DataError(ValueError):
    """A fastMRI file is missing, unreadable or not in the expected layout."""


@dataclass
class VolumeInfo:
    """Per-volume metadata (fastMRI's ``SliceDataset`` metadata plus the file attrs)."""

    path: Path
    num_slices: int
    kspace_shape: tuple            # (S, C, H, W)
    encoding_size: tuple           # (x, y, z) of encodedSpace/matrixSize
    recon_size: tuple              # (x, y, z) of reconSpace/matrixSize
    padding_left: int
    padding_right: int
    has_target: bool
    has_mask: bool
    attrs: dict = field(default_factory=dict)
    target_shape: Optional[tuple] = None   # (S, h, w) of reconstruction_rss, if present

    @property
    def fname(self) -> str:
        return self.path.name

    def metadata(self) -> dict:
        """fastMRI's per-sample ``attrs`` dict (file attrs + header-derived keys)."""
        return {
            **self.attrs,
            "padding_left": self.padding_left,
            "padding_right": self.padding_right,
            "encoding_size": self.encoding_size,
            "recon_size": self.recon_size,
        }


def _et_query(root: etree.Element, qlist: Sequence[str], what: str) -> str:
    ns = {"ismrmrd_namespace": ISMRMRD_NS}
    s = "." + "".join(f"//ismrmrd_namespace:{el}" for el in qlist)
    value = root.find(s, ns)
    if value is None or value.text is None:
        raise DataError(f"{what}: ismrmrd_header lacks {'/'.join(qlist)}")
    return value.text


def parse_ismrmrd_header(xml: Union[bytes, str], what: str = "file") -> dict:
    """Encoded/recon matrix sizes and phase-encode limits from an ISMRMRD header, fastMRI style.

    Returns ``{"encoding_size": (x, y, z), "recon_size": (x, y, z), "enc_limits_center": int,
    "enc_limits_max": int (maximum + 1), "padding_left": int, "padding_right": int}``.
    """
    if isinstance(xml, np.ndarray):
        xml = xml.item() if xml.shape == () else bytes(xml)
    try:
        root = etree.fromstring(xml)
    except etree.ParseError as exc:
        raise DataError(f"{what}: ismrmrd_header is not valid XML ({exc})") from None
    try:
        enc = ["encoding", "encodedSpace", "matrixSize"]
        rec = ["encoding", "reconSpace", "matrixSize"]
        encoding_size = tuple(int(_et_query(root, enc + [a], what)) for a in "xyz")
        recon_size = tuple(int(_et_query(root, rec + [a], what)) for a in "xyz")
        lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
        center = int(_et_query(root, lims + ["center"], what))
        maximum = int(_et_query(root, lims + ["maximum"], what)) + 1
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{what}: ismrmrd_header has a non-integer size ({exc})") from None
    padding_left = encoding_size[1] // 2 - center
    return {
        "encoding_size": encoding_size,
        "recon_size": recon_size,
        "enc_limits_center": center,
        "enc_limits_max": maximum,
        "padding_left": padding_left,
        "padding_right": padding_left + maximum,
    }


def check_header(hdr: dict, kspace_shape, path) -> None:
    """Refuse a header that disagrees with ``kspace`` (S, C, H, W): matrix sizes must be >= 1 and
    the encoded matrix must be H x W; the phase-encode centre must lie inside the width and not
    beyond the last acquired line -- else the padding columns derived from them are nonsense."""
    H, W = int(kspace_shape[-2]), int(kspace_shape[-1])
    for key, space in (("encoding_size", "encodedSpace"), ("recon_size", "reconSpace")):
        if min(hdr[key]) < 1:
            raise DataError(f"{path}: ismrmrd_header {space}/matrixSize (x, y, z) = {hdr[key]}; "
                            "expected sizes >= 1")
    if tuple(hdr["encoding_size"][:2]) != (H, W):
        raise DataError(f"{path}: ismrmrd_header encodedSpace/matrixSize (x, y) = "
                        f"{tuple(hdr['encoding_size'][:2])} does not match 'kspace' (H, W) = ({H}, {W})")
    center, last = hdr["enc_limits_center"], hdr["enc_limits_max"] - 1
    if not 0 <= center < W or last < center:
        raise DataError(f"{path}: ismrmrd_header kspace_encoding_step_1 center = {center}, maximum = "
                        f"{last}; expected 0 <= center < W = {W} (the width of 'kspace') and "
                        "center <= maximum")


def check_mask(mask, path) -> None:
    """Refuse a column mask that does not sample the k-space centre (column ``W // 2``): every
    reconstruction needs the fully sampled centre (and an all-zero mask gives an empty image)."""
    m = np.asarray(mask).reshape(-1)
    if nonfinite_count(m):
        raise DataError(f"{path}: 'mask' holds non-finite values; expected 0/1 per column")
    m = m.astype(bool)
    if not m[m.shape[0] // 2]:
        raise DataError(f"{path}: 'mask' does not sample the k-space centre (column {m.shape[0] // 2} "
                        f"is 0; {int(m.sum())} of {m.shape[0]} columns sampled); expected a mask "
                        "with the fully sampled centre")


def nonfinite_count(a) -> int:
    """Number of NaN / Inf entries of an array (complex: either part)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.inexact):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def check_finite(a, path, name: str, slice_num: int) -> None:
    """Refuse NaN / Inf in one slice of dataset ``name``, naming the file and the slice."""
    n = nonfinite_count(a)
    if n:
        raise DataError(f"{path}: slice {slice_num} of '{name}' holds {n} non-finite value(s) (NaN/Inf); "
                        "expected finite data")


def nonfinite_slices(path: Union[str, os.PathLike], name: str = "kspace") -> dict[int, int]:
    """``{slice: count}`` of the NaN / Inf entries of dataset ``name`` of a file, read slice by
    slice (memory of one slice); empty when all finite."""
    path = Path(path)
    out = {}
    with _open(path) as hf:
        if name not in hf:
            raise DataError(f"{path}: missing dataset '{name}'")
        for s in range(hf[name].shape[0]):
            n = nonfinite_count(_read(hf, name, s, path))
            if n:
                out[s] = n
    return out


def _open(path: Path):
    import h5py

    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from None


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_volume_info(path: Union[str, os.PathLike], *, require_target: bool = False) -> VolumeInfo:
    """Open a fastMRI file, check its layout and return its metadata (no k-space is read)."""
    path = Path(path)
    with _open(path) as hf:
        if "kspace" not in hf:
            raise DataError(f"{path}: missing dataset 'kspace'")
        ks = hf["kspace"]
        if ks.ndim != 4:
            raise DataError(
                f"{path}: 'kspace' must be multicoil (S, C, H, W), got shape {ks.shape}"
            )
        if not np.issubdtype(ks.dtype, np.complexfloating):
            raise DataError(f"{path}: 'kspace' must be complex, got dtype {ks.dtype}")
        if "ismrmrd_header" not in hf:
            raise DataError(f"{path}: missing dataset 'ismrmrd_header'")
        if min(ks.shape) < 1:
            raise DataError(f"{path}: 'kspace' has shape {ks.shape}; expected S, C, H, W >= 1 "
                            "(slices, coils, readout rows, phase-encode columns)")
        hdr = parse_ismrmrd_header(hf["ismrmrd_header"][()], what=str(path))
        check_header(hdr, ks.shape, path)
        has_target = "reconstruction_rss" in hf
        if require_target and not has_target:
            raise DataError(f"{path}: missing dataset 'reconstruction_rss'")
        tshape = None
        if has_target:
            tshape = tuple(int(s) for s in hf["reconstruction_rss"].shape)
            if len(tshape) != 3 or tshape[0] != ks.shape[0]:
                raise DataError(
                    f"{path}: 'reconstruction_rss' shape {tshape} does not match kspace {ks.shape}"
                )
        has_mask = "mask" in hf
        if has_mask and int(np.prod(hf["mask"].shape)) != ks.shape[-1]:
            raise DataError(
                f"{path}: 'mask' has shape {hf['mask'].shape}, expected ({ks.shape[-1]},) "
                "(one entry per phase-encode column)"
            )
        if has_mask:
            check_mask(_read(hf, "mask", (), path), path)
        attrs = {k: _attr_value(v) for k, v in hf.attrs.items()}
        return VolumeInfo(
            path=path,
            num_slices=int(ks.shape[0]),
            kspace_shape=tuple(int(s) for s in ks.shape),
            encoding_size=hdr["encoding_size"],
            recon_size=hdr["recon_size"],
            padding_left=hdr["padding_left"],
            padding_right=hdr["padding_right"],
            has_target=has_target,
            has_mask=has_mask,
            attrs=attrs,
            target_shape=tshape,
        )


def _read(hf, name: str, index, path: Path):
    try:
        return hf[name][index]
    except (OSError, RuntimeError, KeyError) as exc:
        raise DataError(f"{path}: cannot read dataset '{name}' (truncated or corrupt?): {exc}") from None


def read_slice(path: Union[str, os.PathLike], slice_num: int):
    """``(kspace (C,H,W) complex64, mask (W,) or None, target (h,w) float32 or None)``."""
    path = Path(path)
    with _open(path) as hf:
        kspace = _read(hf, "kspace", slice_num, path)
        mask = np.asarray(_read(hf, "mask", (), path)) if "mask" in hf else None
        target = _read(hf, "reconstruction_rss", slice_num, path) if "reconstruction_rss" in hf else None
    # NaN / Inf in training or validation data would surface as a NaN loss far from its cause
    check_finite(kspace, path, "kspace", slice_num)
    if target is not None:
        check_finite(target, path, "reconstruction_rss", slice_num)
    return kspace, mask, target


def read_volume(path: Union[str, os.PathLike]):
    """``(kspace (S,C,H,W), mask (W,) or None, target (S,h,w) or None, VolumeInfo)``."""
    info = read_volume_info(path)
    with _open(info.path) as hf:
        kspace = _read(hf, "kspace", (), info.path)
        mask = np.asarray(_read(hf, "mask", (), info.path)) if info.has_mask else None
        target = _read(hf, "reconstruction_rss", (), info.path) if info.has_target else None
    return kspace, mask, target, info


def list_h5_files(root_or_files: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> list[Path]:
    """A file, a folder (its ``*.h5``/``*.hdf5`` files, sorted) or a list of files -> sorted paths."""
    if isinstance(root_or_files, (str, os.PathLike)):
        p = Path(root_or_files)
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in H5_SUFFIXES and f.is_file())
            if not files:
                raise DataError(f"{p}: folder holds no .h5 files")
            return files
        return [p]
    files = [Path(f) for f in root_or_files]
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: no such file")
    return files


class SliceDataset(Dataset):
    """A torch ``Dataset`` over the slices of fastMRI multicoil files, volume-aware.

    Args:
        root_or_files: a folder, a file, or a list of files.
        transform: called as fastMRI's transforms are:
            ``transform(kspace, mask, target, attrs, fname, slice_num)``; without one a sample is
            that tuple (numpy arrays, ``attrs`` = file attrs + header metadata).
        require_target: refuse files without ``reconstruction_rss`` (training).

    ``volumes`` lists each file's :class:`VolumeInfo`; ``raw_samples`` the ``(path, slice, info)``
    triples in order (files sorted by name, slices ascending), so slices of a volume are contiguous.
    """

    def __init__(
        self,
        root_or_files,
        transform: Optional[Callable] = None,
        *,
        require_target: bool = False,
    ):
        self.transform = transform
        self.volumes = [read_volume_info(f, require_target=require_target) for f in list_h5_files(root_or_files)]
        self.raw_samples = [(v.path, i, v) for v in self.volumes for i in range(v.num_slices)]

    def __len__(self) -> int:
        return len(self.raw_samples)

    def volume_slices(self) -> dict[str, range]:
        """``{fname: range of dataset indices}`` -- the slices of each volume."""
        out, start = {}, 0
        for v in self.volumes:
            out[v.fname] = range(start, start + v.num_slices)
            start += v.num_slices
        return out

    def __getitem__(self, i: int):
        path, slice_num, info = self.raw_samples[i]
        kspace, mask, target = read_slice(path, slice_num)
        attrs = info.metadata()
        if self.transform is None:
            return kspace, mask, target, attrs, path.name, slice_num
        return self.transform(kspace, mask, target, attrs, path.name, slice_num)
