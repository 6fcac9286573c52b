"""Models: the unrolled flow (FLAT and its vanilla baseline), the velocity U-Net, coil maps, and
fastMRI's E2E-VarNet on FLAT's operators (loadable from fastMRI's weights)."""
from flat.model.flat import FlatModel, FlowOutput, build_model
from flat.model.varnet import VarNet, flat_from_varnet, load_fastmri_varnet, varnet_sizes

__all__ = ["FlatModel", "FlowOutput", "VarNet", "build_model", "flat_from_varnet", "load_fastmri_varnet",
           "varnet_sizes"]
