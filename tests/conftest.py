"""Test configuration shared by every test file.

TRITON_INTERPRET must be set before anything imports triton, so the Triton kernels run on CPU
tensors in CI (no GPU there).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("FLAT_BACKEND", None)  # tests choose backends explicitly

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu); none is available here")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
