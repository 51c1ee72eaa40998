#!/usr/bin/env bash
# One run on a fresh GPU machine (no network): build dtpm_fast with its CUDA module, run the GPU
# tests, run the GPU benchmarks, print a short table. The whole run stays under ~540 s (the device
# runner kills a command at 600 s): every section runs under `timeout`, with what is left of the
# budget.
#
#   bash bench/gpu_check.sh            # full sizes (issue 4 targets)
#   QUICK=1 bash bench/gpu_check.sh    # small sizes, a smoke run; on a machine without a GPU it
#                                      # builds, checks the import and the CPU-side tests, and stops
#
# Needs: nvcc, CMake >= 3.24, ninja, a C++ compiler, Python with numpy, scipy, torch (CUDA),
# pytest, pybind11 (CMake config) - all already installed, nothing is downloaded. scikit-build-core
# is not needed: the build is plain CMake into build/gpu-check, and the package is used from the
# source tree through PYTHONPATH (the installed environment is left alone). CuPy and faiss are
# optional: their tests skip and the summary says which were missing. If pybind11 is missing,
# put wheels in .gpu-wheels/ (pip download pybind11 -d .gpu-wheels, on a machine with network)
# and carry that folder along; they are installed from there with --no-index.
#
# Results: bench/results/gpu_check_<stamp>.md (summary, written as the run goes), .log
# (everything), gpu_tests_<stamp>.txt (pytest output), gpu_tests_<stamp>.json (outcomes of the
# tests marked gpu) and gpu_bench_<stamp>.md/.json (benchmark rows). When $OUT is set (the device
# runner returns files from there) the log and the pytest output are written into it as they
# grow, and the other files are copied there after every section, so a run killed at the cap
# still returns what it had.
#
# Exit status:
#   0  all good (with QUICK=1 on a machine without a GPU: build + import + CPU-side tests passed)
#   1  a benchmark target was missed          2  the benchmark script failed or timed out
#   3  a tool is missing                      4  configure or build failed or timed out
#   5  the built package does not import      6  GPU tests failed or timed out
#   7  torch sees a GPU but dtpm_fast._cuda finds none (device_count() == 0, e.g. a driver older
#      than the CUDA runtime linked statically into _cuda): every GPU test would skip
#   8  no GPU visible to torch (full run)     9  every test marked gpu was skipped
#   10 the time budget ran out before a section could start
#
# Environment: QUICK=1 (small sizes); GPU_CHECK_BUDGET_S (default 540), GPU_CHECK_BUILD_S (at most
# this for configure + build, default 240), GPU_CHECK_TESTS_S (at most this for the tests, 200).
set -uo pipefail
cd "$(dirname "$0")/.."
# The interpreter: python3 first (on the GPU machine a plain python3 is the one with PyTorch, and
# there may be no `python`), else python.
PY=$(command -v python3 || command -v python) || {
  echo "FATAL: no python3 or python on PATH"
  exit 3
}
export PYTHONUNBUFFERED=1
ROOT=$PWD
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$ROOT/bench/results
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check_$STAMP.log
MD=$RESULTS/gpu_check_$STAMP.md
TESTLOG=$RESULTS/gpu_tests_$STAMP.txt
TALLY=$RESULTS/gpu_tests_$STAMP.json
BENCH_MD=$RESULTS/gpu_bench_$STAMP.md
BUILD=$ROOT/build/gpu-check
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
BUILD_MAX_S=${GPU_CHECK_BUILD_S:-240}
TESTS_MAX_S=${GPU_CHECK_TESTS_S:-200}
KILL_GRACE_S=10 # timeout -k: SIGKILL this long after SIGTERM
T0=$(date +%s)

OUT_DIR=""
if [ -n "${OUT:-}" ] && mkdir -p "$OUT" 2>/dev/null; then OUT_DIR=$OUT; fi
# Streams that grow go to $OUT directly (tee), so a kill mid-section still leaves them there.
out_copy() { [ -n "$OUT_DIR" ] && echo "$OUT_DIR/$(basename "$1")"; }
exec 3>&1 4>&2
# shellcheck disable=SC2046
exec > >(tee "$LOG" $(out_copy "$LOG")) 2>&1
TEE_PID=$!

elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((BUDGET_S - $(elapsed))); }
min() { echo $(($1 < $2 ? $1 : $2)); }
# Copy every result file that exists so far into $OUT (the log and pytest output are already there).
save() {
  [ -n "$OUT_DIR" ] || return 0
  local f
  for f in "$MD" "$TALLY" "$BENCH_MD" "${BENCH_MD%.md}.json"; do
    [ -f "$f" ] && cp -f "$f" "$OUT_DIR"/ 2>/dev/null
  done
  return 0
}
section() {
  save
  echo
  echo "=== $* [$(elapsed) s]"
}
note() { echo "- $*" >>"$MD"; }
finish() {
  local status=$1 meaning=$2
  note "exit status ${status}: ${meaning}"
  note "total: $(elapsed) s of a ${BUDGET_S} s budget"
  if [ -f "$BENCH_MD" ]; then
    echo >>"$MD"
    cat "$BENCH_MD" >>"$MD"
  fi
  section "summary"
  cat "$MD"
  save
  # Close our end of the tee pipe and let tee write its last lines before the runner collects $OUT.
  exec 1>&3 2>&4 3>&- 4>&-
  wait "$TEE_PID" 2>/dev/null
  exit "$status"
}
# LIMIT := the timeout of the next section: at most $2 s, and what the budget leaves after reserving
# $3 s for later sections; finishes the run with status 10 when that leaves less than 30 s.
set_limit() {
  local available=$(($(left) - $3 - KILL_GRACE_S))
  if [ "$available" -lt 30 ]; then
    echo "FATAL: only $(left) s of the ${BUDGET_S} s budget left; stopping before the $1"
    finish 10 "out of time before the $1"
  fi
  LIMIT=$(min "$2" "$available")
  echo "$1: limit ${LIMIT} s"
}

{
  echo "# GPU check $STAMP"
  echo
  if [ -n "${QUICK:-}" ]; then echo "- mode: QUICK=1 (smoke run)"; else echo "- mode: full sizes"; fi
  echo "- host: $(hostname), $(nproc) CPUs"
} >"$MD"

section "environment"
if command -v nvidia-smi >/dev/null; then
  GPUS=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)
else
  GPUS="none (no nvidia-smi)"
fi
echo "GPUs (name, driver, memory): ${GPUS}"
note "GPUs (name, driver, memory): $(echo "$GPUS" | paste -sd ';' -)"
nvcc --version | tail -n 2 || {
  echo "FATAL: nvcc not found"
  finish 3 "nvcc not found"
}
cmake --version | head -n 1
ninja --version 2>/dev/null | sed 's/^/ninja /' || echo "ninja: missing (CMake will use make)"
timeout -k 5 90 "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "scipy", "torch", "cupy", "faiss", "pybind11", "pytest", "sklearn"):
    try:
        mod = importlib.import_module(name)
        extra = ""
        if name == "torch":
            extra = f" (cuda {mod.version.cuda}, available={mod.cuda.is_available()})"
        if name == "faiss":
            extra = f" (GPU support: {hasattr(mod, 'StandardGpuResources')})"
        print(f"{name} {getattr(mod, '__version__', '?')}{extra}")
    except Exception as exc:  # report and go on: optional pieces only skip tests
        print(f"{name}: MISSING ({type(exc).__name__}: {exc})")
EOF

section "build (CMake, DTPM_CUDA=ON)"
if ! "$PY" -m pybind11 --cmakedir >/dev/null 2>&1 && [ -d "$ROOT/.gpu-wheels" ]; then
  "$PY" -m pip install --no-index --find-links "$ROOT/.gpu-wheels" pybind11 || true
fi
PYBIND11_DIR=$("$PY" -m pybind11 --cmakedir 2>/dev/null) || {
  echo "FATAL: pybind11 is not installed (see the header of this script)"
  finish 3 "pybind11 missing"
}
# The version, written once in pyproject.toml; tomllib is Python 3.11+, so 3.10 reads it with a regex.
VERSION=$(
  "$PY" - <<'EOF'
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    text = open("pyproject.toml", encoding="utf-8").read()
    project = re.search(r"^\[project\][ \t]*$(.*?)(?=^\[|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    found = project and re.search(r"^version\s*=\s*[\"']([^\"']+)[\"']", project.group(1), flags=re.MULTILINE)
    print(found.group(1) if found else "")
else:
    with open("pyproject.toml", "rb") as f:
        print(tomllib.load(f)["project"]["version"])
EOF
)
[ -n "$VERSION" ] || echo "WARNING: no version found in pyproject.toml; __version__ will be empty"
echo "version ${VERSION}"
GEN=$(command -v ninja >/dev/null && echo "-G Ninja" || echo "")
# Only the GPU this runs on (sm_90 for the H200): a third of the default build's CUDA compile time.
# CI compiles the release set (80-real 90-real 90-virtual) on every commit.
CUDA_ARCHS=${CUDAARCHS:-90-real}
set_limit "configure and build" "$BUILD_MAX_S" 150 # 150 s kept for the tests and the benchmarks
BUILD_LIMIT=$LIMIT
BUILD_T0=$(date +%s)
# shellcheck disable=SC2086
timeout -k "$KILL_GRACE_S" "$BUILD_LIMIT" cmake -S "$ROOT" -B "$BUILD" $GEN -DCMAKE_BUILD_TYPE=Release \
  -DSKBUILD_PROJECT_NAME=dtpm_fast -DSKBUILD_PROJECT_VERSION="$VERSION" -Dpybind11_DIR="$PYBIND11_DIR" \
  -DDTPM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" -DPython_EXECUTABLE="$PY" >"$BUILD.configure.log" 2>&1
CONFIGURE_STATUS=$?
if [ "$CONFIGURE_STATUS" -ne 0 ]; then
  tail -n 40 "$BUILD.configure.log"
  echo "FATAL: configure failed (status $CONFIGURE_STATUS; 124 = timed out)"
  finish 4 "configure failed (status $CONFIGURE_STATUS)"
fi
BUILD_LEFT=$((BUILD_LIMIT - ($(date +%s) - BUILD_T0)))
[ "$BUILD_LEFT" -ge 10 ] || BUILD_LEFT=10
timeout -k "$KILL_GRACE_S" "$BUILD_LEFT" cmake --build "$BUILD" -j "$(nproc)"
BUILD_STATUS=$?
BUILD_S=$(($(date +%s) - BUILD_T0))
if [ "$BUILD_STATUS" -ne 0 ]; then
  if [ "$BUILD_STATUS" -eq 124 ] || [ "$BUILD_STATUS" -eq 137 ]; then
    echo "FATAL: build timed out after ${BUILD_S} s (limit ${BUILD_LIMIT} s; GPU_CHECK_BUILD_S raises it)"
    finish 4 "build timed out after ${BUILD_S} s"
  fi
  echo "FATAL: build failed (status $BUILD_STATUS)"
  finish 4 "build failed"
fi
note "build: ${BUILD_S} s (cmake -j $(nproc), DTPM_CUDA=ON, CUDA architectures ${CUDA_ARCHS}, version ${VERSION:-?})"
# Stage the package (sources + fresh modules) in the build folder and put it first on the path;
# the source tree and any installed dtpm_fast are left alone.
STAGE=$BUILD/stage
rm -rf "$STAGE" && mkdir -p "$STAGE"
cp -r "$ROOT/python/dtpm_fast" "$STAGE/"
rm -f "$STAGE"/dtpm_fast/*.so
cp "$BUILD"/_core*.so "$BUILD"/csrc/cuda/_cuda*.so "$STAGE/dtpm_fast/" || {
  echo "FATAL: the build produced no _core/_cuda module"
  finish 4 "no _core/_cuda module after the build"
}
export PYTHONPATH=$STAGE${PYTHONPATH:+:$PYTHONPATH}
BOOT=$(mktemp -d)
# An editable install's import hook would shadow PYTHONPATH: disable it for this run.
cat >"$BOOT/sitecustomize.py" <<'EOF'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
EOF
# A pytest plugin (-p gpu_check_tally): outcomes of the tests marked gpu, rewritten after each one,
# so that "everything skipped" cannot pass for green.
cat >"$BOOT/gpu_check_tally.py" <<'EOF'
import json
import os

_PATH = os.environ["GPU_CHECK_TALLY"]
_outcome = {}


def pytest_runtest_logreport(report):
    if "gpu" not in report.keywords or _outcome.get(report.nodeid) == "failed":
        return
    if report.failed:
        _outcome[report.nodeid] = "failed"
    elif report.skipped:
        _outcome[report.nodeid] = "skipped"
    elif report.when == "call":
        _outcome[report.nodeid] = "passed"
    else:
        return
    counts = {key: sum(v == key for v in _outcome.values()) for key in ("passed", "failed", "skipped")}
    with open(_PATH + ".tmp", "w") as f:
        json.dump(counts, f)
    os.replace(_PATH + ".tmp", _PATH)
EOF
export PYTHONPATH=$BOOT:$PYTHONPATH

section "import check"
# 20: torch sees no GPU; 21: torch sees one but _cuda does not (the tests would all skip).
timeout -k 5 90 "$PY" - <<'EOF'
import sys

import dtpm_fast
import dtpm_fast._cuda as c
from dtpm_fast import _device

print("dtpm_fast from", dtpm_fast.__file__)
print("build_info", dtpm_fast.build_info())
print("dtpm_fast._cuda: device_count", c.device_count(), "| device_status:", c.device_status())
try:
    import torch
except ImportError as exc:
    print("torch: MISSING", exc)
    sys.exit(20)
torch_gpu = torch.cuda.is_available()
print("torch", torch.__version__, "cuda", torch.version.cuda, "is_available", torch_gpu,
      "devices", torch.cuda.device_count())
print("dtpm_fast._device.cuda_status():", _device.cuda_status())
if torch_gpu and c.device_count() == 0:
    print(f"FATAL: torch sees {torch.cuda.device_count()} GPU(s) but dtpm_fast._cuda sees none: "
          f"{c.device_status()}. The CUDA runtime is linked statically into _cuda, so the driver must "
          "support the toolkit it was built with (CUDA 13 needs driver >= 580).")
    sys.exit(21)
sys.exit(0 if torch_gpu else 20)
EOF
IMPORT_STATUS=$?
NO_GPU=""
case $IMPORT_STATUS in
  0) note "import: ok, GPU visible to torch and to dtpm_fast._cuda" ;;
  20)
    NO_GPU=1
    note "import: ok, but **no GPU visible to torch**: the tests marked gpu skip, no benchmarks"
    ;;
  21) finish 7 "torch sees a GPU but dtpm_fast._cuda does not: $("$PY" -c 'import dtpm_fast._cuda as c; print(c.device_status())' 2>&1 | tail -n 1)" ;;
  *)
    echo "FATAL: the built package does not import (status $IMPORT_STATUS)"
    finish 5 "the built package does not import"
    ;;
esac

section "GPU tests (tests/test_gpu.py)"
set_limit "tests" "$TESTS_MAX_S" $([ -n "$NO_GPU" ] && echo 0 || echo 100) # 100 s kept for the benchmarks
TEST_LIMIT=$LIMIT
# shellcheck disable=SC2046
GPU_CHECK_TALLY=$TALLY timeout -k "$KILL_GRACE_S" "$TEST_LIMIT" "$PY" -m pytest tests/test_gpu.py -q -rs \
  -p no:cacheprovider -p gpu_check_tally --maxfail=25 --no-header --durations=10 2>&1 |
  tee "$TESTLOG" $(out_copy "$TESTLOG") >/dev/null
TEST_STATUS=${PIPESTATUS[0]}
tail -n 60 "$TESTLOG"
TEST_LINE=$(tail -n 1 "$TESTLOG")
read -r GPU_PASSED GPU_FAILED GPU_SKIPPED < <("$PY" -c "
import json, sys
try:
    c = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    c = {}
print(c.get('passed', 0), c.get('failed', 0), c.get('skipped', 0))" "$TALLY")
note "tests/test_gpu.py: status ${TEST_STATUS} (124 = timed out after ${TEST_LIMIT} s): ${TEST_LINE:-no summary line}"
note "tests marked gpu: ${GPU_PASSED} passed, ${GPU_FAILED} failed, ${GPU_SKIPPED} skipped"
if [ -n "$NO_GPU" ]; then
  [ "$TEST_STATUS" -eq 0 ] || finish 6 "CPU-side tests failed (pytest status ${TEST_STATUS})"
  echo "No GPU visible to torch: the build, the import and the CPU-side tests passed; benchmarks skipped."
  if [ -n "${QUICK:-}" ]; then finish 0 "QUICK run without a GPU: build, import and CPU-side tests only"; fi
  finish 8 "no GPU visible to torch: nothing on the GPU was checked"
fi
if [ "$GPU_PASSED" -eq 0 ] && [ "$GPU_FAILED" -eq 0 ]; then
  echo "FATAL: every test marked gpu was skipped although a GPU is visible; see the skip reasons above"
  finish 9 "every test marked gpu was skipped (${GPU_SKIPPED} skipped)"
fi
# Failed GPU tests do not stop the run: a GPU machine is rare, so the benchmarks still run and
# the exit status reports the failure (6) at the end.

section "GPU benchmarks (bench/bench_gpu.py)"
set_limit "benchmarks" 300 0
BENCH_LIMIT=$LIMIT
BENCH_ARGS=(--out "$BENCH_MD")
[ -n "${QUICK:-}" ] && BENCH_ARGS+=(--quick)
timeout -k "$KILL_GRACE_S" "$BENCH_LIMIT" "$PY" bench/bench_gpu.py "${BENCH_ARGS[@]}"
BENCH_STATUS=$?
note "bench/bench_gpu.py: status ${BENCH_STATUS} (0 = all targets met, 1 = a target missed, 124 = timed out, other = error)"
if [ "$TEST_STATUS" -ne 0 ]; then
  finish 6 "GPU tests failed (pytest status ${TEST_STATUS}; 124 = timed out); benchmarks: status ${BENCH_STATUS}"
fi
case $BENCH_STATUS in
  0) finish 0 "all good" ;;
  1) finish 1 "a benchmark target was missed" ;;
  *) finish 2 "the benchmark script failed (status ${BENCH_STATUS})" ;;
esac
