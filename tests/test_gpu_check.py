"""scripts/gpu_check.sh and scripts/gpu_check.py: the parts a CPU machine can check.

Syntax, argument handling, the dry run's stage and file list (the 8-minute and 8-file bounds),
that a stage is really stopped by its timeout and the run goes on to the summary, the refusal on a
machine with no CUDA device, and the summary table from recorded results. The GPU stages
themselves run on a GPU box (docs/gpu.md). Also the interpreter switch of tests/conftest.py.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SH = ROOT / "scripts" / "gpu_check.sh"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def _run(*args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if not k.startswith("FLAT_GPU_")}
    e.update(env or {})
    return subprocess.run([BASH, str(SH), *args], capture_output=True, text=True, env=e, cwd=ROOT, timeout=timeout)


def _dry(*args, env=None):
    r = _run("--dry-run", *args, env=env)
    assert r.returncode == 0, r.stderr
    stages = {ln.split()[1]: int(ln.split()[2]) for ln in r.stdout.splitlines() if ln.startswith("stage ")}
    files = [ln.split(None, 1)[1] for ln in r.stdout.splitlines() if ln.startswith("file ")]
    bound = int(next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("bound ")))
    return stages, files, bound


def test_bash_syntax():
    r = subprocess.run([BASH, "-n", str(SH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dry_run_stages_files_and_time_bound(tmp_path):
    stages, files, bound = _dry("--out", str(tmp_path / "o"))
    assert list(stages) == ["env", "tests", "sanitize", "micro", "model", "summary"]
    assert all(t > 0 for t in stages.values())
    assert bound <= 480, f"stage timeouts add up to {bound} s > 8 minutes"
    assert bound >= sum(stages.values())
    assert len(files) <= 8 and len(set(files)) == len(files), files
    assert all(f.startswith(str(tmp_path / "o") + "/") for f in files)
    assert not (tmp_path / "o").exists(), "a dry run must not create anything"
    # the environment variable is the same switch
    assert _run(env={"FLAT_GPU_DRY_RUN": "1"}).stdout.startswith("gpu_check dry run")


def test_stage_selection_and_timeout_override():
    stages, _, bound = _dry("--only", "micro,summary", env={"FLAT_GPU_TIMEOUT_MICRO": "7"})
    assert stages == {"micro": 7, "summary": 10}
    assert bound == 7 + 10 + 2 * 5
    stages, files, _ = _dry(env={"FLAT_GPU_FULL_BENCH": "1"})  # the opt-in whole benchmark grid
    assert "bench" in stages and any(f.endswith("/bench.json") for f in files)


@pytest.mark.parametrize("args,env,needle", [
    (["--bogus"], {}, "unknown argument '--bogus'"),
    (["--only", "tests,warp"], {}, "unknown stage 'warp'"),
    (["--out"], {}, "--out needs a folder"),
    ([], {"FLAT_GPU_TIMEOUT_TESTS": "abc"}, "FLAT_GPU_TIMEOUT_TESTS"),
    ([], {"FLAT_GPU_WORKERS": "0"}, "FLAT_GPU_WORKERS"),
])
def test_bad_arguments_one_line_error(args, env, needle):
    r = _run(*args, env=env)
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_help():
    r = _run("--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout and "FLAT_GPU_INSTALL" in r.stdout


def test_a_stage_is_stopped_by_its_timeout_and_the_run_goes_on(tmp_path):
    """A stage that hangs (here: a "python3" that sleeps) is killed at its bound; the summary
    stage still runs and the exit status says the check failed."""
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    out = tmp_path / "o"
    t0 = time.monotonic()
    r = _run("--out", str(out), env={"FLAT_GPU_PYTHON": str(fake), "FLAT_GPU_TIMEOUT_ENV": "2",
                                     "FLAT_GPU_TIMEOUT_SUMMARY": "2"})
    took = time.monotonic() - t0
    log = (out / "stages.log").read_text()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "stage env rc=124" in log and "status=timeout" in log, log
    assert "stage summary rc=124" in log, log  # the summary ran (and hung, and was stopped too)
    assert "stage tests" not in log, "stages after a failed env stage must not run"
    assert took < 25, f"took {took:.0f} s: a timeout did not stop its stage"


def test_no_cuda_device_is_refused_clearly(tmp_path):
    """On this CPU machine: the env stage fails with the reason, the rest is skipped, summary written."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: this checks the refusal on a machine without one")
    out = tmp_path / "o"
    r = _run("--out", str(out), env={"FLAT_GPU_PYTHON": sys.executable}, timeout=120)
    assert r.returncode == 1
    assert "torch sees no CUDA device" in (out / "env.txt").read_text()
    summary = (out / "summary.md").read_text()
    assert "| env | fail" in summary and "no CUDA device" in summary
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "stages.log", "summary.md"]


def test_summary_table_from_recorded_results(tmp_path):
    """gpu_check.py summary turns the stage files into the Markdown table for RESULTS.md."""
    (tmp_path / "env.txt").write_text("date: 2026-12-04 01:00 UTC\ndevice: NVIDIA H200, capability 9.0\n"
                                      "torch: 2.11.0+cu130 CUDA 13.0\ntriton: 3.6.0\ncupy: 14.2.0\n")
    (tmp_path / "stages.log").write_text("stage env rc=0 s=12 status=ok\nstage tests rc=0 s=200 status=ok\n"
                                         "stage sanitize rc=77 s=1 status=skipped\n")
    (tmp_path / "pytest-gpu.log").write_text("....\n======= 41 passed, 3 skipped in 190.2s =======\n")
    (tmp_path / "sanitizer.log").write_text("skipped: compute-sanitizer refused this machine: Device not supported\n")
    micro = {"copy_Bps": 4.3e12, "rows": [
        dict(size="knee", B=1, C=15, H=640, W=368, mask="col", backend="triton", precision="tf32x3",
             fwd_us=[90.1, 91.0], floor_us=8.3, fwd_GBps=397.0, fwd_copy_frac=0.092, fwdbwd_us=300.5,
             rel_err_c128=2.1e-7, fwd_peak_MB=40.0),
        dict(size="knee", B=8, C=15, H=640, W=368, mask="col", backend="cupy", precision=None,
             error="not run: stage time budget spent")]}
    (tmp_path / "micro.json").write_text(json.dumps(micro))
    model = {"model": "FLAT K=12", "data": "knee 8 slices", "rows": [
        dict(case="recon", backend="triton", mode="graphs", slices_per_s=55.2, peak_MB=900.0, first_call_s=20.1,
             rel_err_vs_reference_eager=1e-6),
        dict(case="train", backend="reference", mode="eager", step_ms=120.5, peak_MB=5000.0, first_call_s=3.0)]}
    (tmp_path / "model.json").write_text(json.dumps(model))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "summary", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "summary.md").read_text()
    assert text.strip() in r.stdout  # printed and written: the same table
    for needle in ("- device: NVIDIA H200", "| tests | ok (rc 0) | 200 |", "| sanitize | skipped (rc 77) | 1 |",
                   "pytest -m gpu: 41 passed, 3 skipped in 190.2s", "memcheck: skipped: compute-sanitizer refused",
                   "| knee | 1 | col | triton | tf32x3 | 90.1 / 91.0 | 8.3 | 397.0 (9 %) | 300.5 | 2.1e-07 | 40.0 |",
                   "| knee | 8 | col | cupy | - | not run: stage time budget spent |",
                   "| recon | triton | graphs | 55.2 slices/s | 900.0 | 20.1 | 1.0e-06 |",
                   "| train | reference | eager | 120.5 ms | 5000.0 | 3.0 | - |"):
        assert needle in text, f"{needle!r} not in\n{text}"


def test_conftest_sets_the_interpreter_only_without_cuda():
    """tests/conftest.py: TRITON_INTERPRET=1 where torch sees no CUDA device, untouched where it
    does, an explicit value always wins; and deciding imports no triton."""
    code = (
        "import os, sys, runpy, torch\n"
        "torch.cuda.is_available = lambda: {cuda}\n"
        "g = runpy.run_path('tests/conftest.py')\n"
        "print(os.environ.get('TRITON_INTERPRET'), g['INTERPRET'], 'triton' in sys.modules)\n"
    )
    for cuda, preset, want in ((False, None, "1 True False"), (True, None, "None False False"),
                               (True, "1", "1 True False"), (False, "0", "0 False False")):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        if preset is not None:
            env["TRITON_INTERPRET"] = preset
        r = subprocess.run([sys.executable, "-c", code.format(cuda=cuda)], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == want.split(), (cuda, preset, r.stdout)
