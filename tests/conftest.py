"""Test configuration shared by every test file.

Triton interpreter: ``TRITON_INTERPRET=1`` is set (before anything imports triton) only where no
CUDA device is present, so that CI runs the Triton kernels on CPU tensors. On a GPU the kernels
must be compiled: the interpreter copies every CUDA storage to the host and back (minutes per
knee-sized launch) and cannot run under CUDA-graph capture. A TRITON_INTERPRET already in the
environment is respected (scripts/gpu_check.sh sets it to 0). See docs/gpu.md.

Where the interpreter is off, the tests that launch Triton kernels on CPU tensors (the files in
``_TRITON_CPU_FILES`` outside the ``gpu`` marker, except those that launch none) are skipped with
that reason; the ``gpu`` tests cover the compiled kernels.
"""
import os

import torch  # importing torch does not import triton, and is_available() does not create a context

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
os.environ.pop("FLAT_BACKEND", None)  # tests choose backends explicitly

import pytest  # noqa: E402

# test files that launch Triton kernels on CPU tensors, and their tests that launch none (those
# compile in a subprocess or check tables: they run either way)
_TRITON_CPU_FILES = {"test_triton.py", "test_kernel_resources.py"}
_TRITON_CPU_FREE = {"test_oracle_fft_matches_numpy", "test_kernels_compile_for_sm90",
                    "test_registration_and_precision_modes", "test_row_kernels_compile_for_sm90_without_spills",
                    "test_every_row_variant_compiles_for_sm90_without_spills", "test_sass_loop_counter_on_a_known_kernel",
                    "test_width_routing", "test_factored_dft_tables", "test_factored_projection_tf32x3_error_emulated"}


def pytest_report_header(config):
    mode = "interpreter (TRITON_INTERPRET=1)" if INTERPRET else "compiled kernels"
    return f"flat: CUDA device: {'yes' if HAS_CUDA else 'no'}; Triton: {mode}"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu); none is available here")
    skip_interp_gpu = pytest.mark.skip(
        reason="TRITON_INTERPRET=1 on a CUDA machine: the gpu tests need compiled kernels (unset it)")
    skip_cpu_triton = pytest.mark.skip(
        reason="Triton runs CPU tensors only under TRITON_INTERPRET=1, which is off because a CUDA "
               "device is present (the gpu tests cover the compiled kernels; set TRITON_INTERPRET=1 to run these)")
    for item in items:
        if "gpu" in item.keywords:
            if not HAS_CUDA:
                item.add_marker(skip_gpu)
            elif INTERPRET:
                item.add_marker(skip_interp_gpu)
        elif (not INTERPRET and item.path.name in _TRITON_CPU_FILES
              and item.originalname not in _TRITON_CPU_FREE):
            item.add_marker(skip_cpu_triton)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
