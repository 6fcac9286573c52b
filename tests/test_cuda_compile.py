"""Every CUDA C source under flat_kernels/cuda compiles for sm_90 with nvcc, without register spills.

Runs on the CPU machine (no GPU needed), so CI catches a build break or a spill before anyone gets a
GPU. The same sources are compiled at run time by NVRTC through CuPy (flat_kernels/cupy/_runtime.py).
Skipped, saying so, where nvcc is not installed.
"""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "flat_kernels" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc") or next(
    (str(p) for p in (pathlib.Path("/usr/local/cuda/bin/nvcc"),) if p.exists()), None
)
MAX_REGISTERS = 128  # a fused element-wise kernel needing more has gone wrong (occupancy)
# Kernels with their own register budget. The row kernel (row_step.cu) runs 256 threads per block
# (FLAT_ROW_THREADS): complex64 must stay at <= 128 registers so that two blocks share an SM's 64K
# registers (the shared-memory plan of flat_kernels/cupy/_engine.py:row_plan assumes it);
# complex128 runs one block per SM and may use what __launch_bounds__(256) allows (255).
# The fused backward (flat_row_grad_*, same file) has the same budgets: row_plan(kernel="row_grad")
# also sizes its shared memory for two complex64 blocks per SM.
REGISTER_CAPS = {"flat_row_step_c64": 128, "flat_row_step_c128": 255,
                 "flat_row_grad_c64": 128, "flat_row_grad_c128": 255}

_KERNEL = r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(?!__launch_bounds__)'
_FUNC = re.compile(r"Function properties for (\w+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                   r"(\d+) bytes spill loads")
_REGS = re.compile(r"Compiling entry function '(\w+)' for 'sm_90'.*?Used (\d+) registers", re.S)


def _expected_kernels(src: str) -> set[str]:
    """extern "C" kernel names: direct ones and those stamped out by an instantiation macro."""
    direct = set(re.findall(_KERNEL + r'(\w+)\s*\(', src))
    stamped = set()
    for prefix in re.findall(_KERNEL + r'(\w+)##SUF\s*\(', src):
        for suf in re.findall(r"^\s*FLAT_\w*INSTANTIATE\((\w+),", src, re.M):
            stamped.add(prefix + suf)
    return direct | stamped


def test_there_are_cuda_sources():
    assert SOURCES, f"no .cu files under {CUDA_DIR}"


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed on this machine")
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_nvcc_sm90_compiles_without_spills(src, tmp_path):
    cmd = [NVCC, "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-std=c++14", "-o", str(tmp_path / "k.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{log}"
    assert "warning" not in log.lower(), f"nvcc warnings for {src.name}:\n{log}"

    props = {m.group(1): tuple(int(g) for g in m.groups()[1:]) for m in _FUNC.finditer(log)}
    regs = {m.group(1): int(m.group(2)) for m in _REGS.finditer(log)}
    expected = _expected_kernels(src.read_text())
    assert expected, f"{src.name}: no extern \"C\" __global__ kernels found"
    missing = expected - set(props)
    assert not missing, f"{src.name}: ptxas reported nothing for {sorted(missing)}:\n{log}"
    report = []
    for name in sorted(expected):
        stack, st, ld = props[name]
        report.append(f"{name}: {regs.get(name)} registers, stack {stack} B, spill stores {st} B, loads {ld} B")
        assert st == 0 and ld == 0, f"{name} spills registers ({st} B stores, {ld} B loads):\n{log}"
        cap = REGISTER_CAPS.get(name, MAX_REGISTERS)
        assert regs.get(name, 0) <= cap, f"{name} uses {regs.get(name)} registers (> {cap})"
    print("\n".join(report))


def test_every_shipped_kernel_is_checked():
    """The kernels the CuPy runtime launches are all found by the source scan above."""
    found = set()
    for src in SOURCES:
        found |= _expected_kernels(src.read_text())
    for name in ("prologue", "mask_apply", "reduce_epilogue", "kspace_epilogue", "grad_sens", "row_step",
                 "row_grad"):
        for suf in ("c64", "c128"):
            assert f"flat_{name}_{suf}" in found, f"flat_{name}_{suf} is not compiled by this test"
    assert set(REGISTER_CAPS) <= found


def test_row_kernel_fits_at_fastmri_sizes():
    """Shared memory of the row kernels (forward and fused backward) at knee (15x368), brain (20x320)
    and C = 32: within the 227 KB opt-in of sm_90 in both precisions, with two blocks per SM (113 KB
    each) for complex64."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("flat_cupy_engine_compile", ROOT / "flat_kernels" / "cupy" / "_engine.py")
    eng = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eng)
    optin, two_per_sm = 227 * 1024, 228 * 1024 // 2 - 1024
    for C, W in ((15, 368), (20, 320), (32, 368), (32, 640)):
        p64 = eng.row_plan(C, W, 8, (two_per_sm, optin))
        assert p64 is not None and p64["smem_bytes"] <= two_per_sm, (C, W, p64)
        p128 = eng.row_plan(C, W, 16, (optin,))
        assert p128 is not None and p128["smem_bytes"] <= optin, (C, W, p128)
        assert p64["Cg"] * p64["chunks"] >= C and p128["Cg"] * p128["chunks"] >= C
        # the fused backward (both projections in shared memory) fits too, two complex64 blocks per SM
        g64 = eng.row_plan(C, W, 8, (two_per_sm, optin), kernel="row_grad")
        assert g64 is not None and g64["smem_bytes"] <= two_per_sm, (C, W, g64)
        g128 = eng.row_plan(C, W, 16, (optin,), kernel="row_grad")
        assert g128 is not None and g128["smem_bytes"] <= optin, (C, W, g128)
