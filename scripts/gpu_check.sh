#!/usr/bin/env bash
# The GPU check: one run on a bare GPU box (no network, nothing installed), <= 8 minutes on an
# H100/H200 including Triton/NVRTC compilation, at most 8 result files. What it does, which CuPy
# to install and how to read the table: docs/gpu.md.
#
#   scripts/gpu_check.sh [--out DIR] [--only STAGE[,STAGE...]] [--dry-run] [-h]
#
# Environment: FLAT_GPU_OUT (results, default gpu-check-out), FLAT_GPU_PYTHON (default python3),
# FLAT_GPU_INSTALL=1 (make a venv $FLAT_GPU_VENV and pip install first; needs network),
# FLAT_GPU_DRY_RUN=1 (same as --dry-run), FLAT_GPU_WORKERS (pytest -n, default 4),
# FLAT_GPU_TIMEOUT_<STAGE> (seconds, overrides one stage's bound).
#
# Stages, each bounded by its own `timeout` (seconds; their sum plus the kill grace is <= 480):
#   env       nvidia-smi, versions, backends; stops the run if torch sees no CUDA device
#   tests     pytest -m gpu with compiled kernels (TRITON_INTERPRET=0), -n workers warming the
#             Triton JIT in parallel: parity at knee/brain sizes, B = 1 and 8, gradients, graph
#             replay, determinism, sync audit
#   sanitize  compute-sanitizer memcheck on tiny odd shapes (skipped, with the reason, where the
#             tool is missing or refuses the device)
#   micro     flow_step per backend and Triton precision: forward, forward+backward, error vs
#             complex128, GB/s against the measured copy bandwidth, peak memory
#   model     12-cascade FLAT model: recon slices/s eager vs compiled vs CUDA graphs, a training
#             step's time and peak memory, per backend against the reference path
#   summary   one Markdown table (printed last, also summary.md) for benchmarks/RESULTS.md
#   bench     only with FLAT_GPU_FULL_BENCH=1 or --only bench (beyond the 8 minutes and 8 files):
#             the project's whole GPU grid, benchmarks/bench_ops.py and bench_model.py -> bench.json/.md
# The exit status is 0 only if every stage that ran passed (a skipped sanitizer is not a failure).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

STAGES="env tests sanitize micro model bench summary"
declare -A LIMIT=([env]=30 [tests]=225 [sanitize]=45 [micro]=60 [model]=75 [bench]=900 [summary]=10)
GRACE=5  # seconds between TERM and KILL
FILES="env.txt pytest-gpu.log sanitizer.log micro.json model.json stages.log summary.md"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 2; }

OUT=${FLAT_GPU_OUT:-gpu-check-out}
DRY=${FLAT_GPU_DRY_RUN:-0}
ONLY=""
INTERNAL=""  # --_stage NAME: run one stage's body (how `timeout` runs a stage; not for users)
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --_stage) INTERNAL=$2; shift ;;
    --dry-run) DRY=1 ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift ;;
    --out=*) OUT=${1#--out=} ;;
    --only) [ $# -ge 2 ] || die "--only needs stage names ($STAGES)"; ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
  shift
done
if [ -n "$ONLY" ]; then
  for s in ${ONLY//,/ }; do
    case " $STAGES " in *" $s "*) ;; *) die "--only: unknown stage '$s' (stages: $STAGES)" ;; esac
  done
fi
for s in $STAGES; do  # FLAT_GPU_TIMEOUT_TESTS=300 etc.
  var="FLAT_GPU_TIMEOUT_${s^^}"
  if [ -n "${!var:-}" ]; then
    [[ ${!var} =~ ^[0-9]+$ ]] && [ "${!var}" -gt 0 ] || die "$var: expected a positive number of seconds, got '${!var}'"
    LIMIT[$s]=${!var}
  fi
done
WORKERS=${FLAT_GPU_WORKERS:-4}
[[ $WORKERS =~ ^[0-9]+$ ]] && [ "$WORKERS" -ge 1 ] || die "FLAT_GPU_WORKERS: expected a positive integer, got '$WORKERS'"
FULL=${FLAT_GPU_FULL_BENCH:-0}
selected() {
  if [ -n "$ONLY" ]; then case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; fi
  [ "$1" != bench ] || [ "$FULL" = "1" ]
}

selected bench && FILES="$FILES bench.json bench.md"
total=0
for s in $STAGES; do selected "$s" && total=$(( total + LIMIT[$s] + GRACE )); done

if [ "$DRY" = "1" ]; then
  echo "gpu_check dry run: stages (timeout s), results in $OUT/"
  for s in $STAGES; do selected "$s" && echo "stage $s ${LIMIT[$s]}"; done
  echo "bound ${total} s (stage timeouts + ${GRACE} s kill grace each)"
  for f in $FILES; do echo "file $OUT/$f"; done
  exit 0
fi

PY=${FLAT_GPU_PYTHON:-python3}
if [ -z "$INTERNAL" ] && [ "${FLAT_GPU_INSTALL:-0}" = "1" ]; then  # a box with network: a fresh venv, pip install
  VENV=${FLAT_GPU_VENV:-.venv-gpu}
  "$PY" -m venv "$VENV" && . "$VENV/bin/activate" || die "cannot create the venv $VENV"
  PY=python; export FLAT_GPU_PYTHON=python  # the stages (child processes) use the venv too
  pip install -q -c constraints.txt -e ".[test,triton]" pytest-xdist pytest-timeout || die "pip install failed"
  cuda=$("$PY" -c "import torch; print((torch.version.cuda or '0').split('.')[0])")
  case "$cuda" in
    12) extras="[test,triton,cupy]" ;;
    13) extras="[test,triton,cupy13]" ;;
    *) die "torch reports CUDA '$cuda': no CuPy wheel to match (docs/gpu.md)" ;;
  esac
  pip install -q -c constraints.txt -e ".$extras" || die "pip install .$extras failed"
fi

LOG="$OUT/stages.log"
if [ -z "$INTERNAL" ]; then
  mkdir -p "$OUT" || die "cannot create $OUT"
  for f in $FILES; do rm -f "$OUT/$f"; done
  echo "gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC') bound ${total} s" >"$LOG"
fi
# From the source tree, compiled kernels, caches that a rerun reuses (outside $OUT: file limit).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
CACHE=${FLAT_GPU_CACHE:-${TMPDIR:-/tmp}/flat-gpu-cache}
export TRITON_CACHE_DIR="$CACHE/triton" CUPY_CACHE_DIR="$CACHE/cupy"
mkdir -p "$TRITON_CACHE_DIR" "$CUPY_CACHE_DIR"
T0=$(date +%s)
FAILED=0

# run_stage NAME CMD...: runs CMD under `timeout`, logs "stage NAME rc=… s=… status=…" to stages.log
run_stage() {
  local name=$1; shift
  local t=${LIMIT[$name]} s0 rc status
  s0=$(date +%s)
  echo "== +$(( s0 - T0 ))s stage $name (timeout ${t}s)"
  timeout -k "$GRACE" "$t" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    77) status=skipped ;;  # the stage's own "cannot run here" (reason in its log)
    *) status=fail ;;
  esac
  [ "$status" = timeout ] || [ "$status" = fail ] && FAILED=1
  echo "stage $name rc=$rc s=$(( $(date +%s) - s0 )) status=$status" | tee -a "$LOG"
  return $rc
}

stage_env() {
  local rc=0
  { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: not available"
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
      "$PY" scripts/gpu_check.py env || rc=$?
    else
      rc=3; echo "FAIL: torch sees no CUDA device (torch.cuda.is_available() is False): nothing to check here"
    fi; } >"$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  return $rc
}

stage_tests() {
  local xd="" to=""
  "$PY" -c "import xdist" 2>/dev/null && xd="-n $WORKERS"
  "$PY" -c "import pytest_timeout" 2>/dev/null && to="--timeout $(( LIMIT[tests] - 25 ))"
  # shellcheck disable=SC2086
  "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider $xd $to tests >"$OUT/pytest-gpu.log" 2>&1
  local rc=$?
  tail -n 15 "$OUT/pytest-gpu.log"
  # a GPU run whose tests all skipped would look green: demand that some passed
  if [ $rc -eq 0 ] && ! tail -n 3 "$OUT/pytest-gpu.log" | grep -qE "[0-9]+ passed"; then
    echo "FAIL: no gpu test passed"; return 1
  fi
  return $rc
}

stage_sanitize() {
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    echo "skipped: compute-sanitizer is not on PATH" | tee "$OUT/sanitizer.log"; return 77
  fi
  compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 "$PY" scripts/gpu_check.py sanitize \
    >"$OUT/sanitizer.log" 2>&1
  local rc=$?
  tail -n 8 "$OUT/sanitizer.log"
  if [ $rc -ne 0 ] && grep -qE "Device not supported|error 999|Unable to find injection library|not supported on this platform" "$OUT/sanitizer.log"; then
    echo "skipped: compute-sanitizer refused this machine (e.g. a gVisor sandbox): $(grep -m1 -E 'not supported|999|injection' "$OUT/sanitizer.log")" \
      | tee -a "$OUT/sanitizer.log"
    return 77
  fi
  return $rc
}

stage_micro() {
  "$PY" scripts/gpu_check.py micro --out "$OUT/micro.json" --deadline $(( LIMIT[micro] - 8 )) >>"$LOG" 2>&1
  local rc=$?
  grep -E "^(\||micro|error)" "$LOG" | tail -n 12
  return $rc
}

stage_model() {
  "$PY" scripts/gpu_check.py model --out "$OUT/model.json" --deadline $(( LIMIT[model] - 10 )) >>"$LOG" 2>&1
  local rc=$?
  grep -E "^(\||model|error)" "$LOG" | tail -n 12
  return $rc
}

stage_bench() {
  FLAT_BENCH_GRID=gpu FLAT_BENCH_TIME=${FLAT_BENCH_TIME:-0.2} "$PY" -m pytest benchmarks/bench_ops.py \
    benchmarks/bench_model.py -q -p no:cacheprovider --flat-bench-json "$OUT/bench.json" >>"$LOG" 2>&1
}

stage_summary() { "$PY" scripts/gpu_check.py summary --dir "$OUT"; }

if [ -n "$INTERNAL" ]; then "stage_$INTERNAL"; exit $?; fi

ME=$(realpath "$0")
for s in $STAGES; do
  selected "$s" || continue
  run_stage "$s" bash "$ME" --_stage "$s" --out "$OUT"
  rc=$?
  if [ "$s" = env ] && [ $rc -ne 0 ]; then  # no GPU or a broken import: nothing else can run
    echo "gpu_check: the env stage failed (rc=$rc); skipping to the summary" | tee -a "$LOG"
    ONLY=summary
  fi
done
echo "total $(( $(date +%s) - T0 )) s" >>"$LOG"
echo "results in $OUT/: $(cd "$OUT" && ls | tr '\n' ' ')"
exit $FAILED
