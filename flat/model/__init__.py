"""Models: the unrolled flow (FLAT and its vanilla baseline), the velocity U-Net, coil maps."""
from flat.model.flat import FlatModel, FlowOutput, build_model

__all__ = ["FlatModel", "FlowOutput", "build_model"]
