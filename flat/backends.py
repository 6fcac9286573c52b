"""Old import path of the backend registry; it now lives in :mod:`flat.ops.backends`."""
from flat.ops.backends import *  # noqa: F401,F403
from flat.ops.backends import __all__  # noqa: F401
