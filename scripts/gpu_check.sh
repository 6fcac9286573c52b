#!/usr/bin/env bash
# GPU kernel-parity check: the same job .github/workflows/gpu.yml runs, for any Linux box with an
# NVIDIA GPU (driver installed; network access to PyPI unless FLAT_GPU_NO_INSTALL=1).
#
#   scripts/gpu_check.sh                 # fresh venv, install, check, short benchmark
#   FLAT_GPU_NO_INSTALL=1 scripts/gpu_check.sh   # use the active Python environment as it is
#
# Steps
#   1. install the package with the [test,triton,cupy] extras into a venv ($FLAT_GPU_VENV, default
#      .venv-gpu); cupy-cuda12x needs CUDA 12 cuFFT/NVRTC libraries, taken from pip ("[ctk]" extra)
#      unless the import check below already finds them;
#   2. nvidia-smi, and a preflight that FAILS (does not skip) when torch sees no CUDA device or the
#      "cupy" backend cannot run: a GPU job whose tests all skipped would look green;
#   3. pytest -m gpu: every gpu-marked test of the repository (CuPy and Triton parity against the
#      reference and each other, small and knee/brain sizes, gradients, streams, CUDA graphs);
#   4. a short benchmark (knee 15x640x368, B=1 and 8: reference, triton, cupy; forward and
#      forward+backward) through benchmarks/ (the project's harness; JSON summary).
# Everything lands in $FLAT_GPU_OUT (default gpu-check-out/): nvidia-smi.txt, env.txt, junit-gpu.xml,
# pytest-gpu.log, bench.json, bench.log. The exit status is pytest's (the benchmark too must pass).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${FLAT_GPU_OUT:-gpu-check-out}
VENV=${FLAT_GPU_VENV:-.venv-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${FLAT_GPU_NO_INSTALL:-0}" != "1" ]; then
  "$PY" -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  pip install -q -c constraints.txt -e ".[test,triton,cupy]"
  if ! python -c "import cupy.cuda.cufft, cupy.cuda.nvrtc" >/dev/null 2>&1; then
    echo "cupy cannot load CUDA 12 cuFFT/NVRTC: installing them from pip (cupy-cuda12x[ctk])"
    pip install -q "cupy-cuda12x[ctk]"
  fi
fi

echo "== nvidia-smi"
nvidia-smi | tee "$OUT/nvidia-smi.txt"

echo "== preflight"
python - <<'EOF' | tee "$OUT/env.txt"
import sys, datetime, platform
import torch
print("date (UTC):", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
print("python:", sys.version.split()[0], platform.platform())
print("torch:", torch.__version__, "CUDA runtime:", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("FAIL: torch sees no CUDA device; a GPU check cannot run here")
print("device:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
import flat.backends as fb
print("available backends:", fb.available_backends())
for name in ("cupy", "triton"):
    reason = fb.unavailable_reason(name, "cuda")
    print(f"{name}:", "ok" if reason is None else f"UNAVAILABLE: {reason}")
if fb.unavailable_reason("cupy", "cuda") is not None:
    sys.exit("FAIL: the cupy backend cannot run on this GPU box")
import cupy
print("cupy:", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
# one op end to end, so a broken install fails here with a readable error
import flat.ops as fo
x = torch.randn(1, 16, 12, dtype=torch.complex64, device="cuda")
S = torch.randn(1, 3, 16, 12, dtype=torch.complex64, device="cuda")
m = torch.ones(12, device="cuda")
a = fo.normal(x, S, m, backend="cupy")
b = fo.normal(x, S, m, backend="reference")
err = float((a - b).abs().norm() / b.abs().norm())
print(f"smoke: cupy normal vs reference rel err {err:.2e}")
if not err < 1e-5:
    sys.exit("FAIL: cupy smoke parity")
EOF

echo "== pytest -m gpu"
set +e
python -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$OUT/junit-gpu.xml" tests 2>&1 \
  | tee "$OUT/pytest-gpu.log"
status=${PIPESTATUS[0]}
set -e

echo "== short benchmark (knee, reference / triton / cupy)"
set +e
FLAT_BENCH_GRID=gpu FLAT_BENCH_TIME=${FLAT_BENCH_TIME:-0.2} \
  python -m pytest benchmarks/bench_ops.py -q -p no:cacheprovider \
  -k "knee and not 2d and (reference or triton or cupy)" \
  --flat-bench-json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
bstatus=${PIPESTATUS[0]}
set -e

echo "results in $OUT/ (pytest exit $status, benchmark exit $bstatus)"
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$bstatus"
