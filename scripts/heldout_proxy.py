"""A held-out check set of *non-brain* content, simulated exactly like the demo data.

    python scripts/heldout_proxy.py OUT            # needs scikit-image (its bundled sample images)

writes ``OUT/small/*.h5`` (128 x 128 with 8 coils and 160 x 160 with 12 coils: a phantom, a
photograph, microscopy, textures, a retina fundus) and ``OUT/large/*.h5`` (320 x 320, 15 coils:
fastMRI-like size and coil count, where the aliasing shift at R = 4 is 2.5x that of the demo).
None of it is MRI anatomy: it stands in for "different anatomy the demo never saw", to check that a
demo checkpoint generalises and to compare FLAT with the vanilla baseline off the training
distribution. Evaluate with ``flat recon`` + ``flat eval`` (see README, "Held-out check").
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from flat.data.demo import ismrmrd_header, simulate_volume, write_fastmri_file

NOISE_STD, SCALE, FOV_MM, SLICE_MM = 0.003, 1e-3, 220.0, 3.0  # as the demo data


def _gray(im) -> np.ndarray:
    from skimage import color

    im = np.asarray(im, dtype=np.float64)
    if im.ndim == 3:
        im = color.rgb2gray(im[..., :3])
    im = im - im.min()
    return 255.0 * im / im.max()


def _square(im, n, zoom=1.0, rot=0.0, support=None) -> np.ndarray:
    """Central square of ``im``, rotated, resized to ``zoom``·n and centred on an n x n grid;
    ``support=(ax, ay)`` keeps only an ellipse (an object on a dark background, like a body part)."""
    from skimage import transform

    H, W = im.shape
    s = min(H, W)
    im = im[(H - s) // 2:(H - s) // 2 + s, (W - s) // 2:(W - s) // 2 + s]
    im = transform.rotate(im, rot, mode="constant")
    m = int(round(n * zoom))
    im = transform.resize(im, (m, m), anti_aliasing=True)
    out = np.zeros((n, n))
    k = min(n, m)
    o, oi = (n - k) // 2, (m - k) // 2
    out[o:o + k, o:o + k] = im[oi:oi + k, oi:oi + k]
    if support is not None:
        y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
        out *= ((x / support[0]) ** 2 + (y / support[1]) ** 2) < 1
    return out


def volumes(n: int, large: bool) -> dict:
    """name -> magnitude slices (S, n, n) in [0, 255]."""
    from skimage import data

    if large:
        ell = (0.9, 0.95)
        return {
            "camera": [_square(_gray(data.camera()), n, support=ell)],
            "cells": [_square(_gray(im), n, support=ell)
                      for im in (data.cell(), data.immunohistochemistry())],
            "phantom": [_square(_gray(data.shepp_logan_phantom()), n, support=ell)],
            "moon": [_square(_gray(im), n, support=ell) for im in (data.moon(), data.coins())],
        }
    ell = (0.85, 0.7)
    cam = _gray(data.camera())
    return {
        "phantom": [_square(_gray(data.shepp_logan_phantom()), n, z, r) for z, r in
                    ((1, 0), (0.9, 10), (0.8, -15), (1.05, 30))],
        "camera": [_square(np.roll(cam, s, axis=1), n, support=ell) for s in (0, 40, 80, 120)],
        "retina": [_square(_gray(data.retina()), n, z, r)
                   for z, r in ((1, 0), (1.2, 20), (1.4, 45), (1.1, -30))],
        "cells": [_square(_gray(im), n, support=ell) for im in
                  (data.cell(), data.cell()[::-1], data.immunohistochemistry(), data.microaneurysms())],
        "textures": [_square(_gray(im), n, support=ell) for im in
                     (data.moon(), data.brick(), data.grass(), data.gravel())],
    }


def write_set(out: Path, n: int, coils: int, large: bool, seed: int = 99) -> list[Path]:
    paths = []
    for vi, (name, slices) in enumerate(volumes(n, large).items()):
        rng = np.random.default_rng([seed, vi, n])
        kspace, target = simulate_volume(np.stack(slices), rng, matrix=n, num_coils=coils,
                                         noise_std=NOISE_STD, scale=SCALE)
        header = ismrmrd_header(n, FOV_MM, coils, kspace.shape[0], SLICE_MM)
        paths.append(write_fastmri_file(out / f"proxy_{name}_{n}.h5", kspace, target, header, {
            "acquisition": "PROXY", "source": "scikit-image sample image, simulated coils/phase/noise"}))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output folder (small/ and large/ are written inside)")
    ap.add_argument("--seed", type=int, default=99, help="seed of coils, phase and noise (default 99)")
    args = ap.parse_args()
    out = Path(args.out)
    small = [p for n, c in ((128, 8), (160, 12)) for p in write_set(out / "small", n, c, False, args.seed)]
    large = write_set(out / "large", 320, 15, True, args.seed)
    print(f"wrote {len(small)} files in {out / 'small'} and {len(large)} in {out / 'large'}")


if __name__ == "__main__":
    main()
