#!/usr/bin/env bash
# Everything to run on a GPU machine, in one command (about ten minutes on one H100):
#   1. install the pure-Python wheels the GPU image lacks (it has no internet): every *.whl in
#      $WHEELS_DIR (default shared/wheels), if that folder exists;
#   2. install vjepa_fast editable, which builds the C++/CUDA extension;
#   3. run the CUDA tests (pytest -m cuda) with the Triton interpreter off;
#   4. run every benchmark, keeping the JSON;
#   5. write benchmarks/RESULTS.md: device, versions, medians, speed-ups against the reference
#      measured in this same run.
# Usage: bash benchmarks/gpu_suite.sh     (from anywhere; PYTHON overrides the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WHEELS_DIR=${WHEELS_DIR:-shared/wheels}
OUT=${OUT:-runs/gpu_suite}  # logs and the raw JSON (runs/ is git-ignored)
mkdir -p "$OUT"

if compgen -G "$WHEELS_DIR/*.whl" > /dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps "$WHEELS_DIR"/*.whl
fi
"$PYTHON" -m pip install --quiet --no-build-isolation --no-deps -e .
"$PYTHON" -c "import torch, triton; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| triton', triton.__version__, '| CUDA', torch.version.cuda)"

# The interpreter is tests/conftest.py's default for CPU machines: switch it off explicitly.
# A failing test must not stop the benchmarks: the exit codes are reported at the end.
set +e
TRITON_INTERPRET=0 "$PYTHON" -m pytest tests -m cuda -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
TRITON_INTERPRET=0 "$PYTHON" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$OUT/benchmarks.json" 2>&1 | tee "$OUT/benchmarks.log"
bench_rc=${PIPESTATUS[0]}
set -e

"$PYTHON" benchmarks/write_results.py --json "$OUT/benchmarks.json" --output benchmarks/RESULTS.md \
    --tests-log "$OUT/cuda_tests.log"
echo "cuda tests exit code: $tests_rc; benchmarks exit code: $bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
