#!/usr/bin/env bash
# GPU readiness (issue 16, part 6): the CUDA path end to end, then the tests marked gpu.
# Installs nothing: run it from the repository root in an environment where bstune's
# dependencies are installed (PYTHON=... picks the interpreter; default: python).
#   bash benchmarks/gpu_check.sh            # about 1 minute on one H200 (measured 2026-12-04)
#   bash benchmarks/gpu_check.sh --quick     # smaller data and rungs
#   bash benchmarks/gpu_check.sh --device cpu --quick   # dry run of the logic on the CPU
# Arguments go to `python -m benchmarks.gpu_check` (--quick, --out PATH, --device cpu, --only ...).
# Exits non-zero if a check FAILed or a test failed.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -m benchmarks.gpu_check "$@"
checks=$?
"$PY" -m pytest -m gpu -q
tests=$?

echo "gpu_check: checks exit ${checks}, pytest -m gpu exit ${tests}"
if [ "$checks" -ne 0 ] || [ "$tests" -ne 0 ]; then
    exit 1
fi
