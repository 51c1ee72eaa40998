#!/usr/bin/env bash
# One run on a fresh GPU machine (no network): build dtpm_fast with its CUDA module, run the GPU
# tests, run the GPU benchmarks, print a short table. Budget: at most 8 minutes.
#
#   bash bench/gpu_check.sh            # full sizes (issue 4 targets)
#   QUICK=1 bash bench/gpu_check.sh    # small sizes, a smoke run
#
# Needs: nvcc, CMake >= 3.24, ninja, a C++ compiler, Python with numpy, scipy, torch (CUDA),
# pytest, pybind11 (CMake config) - all already installed, nothing is downloaded. scikit-build-core
# is not needed: the build is plain CMake into build/gpu-check, and the package is used from the
# source tree through PYTHONPATH (the installed environment is left alone). CuPy and faiss are
# optional: their tests skip and the summary says which were missing. If pybind11 is missing,
# put wheels in .gpu-wheels/ (pip download pybind11 -d .gpu-wheels, on a machine with network)
# and carry that folder along; they are installed from there with --no-index.
#
# Results: bench/results/gpu_check_<stamp>.md (table + test summary), .log (everything),
# gpu_tests_<stamp>.txt (pytest output) and gpu_bench_<stamp>.md/.json (benchmark rows);
# also copied to $OUT when that is set (the device runner returns files from there).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAMP=$(date -u +%Y%m%dT%H%MZ)
RESULTS=$ROOT/bench/results
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check_$STAMP.log
MD=$RESULTS/gpu_check_$STAMP.md
BUILD=$ROOT/build/gpu-check
T0=$(date +%s)
exec > >(tee "$LOG") 2>&1

elapsed() { echo $(( $(date +%s) - T0 )); }
section() { echo; echo "=== $* [$(elapsed) s]"; }
finish() {
  local status=$1
  section "done (status $status)"
  if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then cp "$LOG" "$MD" "$RESULTS"/gpu_bench_"$STAMP".* "$RESULTS"/gpu_tests_"$STAMP".txt "$OUT"/ 2>/dev/null; fi
  exit "$status"
}

section "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: unavailable"
nvcc --version | tail -n 2 || { echo "FATAL: nvcc not found"; finish 3; }
cmake --version | head -n 1
ninja --version 2>/dev/null | sed 's/^/ninja /' || echo "ninja: missing (CMake will use make)"
python - <<'EOF'
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
if ! python -m pybind11 --cmakedir >/dev/null 2>&1 && [ -d "$ROOT/.gpu-wheels" ]; then
  python -m pip install --no-index --find-links "$ROOT/.gpu-wheels" pybind11 || true
fi
PYBIND11_DIR=$(python -m pybind11 --cmakedir 2>/dev/null) || { echo "FATAL: pybind11 is not installed (see the header of this script)"; finish 3; }
VERSION=$(python -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
GEN=$(command -v ninja >/dev/null && echo "-G Ninja" || echo "")
BUILD_T0=$(date +%s)
# shellcheck disable=SC2086
cmake -S "$ROOT" -B "$BUILD" $GEN -DCMAKE_BUILD_TYPE=Release -DSKBUILD_PROJECT_NAME=dtpm_fast \
  -DSKBUILD_PROJECT_VERSION="$VERSION" -Dpybind11_DIR="$PYBIND11_DIR" -DDTPM_CUDA=ON \
  -DPython_EXECUTABLE="$(command -v python)" >"$BUILD.configure.log" 2>&1 \
  || { tail -n 40 "$BUILD.configure.log"; echo "FATAL: configure failed"; finish 4; }
cmake --build "$BUILD" -j "$(nproc)" || { echo "FATAL: build failed"; finish 4; }
BUILD_S=$(( $(date +%s) - BUILD_T0 ))
# Stage the package (sources + fresh modules) in the build folder and put it first on the path;
# the source tree and any installed dtpm_fast are left alone.
STAGE=$BUILD/stage
rm -rf "$STAGE" && mkdir -p "$STAGE"
cp -r "$ROOT/python/dtpm_fast" "$STAGE/"
rm -f "$STAGE"/dtpm_fast/*.so
cp "$BUILD"/_core*.so "$BUILD"/csrc/cuda/_cuda*.so "$STAGE/dtpm_fast/"
export PYTHONPATH=$STAGE${PYTHONPATH:+:$PYTHONPATH}
# An editable install's import hook would shadow PYTHONPATH: disable it for this run.
BOOT=$(mktemp -d)
cat >"$BOOT/sitecustomize.py" <<'EOF'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
EOF
export PYTHONPATH=$BOOT:$PYTHONPATH
python -c "import dtpm_fast, dtpm_fast._cuda as c; print('dtpm_fast from', dtpm_fast.__file__); print('build_info', dtpm_fast.build_info()); print('devices', c.device_count(), c.device_status())" \
  || { echo "FATAL: the built package does not import"; finish 5; }
echo "build took ${BUILD_S} s"

section "GPU tests (tests/test_gpu.py)"
TESTLOG=$RESULTS/gpu_tests_$STAMP.txt
timeout 240 python -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider --maxfail=25 --no-header \
  --durations=5 >"$TESTLOG" 2>&1
TEST_STATUS=$?
tail -n 60 "$TESTLOG"
TEST_LINE=$(tail -n 1 "$TESTLOG")

section "GPU benchmarks (bench/bench_gpu.py)"
BENCH_ARGS=(--out "$RESULTS/gpu_bench_$STAMP.md")
[ -n "${QUICK:-}" ] && BENCH_ARGS+=(--quick)
timeout 240 python bench/bench_gpu.py "${BENCH_ARGS[@]}"
BENCH_STATUS=$?

{
  echo "# GPU check $STAMP"
  echo
  echo "- build: ${BUILD_S} s (cmake -j $(nproc), DTPM_CUDA=ON)"
  echo "- tests/test_gpu.py: status ${TEST_STATUS}: ${TEST_LINE:-no summary line}"
  echo "- bench/bench_gpu.py: status ${BENCH_STATUS} (0 = all targets met, 1 = a target missed, other = error)"
  echo "- total: $(elapsed) s"
  echo
  [ -f "$RESULTS/gpu_bench_$STAMP.md" ] && cat "$RESULTS/gpu_bench_$STAMP.md"
} >"$MD"
section "summary"
cat "$MD"
if [ "$TEST_STATUS" -ne 0 ]; then finish 6; fi
finish "$BENCH_STATUS"
