"""Held-out brain volumes: Colin27 slabs the demo data set never uses, simulated like the demo data.

The demo trains and tests on the slabs of :data:`flat.data.demo.VOLUMES`. These slabs lie outside
all of them, so a checkpoint or a classical default is scored on anatomy it never saw:

- ``heldout``: the vertex above the superior axial slab, the occipital pole behind the posterior
  coronal slab and the left lateral surface outside the left sagittal slab (used to compare the
  classical baseline with BART, docs/classical.md);
- ``confirm``: the right lateral surface, the frontal pole, the left paramedian gap between two demo
  slabs and the skull base below the inferior axial slab: a second, disjoint set for checking a
  change on files that played no part in choosing it.

They need the Colin27 atlas itself (a NIfTI, e.g. ``colin27_t1_tal_lin.nii`` or ``ch2.nii.gz``):
the package ships only the demo's slices. Like the demo data this is real anatomy with simulated
coils, phase and noise, not scanner data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from flat.data.demo import (ACQUISITION, ASSET_FOV_MM, ASSET_SIZE, asset_slice, demo_sizes, ismrmrd_header,
                            read_nifti, simulate_volume, write_fastmri_file)

# (name, orientation, first, stop, step): indices into the 1 mm atlas, as flat.data.demo.VOLUMES
BRAIN_SLABS = {
    "heldout": [
        ("ax_vertex", "axial", 164, 176, 3),
        ("cor_occipital", "coronal", 12, 30, 4),
        ("sag_lateral", "sagittal", 8, 20, 3),
    ],
    "confirm": [
        ("sag_right_lateral", "sagittal", 163, 176, 3),
        ("cor_frontal_pole", "coronal", 207, 217, 3),
        ("sag_left_paramedian", "sagittal", 69, 76, 3),
        ("ax_skull_base", "axial", 15, 30, 4),
    ],
}


def write_brain_set(nifti, out, slabs: Sequence[tuple] | str = "heldout",
                    sizes: Iterable[tuple[int, int]] = ((128, 8), (160, 12)), seed: int = 7) -> list[Path]:
    """Write ``out/brain_<name>_<matrix>[c<coils>].h5`` for every slab and (matrix, coils) in
    ``sizes``; returns the paths. Slices are taken from the atlas at ``ASSET_SIZE`` (as the shipped
    assets) for matrices up to it, and at the matrix itself above it (so a 256² volume has the
    atlas's own detail, not an interpolated 160² one). Coils, phase and noise as the demo data,
    seeded by (seed, slab, matrix, coils)."""
    slabs = BRAIN_SLABS[slabs] if isinstance(slabs, str) else list(slabs)
    sizes = [(int(m), int(c)) for m, c in sizes]
    for m, c in sizes:
        if m < 16 or c < 1:
            raise ValueError(f"sizes: need matrix >= 16 and coils >= 1, got {m}x{c}")
    vol = read_nifti(nifti).astype(np.float64)
    out = Path(out)
    default_coils = {128: 8, 160: 12}  # the original file names carry no coil count
    paths = []
    for vi, (name, orient, first, stop, step) in enumerate(slabs):
        for matrix, coils in sizes:
            mags = np.stack([asset_slice(vol, orient, i, size=max(matrix, ASSET_SIZE))
                             for i in range(first, stop, step)])
            mags *= 255.0 / max(mags.max(), 1.0)  # the shipped slices use the full uint8 range too
            key = [seed, vi, matrix] if default_coils.get(matrix) == coils else [seed, vi, matrix, coils]
            k, target = simulate_volume(mags, np.random.default_rng(key), matrix=matrix, num_coils=coils,
                                        noise_std=demo_sizes["noise_std"], scale=demo_sizes["scale"])
            header = ismrmrd_header(matrix, ASSET_FOV_MM, coils, k.shape[0], float(step))
            tag = f"{matrix}" if default_coils.get(matrix) == coils else f"{matrix}c{coils}"
            paths.append(write_fastmri_file(out / f"brain_{name}_{tag}.h5", k, target, header, {
                "acquisition": ACQUISITION[orient], "source": "Colin27 slab not in the demo data set",
                "anatomy": f"{orient} slices {first}:{stop}:{step} of Colin27 (1 mm)"}))
    return paths
