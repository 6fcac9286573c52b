"""fastMRI data: file reader (:mod:`flat.data.fastmri`), masks (:mod:`flat.data.masks`), per-slice
transforms (:mod:`flat.data.transforms`) and the demo data set (:mod:`flat.data.demo`).

Submodules are imported on use, so ``import flat.data`` stays light.
"""
