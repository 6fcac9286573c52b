"""``--device`` on the commands (docs/gpu.md): a device that is not there, or a backend that cannot
run on the device, is one clear line and a non-zero exit before any work; the chosen device and
backend are printed once. (On a GPU the same commands run there: scripts/gpu_check.sh.)"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _flat(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("FLAT_BACKEND", "FLAT_DEBUG")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "flat", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_demo_refuses_a_missing_device_before_any_work(tmp_path, device):
    out = tmp_path / "demo"
    r = _flat("demo", "--out", str(out), "--device", device, "--steps", "1")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "CUDA is not available" in r.stderr, r.stderr
    assert not out.exists()


def test_demo_refuses_a_backend_that_cannot_run_there(tmp_path):
    out = tmp_path / "demo"
    r = _flat("demo", "--out", str(out), "--device", "cpu", "--backend", "cupy", "--steps", "1")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "cupy" in r.stderr, r.stderr
    assert not out.exists()


def test_demo_device_flag_bad_name(tmp_path):
    r = _flat("demo", "--out", str(tmp_path / "d"), "--device", "gpu0")
    assert r.returncode != 0 and "--device" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
