"""The flow view of unrolled reconstruction: time grids and the FLAT loss (docs/model.md)."""
from flat.flow.schedule import steps_from_grid, time_grid

__all__ = ["time_grid", "steps_from_grid"]
