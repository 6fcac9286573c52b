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

_FUNC = re.compile(r"Function properties for (\w+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                   r"(\d+) bytes spill loads")
_REGS = re.compile(r"Compiling entry function '(\w+)' for 'sm_90'.*?Used (\d+) registers", re.S)


def _expected_kernels(src: str) -> set[str]:
    """extern "C" kernel names: direct ones and those stamped out by an instantiation macro."""
    direct = set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(', src))
    stamped = set()
    for prefix in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)##SUF\s*\(', src):
        for suf in re.findall(r"^\s*FLAT_INSTANTIATE\((\w+),", src, re.M):
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
        assert regs.get(name, 0) <= MAX_REGISTERS, f"{name} uses {regs.get(name)} registers (> {MAX_REGISTERS})"
    print("\n".join(report))
