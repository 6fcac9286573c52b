"""The demo data set: real brain anatomy, simulated multicoil acquisition, fastMRI file format.

Anatomy: slices of the Colin27 single-subject T1 brain (MRIcron's ``ch2.nii.gz``, BSD-3-clause,
Copyright 2006-2010 Chris Rorden; notice in ``flat/data/assets/LICENSE-colin27.txt``), shipped in
``flat/data/assets/colin27_slices.npz`` (uint8, 160 x 160 on a 220 mm field of view).
It is **real anatomy but not raw scanner data**: the magnitude image gets a smooth synthetic
phase, ``num_coils`` smooth birdcage-like coil sensitivities normalised to ``sum_c |S_c|^2 = 1``,
a centred orthonormal FFT and complex Gaussian noise. Say so wherever results on it are shown.

Size choice (:data:`demo_sizes`): 8 coils, k-space ``H = W = 128`` (1.72 mm, no readout
oversampling; header encoded = recon matrix = 128 x 128, phase-encode limits 0..127 with centre 64,
so there are no padding columns), 141 slices in 11 volumes (about 150 MB of HDF5 in all, mostly complex64 k-space). The splits use
different anatomy (slabs separated by gaps of >= 4 mm, see :data:`VOLUMES`):

- train (7 volumes, 110 slices): axial slabs below and above the ventricles, three coronal slabs
  (posterior, middle, anterior), sagittal slabs in both lateral thirds;
- val (2 volumes, 12 slices): an axial slab through the lateral ventricles, a coronal slab of the
  frontal lobe between the middle and anterior training slabs;
- test (2 volumes, 19 slices): an axial slab above the val slab and a midline sagittal slab --
  anatomy no training slice shows.

``write_demo_dataset(out_dir, seed=0)`` is deterministic (same seed, same arrays).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from flat.ops import reference

ASSET_DIR = Path(__file__).resolve().parent / "assets"
ASSET_FILE = ASSET_DIR / "colin27_slices.npz"
ASSET_SIZE = 160          # asset matrix (pixels) on ASSET_FOV_MM
ASSET_FOV_MM = 220.0

demo_sizes = {
    "num_coils": 8,
    "matrix": 128,          # k-space H = W = image size = recon size
    "fov_mm": ASSET_FOV_MM,
    "noise_std": 0.003,     # complex noise std per k-space sample, relative to the image maximum
    "scale": 1e-3,          # image maximum ~ scale (fastMRI-like magnitudes, ~1e-3)
    "splits": {"train": 7, "val": 2, "test": 2},
    "slices": {"train": 110, "val": 12, "test": 19},
}

# (split, name, orientation, first, stop, step) -- indices into the Colin27 volume (1 mm voxels):
# axial = z (inferior -> superior), coronal = y (posterior -> anterior), sagittal = x.
VOLUMES = [
    ("train", "ax_inferior", "axial", 30, 76, 3),
    ("train", "ax_superior", "axial", 122, 162, 3),
    ("train", "cor_posterior", "coronal", 30, 78, 3),
    ("train", "cor_middle", "coronal", 80, 146, 3),
    ("train", "cor_anterior", "coronal", 176, 206, 3),
    ("train", "sag_left", "sagittal", 20, 68, 3),
    ("train", "sag_right", "sagittal", 114, 162, 3),
    ("val", "ax_ventricles", "axial", 80, 92, 2),
    ("val", "cor_frontal", "coronal", 152, 170, 3),
    ("test", "ax_upper_ventricles", "axial", 98, 116, 2),
    ("test", "sag_midline", "sagittal", 76, 104, 3),
]
ACQUISITION = {"axial": "AXT1", "coronal": "CORT1", "sagittal": "SAGT1"}

SOURCE_NOTE = (
    "FLAT demo data: real anatomy (Colin27 T1, BSD-3-clause, (c) 2006-2010 Chris Rorden) with "
    "simulated coil sensitivities, phase and noise; not raw scanner data"
)


# ---------------------------------------------------------------- building the shipped asset
def read_nifti(path) -> np.ndarray:
    """A minimal NIfTI-1 reader (enough for Colin27): returns the array indexed ``[z, y, x]``."""
    import gzip
    import struct

    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if struct.unpack("<i", raw[:4])[0] != 348:
        raise ValueError(f"{path}: not a little-endian NIfTI-1 file")
    dim = struct.unpack("<8h", raw[40:56])
    dtype = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64}[
        struct.unpack("<h", raw[70:72])[0]
    ]
    offset = int(struct.unpack("<f", raw[108:112])[0])
    slope, inter = struct.unpack("<2f", raw[112:120])
    nx, ny, nz = dim[1:4]
    vol = np.frombuffer(raw, dtype=dtype, count=nx * ny * nz, offset=offset).reshape(nz, ny, nx)
    if slope not in (0.0, 1.0) or inter != 0.0:
        vol = vol * (slope or 1.0) + inter
    return vol


def _slice(vol: np.ndarray, orientation: str, i: int) -> np.ndarray:
    # Display orientation: anterior / superior at the top.
    if orientation == "axial":
        return vol[i, ::-1, :]
    if orientation == "coronal":
        return vol[::-1, i, :]
    return vol[::-1, :, i]


def asset_slice(vol: np.ndarray, orient: str, i: int, size: int = ASSET_SIZE) -> np.ndarray:
    """Slice ``i`` of the 1 mm atlas volume in ``orient``, centred on the field of view and resampled
    to ``size``² (ASSET_SIZE for the shipped assets; cubic, anti-aliased), rounded and clipped to the
    0–255 range of the shipped assets."""
    from skimage.transform import resize

    s = _slice(vol, orient, i)
    n = int(ASSET_FOV_MM)
    pad = np.zeros((n, n))
    t, l = (n - s.shape[0]) // 2, (n - s.shape[1]) // 2
    pad[t : t + s.shape[0], l : l + s.shape[1]] = s
    r = resize(pad, (size, size), order=3, anti_aliasing=True, mode="constant")
    return np.clip(np.rint(r), 0, 255)


def build_assets(nifti_path, out_path=ASSET_FILE) -> Path:
    """Extract the slices of :data:`VOLUMES` from the Colin27 NIfTI into the shipped ``.npz``
    (each slice zero-padded to a 220 mm square, resized with anti-aliasing to 160 x 160, uint8).
    Needs scikit-image. This is how ``assets/colin27_slices.npz`` was made."""
    from flat.io import atomic_path

    vol = read_nifti(nifti_path).astype(np.float64)
    arrays = {}
    for _, name, orient, first, stop, step in VOLUMES:
        stack = []
        for i in range(first, stop, step):
            stack.append(asset_slice(vol, orient, i).astype(np.uint8))
        arrays[name] = np.stack(stack)
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(out_path)


def load_assets() -> dict:
    if not ASSET_FILE.is_file():
        raise FileNotFoundError(f"{ASSET_FILE}: the shipped demo anatomy is missing (broken install?)")
    with np.load(ASSET_FILE) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------- simulation
def _fft2c(x: np.ndarray) -> np.ndarray:
    """The package's centered FFT (flat/ops/reference.py) on a numpy array."""
    return reference.fft2c(torch.from_numpy(np.ascontiguousarray(x, dtype=np.complex128))).numpy()


def _ifft2c(x: np.ndarray) -> np.ndarray:
    return reference.ifft2c(torch.from_numpy(np.ascontiguousarray(x, dtype=np.complex128))).numpy()


def _resample(img: np.ndarray, n: int) -> np.ndarray:
    """Magnitude at matrix ``n`` on the same field of view: keep the central n x n of k-space (a
    lower-resolution acquisition of the same object), or, for ``n`` above the asset's size, pad
    k-space with zeros (the same object on a finer grid, with no detail beyond the asset's);
    orthonormal scaling preserved."""
    N = img.shape[-1]
    if n == N:
        return img.astype(np.float64)
    k = _fft2c(img.astype(np.float64))
    if n > N:
        s = (n - N + 1) // 2
        big = np.zeros(k.shape[:-2] + (n, n), dtype=k.dtype)
        big[..., s : s + N, s : s + N] = k
        return np.abs(_ifft2c(big)) * (n / N)
    s = (N - n + 1) // 2
    return np.abs(_ifft2c(k[..., s : s + n, s : s + n])) * (n / N)


def coil_sensitivities(n: int, num_coils: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth complex maps ``(C, n, n)``: Gaussian profiles from coils on a ring around the FOV,
    each with a smooth phase, normalised so ``sum_c |S_c|^2 = 1`` at every pixel."""
    y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    rot = rng.uniform(0, 2 * np.pi)
    maps = []
    for c in range(num_coils):
        a = rot + 2 * np.pi * c / num_coils
        cx, cy = 1.4 * np.cos(a), 1.4 * np.sin(a)
        width = rng.uniform(0.9, 1.2)
        mag = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2))
        phase = a + rng.uniform(-0.6, 0.6) * x + rng.uniform(-0.6, 0.6) * y
        maps.append(mag * np.exp(1j * phase))
    s = np.stack(maps)
    return s / np.sqrt((np.abs(s) ** 2).sum(0, keepdims=True))


def smooth_phase(n: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth background phase (radians): a random quadratic surface, up to about +-pi."""
    y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    c = rng.uniform(-1, 1, size=6) * np.array([np.pi, 1.0, 1.0, 0.6, 0.6, 0.6])
    return c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y


def ismrmrd_header(n: int, fov_mm: float, num_coils: int, num_slices: int, slice_mm: float) -> bytes:
    """A consistent ISMRMRD header: encoded = recon matrix ``n x n x 1``, phase-encode limits
    ``0..n-1`` with centre ``n // 2`` (no padding columns)."""
    c = n // 2
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <studyInformation><studyDescription>{SOURCE_NOTE}</studyDescription></studyInformation>
  <acquisitionSystemInformation>
    <systemVendor>simulated</systemVendor>
    <systemFieldStrength_T>3.0</systemFieldStrength_T>
    <receiverChannels>{num_coils}</receiverChannels>
  </acquisitionSystemInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>127750000</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace>
      <matrixSize><x>{n}</x><y>{n}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov_mm:.1f}</x><y>{fov_mm:.1f}</y><z>{slice_mm:.1f}</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{n}</x><y>{n}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov_mm:.1f}</x><y>{fov_mm:.1f}</y><z>{slice_mm:.1f}</z></fieldOfView_mm>
    </reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{n - 1}</maximum><center>{c}</center></kspace_encoding_step_1>
      <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
      <slice><minimum>0</minimum><maximum>{num_slices - 1}</maximum><center>0</center></slice>
      <average><minimum>0</minimum><maximum>0</maximum><center>0</center></average>
      <contrast><minimum>0</minimum><maximum>0</maximum><center>0</center></contrast>
      <phase><minimum>0</minimum><maximum>0</maximum><center>0</center></phase>
      <repetition><minimum>0</minimum><maximum>0</maximum><center>0</center></repetition>
      <set><minimum>0</minimum><maximum>0</maximum><center>0</center></set>
      <segment><minimum>0</minimum><maximum>0</maximum><center>0</center></segment>
    </encodingLimits>
  </encoding>
  <sequenceParameters><TR>2000</TR><TE>10</TE><TI>800</TI><flipAngle_deg>90</flipAngle_deg></sequenceParameters>
</ismrmrdHeader>
""".encode()


def simulate_volume(magnitude: np.ndarray, rng: np.random.Generator, *, matrix: int, num_coils: int,
                    noise_std: float, scale: float):
    """Multicoil k-space ``(S, C, n, n)`` complex64 and its RSS target ``(S, n, n)`` float32 from
    magnitude slices ``(S, N, N)`` (uint8 or float). One coil set per volume, a fresh smooth phase
    and noise per slice. The target is the RSS of the fully sampled (noisy) coil images, as in
    fastMRI."""
    mags = np.stack([_resample(m, matrix) for m in magnitude.astype(np.float64)])
    mags *= scale / 255.0
    sens = coil_sensitivities(matrix, num_coils, rng)
    S = mags.shape[0]
    kspace = np.empty((S, num_coils, matrix, matrix), dtype=np.complex64)
    target = np.empty((S, matrix, matrix), dtype=np.float32)
    sigma = noise_std * scale
    for s in range(S):
        x = mags[s] * np.exp(1j * smooth_phase(matrix, rng))
        k = _fft2c(sens * x[None])
        k += sigma * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)) / np.sqrt(2)
        kspace[s] = k.astype(np.complex64)
        target[s] = np.sqrt((np.abs(_ifft2c(kspace[s].astype(np.complex128))) ** 2).sum(0)).astype(np.float32)
    return kspace, target


def write_fastmri_file(path, kspace: np.ndarray, target: np.ndarray, header: bytes, attrs: dict) -> Path:
    """One fastMRI multicoil file, written atomically: ``kspace``, ``reconstruction_rss``,
    ``ismrmrd_header`` and attrs (``max`` and ``norm`` of the target are added)."""
    import h5py

    from flat.io import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.create_dataset("ismrmrd_header", data=np.bytes_(header), track_times=False)
            f.create_dataset("kspace", data=kspace, track_times=False)
            f.create_dataset("reconstruction_rss", data=target, track_times=False)
            f.attrs["acquisition"] = attrs.get("acquisition", "AXT1")
            f.attrs["max"] = float(target.max())
            f.attrs["norm"] = float(np.linalg.norm(target))
            f.attrs["patient_id"] = attrs.get("patient_id", "")
            for k, v in attrs.items():
                if k not in ("acquisition", "patient_id", "max", "norm"):
                    f.attrs[k] = v
    return Path(path)


# The varied training set (``write_demo_dataset(varied=True)``, what ``flat demo`` trains on):
# every VARIED_CHUNK slices of a training slab are one acquisition with its own matrix, coil count,
# noise level, contrast and orientation, so the networks see what a user's data varies
# (docs/model.md, "Training data that transfers"). Larger matrices are rarer: a step costs ~n².
VARIED_MATRICES = ((128, 0.4), (160, 0.25), (192, 0.2), (256, 0.15))
VARIED_COILS = (4, 6, 8, 12, 16)
VARIED_NOISE = (0.5, 1.0, 2.0)    # x demo_sizes["noise_std"]
VARIED_GAMMA = (0.8, 1.0, 1.25)   # contrast: the monotone transform m -> 255·(m/255)^γ
VARIED_CHUNK = 10


def _varied_acquisitions(mags: np.ndarray, rng: np.random.Generator):
    """Split a training slab into acquisitions of VARIED_CHUNK slices, each with its own draw:
    yields (slices, matrix, coils, noise factor, gamma, transposed)."""
    sizes, p = zip(*VARIED_MATRICES)
    for start in range(0, mags.shape[0], VARIED_CHUNK):
        part = mags[start : start + VARIED_CHUNK].astype(np.float64)
        matrix = int(rng.choice(sizes, p=p))
        coils = int(rng.choice(VARIED_COILS))
        noise = float(rng.choice(VARIED_NOISE))
        gamma = float(rng.choice(VARIED_GAMMA))
        transposed = bool(rng.random() < 0.5)  # the anatomy turned by 90°: phase encoding along the other axis
        if transposed:
            part = part.swapaxes(-1, -2)
        yield 255.0 * (part / 255.0) ** gamma, matrix, coils, noise, gamma, transposed


def write_demo_dataset(out_dir, *, seed: int = 0, matrix: Optional[int] = None,
                       num_coils: Optional[int] = None, varied: bool = False,
                       progress: bool = False) -> dict[str, list[Path]]:
    """Write the demo set under ``out_dir/{train,val,test}/`` as fastMRI multicoil files.

    Returns ``{"train": [...], "val": [...], "test": [...]}`` (paths, sorted). Deterministic in
    ``seed``; each volume draws from its own generator, so volumes do not depend on each other.
    ``matrix`` (<= 160) and ``num_coils`` override :data:`demo_sizes`. ``varied``: the training
    slabs become acquisitions of varied matrix (128–256), coils (4–16), noise, contrast and
    orientation (:data:`VARIED_MATRICES` …), one file per :data:`VARIED_CHUNK` slices; val and test
    keep ``matrix`` / ``num_coils``. Each file appears whole or not at all.
    """
    # None means the default; 0 is a size, and refused below like any other bad one
    matrix = int(demo_sizes["matrix"] if matrix is None else matrix)
    num_coils = int(demo_sizes["num_coils"] if num_coils is None else num_coils)
    if not 16 <= matrix <= ASSET_SIZE:
        raise ValueError(f"matrix (--matrix) must lie in [16, {ASSET_SIZE}], got {matrix}")
    if num_coils < 1:
        raise ValueError(f"num_coils (--coils) must be >= 1, got {num_coils}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    assets = load_assets()
    patient = "colin27-" + hashlib.sha1(b"colin27").hexdigest()[:8]
    out: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    it = list(enumerate(VOLUMES))
    if progress:
        import sys

        from tqdm import tqdm

        it = tqdm(it, desc="demo data", unit="vol", file=sys.stderr, leave=False)
    for vi, (split, name, orient, first, stop, step) in it:
        rng = np.random.default_rng([seed, vi])
        if varied and split == "train":
            for ci, (mags, n, coils, noise, gamma, transposed) in enumerate(_varied_acquisitions(assets[name], rng)):
                kspace, target = simulate_volume(mags, rng, matrix=n, num_coils=coils,
                                                 noise_std=noise * demo_sizes["noise_std"], scale=demo_sizes["scale"])
                header = ismrmrd_header(n, ASSET_FOV_MM, coils, kspace.shape[0], float(step))
                path = out_dir / split / f"demo_{split}_{vi:02d}{chr(97 + ci)}_{name}.h5"
                write_fastmri_file(path, kspace, target, header, {
                    "acquisition": ACQUISITION[orient], "patient_id": patient, "source": SOURCE_NOTE,
                    "anatomy": f"{orient} slices {first}:{stop}:{step} of Colin27 (1 mm), part {ci}"
                               + (", turned 90°" if transposed else ""),
                    "simulation": f"matrix {n}, {coils} coils, noise x{noise:g}, contrast gamma {gamma:g}",
                })
                out[split].append(path)
            continue
        kspace, target = simulate_volume(
            assets[name], rng, matrix=matrix, num_coils=num_coils,
            noise_std=demo_sizes["noise_std"], scale=demo_sizes["scale"],
        )
        header = ismrmrd_header(matrix, ASSET_FOV_MM, num_coils, kspace.shape[0], float(step))
        path = out_dir / split / f"demo_{split}_{vi:02d}_{name}.h5"
        write_fastmri_file(path, kspace, target, header, {
            "acquisition": ACQUISITION[orient],
            "patient_id": patient,
            "source": SOURCE_NOTE,
            "anatomy": f"{orient} slices {first}:{stop}:{step} of Colin27 (1 mm)",
        })
        out[split].append(path)
    return out
