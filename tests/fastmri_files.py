"""Small fastMRI-like multicoil files for the data / recon / eval tests (no real data needed).

``make_fastmri_file`` writes what fastMRI ships: ``kspace`` complex64 (S, C, H, W) with the
header's padding columns zero, ``reconstruction_rss`` (S, rh, rw) float32 (RSS of the full k-space,
centre-cropped to the recon size), ``ismrmrd_header`` and attrs max/norm/acquisition/patient_id;
optionally a test-split ``mask`` (then k-space is undersampled and the target dropped).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np

from tests.oracle import fft2c, ifft2c  # noqa: F401  (numpy in, numpy out; other test files import them from here)

HAS_FASTMRI = importlib.util.find_spec("fastmri") is not None
FASTMRI_REASON = ("fastmri is not importable (install it with `pip install --no-deps fastmri` plus "
                  "pandas, pyyaml, requests, runstats to run this cross-check)")


def header_xml(enc=(24, 20, 1), recon=(16, 16, 1), center=10, maximum=19) -> bytes:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
 <encoding>
  <encodedSpace><matrixSize><x>{enc[0]}</x><y>{enc[1]}</y><z>{enc[2]}</z></matrixSize></encodedSpace>
  <reconSpace><matrixSize><x>{recon[0]}</x><y>{recon[1]}</y><z>{recon[2]}</z></matrixSize></reconSpace>
  <encodingLimits>
   <kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center></kspace_encoding_step_1>
  </encodingLimits>
 </encoding>
</ismrmrdHeader>""".encode()




def crop(x, h, w):
    t, l = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., t : t + h, l : l + w]


def make_fastmri_file(path, *, S=2, C=4, H=24, W=20, recon=(16, 16), center=None, maximum=None,
                      mask=None, seed=0, acquisition="AXT1"):
    """Write a small multicoil file. ``center``/``maximum`` are the header's
    kspace_encoding_step_1 limits (default: 2 padding columns on each side)."""
    rng = np.random.default_rng(seed)
    center = W // 2 - 2 if center is None else center
    maximum = W - 5 if maximum is None else maximum
    pad_l = W // 2 - center
    pad_r = pad_l + maximum + 1
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    obj = ((xx / 0.7) ** 2 + (yy / 0.8) ** 2 < 1).astype(float) * (1 + 0.5 * np.cos(5 * xx))
    obj = obj * np.exp(1j * (0.5 * xx + 0.3 * yy))
    vol = np.stack([obj * (1 + 0.2 * s) for s in range(S)])
    maps = []
    for c in range(C):
        a = 2 * np.pi * c / C
        maps.append(np.exp(-((xx - 1.3 * np.cos(a)) ** 2 + (yy - 1.3 * np.sin(a)) ** 2)) * np.exp(1j * a))
    sens = np.stack(maps)
    sens /= np.sqrt((np.abs(sens) ** 2).sum(0))
    k = fft2c(sens[None] * vol[:, None]) * 1e-4
    k += 1e-7 * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    k[..., :pad_l] = 0
    k[..., pad_r:] = 0
    k = k.astype(np.complex64)
    target = crop(np.sqrt((np.abs(ifft2c(k.astype(np.complex128))) ** 2).sum(1)), *recon).astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("ismrmrd_header", data=np.bytes_(header_xml((H, W, 1), (*recon, 1), center, maximum)))
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            f.create_dataset("kspace", data=(k * mask).astype(np.complex64))
            f.create_dataset("mask", data=mask)
        else:
            f.create_dataset("kspace", data=k)
            f.create_dataset("reconstruction_rss", data=target)
        f.attrs["max"] = float(target.max())
        f.attrs["norm"] = float(np.linalg.norm(target))
        f.attrs["acquisition"] = acquisition
        f.attrs["patient_id"] = "p" + str(seed)
    return path


def make_tiny_fastmri(out_dir, n_vols=2, slices=2, coils=4, H=32, W=32, seed=0, prefix="vol"):
    """Tiny fastMRI-format multicoil files (ellipse phantoms, smooth coils, noise) for fast tests."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[-1:1:H * 1j, -1:1:W * 1j]
    paths = []
    for v in range(n_vols):
        ks, tg = [], []
        for _ in range(slices):
            img = np.zeros((H, W))
            for _ in range(4):
                cy, cx = rng.uniform(-0.4, 0.4, 2)
                ay, ax = rng.uniform(0.15, 0.5, 2)
                img += rng.uniform(0.3, 1) * (((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1)
            img = img * np.exp(1j * (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1)))
            ang = 2 * np.pi * np.arange(coils)[:, None, None] / coils
            sens = np.exp(-((yy - 0.8 * np.sin(ang)) ** 2 + (xx - 0.8 * np.cos(ang)) ** 2)) * np.exp(1j * ang)
            sens /= np.sqrt((np.abs(sens) ** 2).sum(0))
            noise = rng.standard_normal((coils, H, W)) + 1j * rng.standard_normal((coils, H, W))
            coil_img = 1e-3 * (sens * img + 0.01 * noise)
            k = fft2c(coil_img)
            ks.append(k.astype(np.complex64))
            tg.append(np.sqrt((np.abs(coil_img) ** 2).sum(0)).astype(np.float32))
        p = out / f"{prefix}{v:02d}.h5"
        with h5py.File(p, "w") as f:
            f["kspace"] = np.stack(ks)
            f["reconstruction_rss"] = np.stack(tg)
            f["ismrmrd_header"] = np.bytes_(header_xml((H, W, 1), (H, W, 1), center=W // 2, maximum=W - 1))
            f.attrs["max"] = float(np.stack(tg).max())
            f.attrs["norm"] = float(np.linalg.norm(np.stack(tg)))
            f.attrs["acquisition"] = "AXT1"
            f.attrs["patient_id"] = f"p{v}"
        paths.append(p)
    return paths


def truncate(path, keep=0.5):
    """Cut a file to a fraction of its size (a half-copied download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return path


def run_cli(argv, monkeypatch=None):
    """``flat.cli.main(argv)`` with only the subcommands whose modules exist yet."""
    import flat.cli as cli

    cmds = {k: v for k, v in cli.COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}
    if monkeypatch is not None:
        monkeypatch.setattr(cli, "COMMANDS", cmds)
    else:
        cli.COMMANDS = cmds
    return cli.main([str(a) for a in argv])


def make_tiny_splits(root, seed=0, test_vols=1):
    """``root/{train,val,test}`` of :func:`make_tiny_fastmri` files (2, 1 and ``test_vols`` volumes of
    2 slices), seeded ``seed``, ``seed + 1`` and ``seed + 2``; returns ``root``."""
    root = Path(root)
    make_tiny_fastmri(root / "train", n_vols=2, slices=2, seed=seed)
    make_tiny_fastmri(root / "val", n_vols=1, slices=2, seed=seed + 1, prefix="val")
    make_tiny_fastmri(root / "test", n_vols=test_vols, slices=2, seed=seed + 2, prefix="test")
    return root
