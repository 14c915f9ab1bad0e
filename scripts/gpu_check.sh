#!/usr/bin/env bash
# The GPU check, ready for a lent CUDA machine that has python3 with torch but no network and none of our other
# dependencies. Fill wheels/ first where pip works (scripts/gpu_wheels.sh), carry it along, then run:
#
#   scripts/gpu_check.sh                  # on the GPU machine: about 4 minutes, each step time-limited
#   scripts/gpu_check.sh --cpu-dry-run    # here, on the CPU: the same steps at tiny sizes, nothing installed
#
# Steps: 1. install wheels/ into /tmp/sftflow-site (or say why not); 2. check what imports; 3. the test suite's
# GPU tests (pytest -m gpu tests/test_gpu.py); 4. python -m benchmarks.gpu_check: bf16 matmul peak, a
# SmolLM2-135M-shaped model trained with LoRA and full fine-tuning in bf16, and benchmarks.vs_trl's GPU row.
# Writes to $OUT when set (the device tool brings back what is there), else benchmarks/results/:
# gpu_check.json, gpu_check.txt (the summary), gpu_pytest.log, gpu_check.log (everything printed).
# Exit status: 0 when every step passed, 1 when one failed (the others still ran), 2 on a usage error.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

DRY=0
case "${1:-}" in
    --cpu-dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: $0 [--cpu-dry-run]" >&2; exit 2 ;;
esac
OUT_DIR="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$OUT_DIR"
if [ "$DRY" = 1 ]; then
    PY="${PYTHON:-$ROOT/.venv/bin/python}"
    [ -x "$PY" ] || PY=python3
else
    PY="${PYTHON:-python3}"
fi
SITE=/tmp/sftflow-site
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-150}"
CHECK_TIMEOUT="${CHECK_TIMEOUT:-300}"  # > the stages' own limits: peak, 2 trainings, 3 x 60 s of vs_trl
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

install_wheels() {
    if [ "$DRY" = 1 ]; then
        echo "dry run: nothing installed; using $PY as it is"
        return 0
    fi
    if ! ls wheels/*.whl >/dev/null 2>&1; then
        echo "no wheels/ here: using what $PY has (fill wheels/ with scripts/gpu_wheels.sh where pip works)"
        return 0
    fi
    local want have
    want=$(sed -n 's/^python_version=//p' wheels/MANIFEST 2>/dev/null)
    have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ -n "$want" ] && [ "$want" != "$have" ]; then
        echo "SKIPPED install: wheels/ holds wheels for CPython $want, $PY is $have (run scripts/gpu_wheels.sh $have)"
        return 0
    fi
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            wheels/*.whl; then
        export PYTHONPATH="$SITE:$PYTHONPATH"
        echo "installed $(ls wheels/*.whl | wc -l) wheels into $SITE (ahead of $PY's own packages)"
    else
        echo "FAILED to install wheels/ (see pip's message above): going on with what $PY has"
    fi
}

# Prints each library's version (or why it does not import); exit 3 when sft_core's training path cannot import.
preflight() {
    "$PY" - <<'PY'
import importlib, sys
for name in ("torch", "transformers", "accelerate", "peft", "datasets", "pydantic", "tokenizers", "safetensors",
             "pyarrow", "pandas", "numpy", "yaml", "pytest", "trl"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:12} {getattr(module, '__version__', '?')}")
    except Exception as err:  # noqa: BLE001
        print(f"  {name:12} MISSING ({type(err).__name__}: {str(err).splitlines()[0][:100]})")
import torch
print(f"  CUDA: {torch.cuda.is_available()}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
try:
    import sft_core.api  # noqa: F401 - the whole training path: config, data, modeling, trainer
except Exception as err:  # noqa: BLE001
    print(f"sft_core's training path does not import: {type(err).__name__}: {err}")
    sys.exit(3)
PY
}

main() {
    local started status=0
    started=$(date +%s)
    echo "== gpu_check $([ "$DRY" = 1 ] && echo '(CPU dry run)') in $ROOT, results to $OUT_DIR"
    echo "== 1. wheels"
    install_wheels
    echo "== 2. what imports"
    if ! preflight; then
        echo "SKIPPED steps 3 and 4: sft_core cannot import here (see above); carry the missing packages in wheels/"
        return 1
    fi
    echo "== 3. GPU tests (pytest -m gpu, at most ${PYTEST_TIMEOUT}s)"
    timeout "$PYTEST_TIMEOUT" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 \
        | tee "$OUT_DIR/gpu_pytest.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "GPU tests FAILED (exit $rc)"; status=1; }
    echo "== 4. measurements (python -m benchmarks.gpu_check, at most ${CHECK_TIMEOUT}s)"
    timeout "$CHECK_TIMEOUT" "$PY" -m benchmarks.gpu_check $([ "$DRY" = 1 ] && echo --dry-run) --out "$OUT_DIR"
    rc=$?
    [ "$rc" = 0 ] || { echo "measurements FAILED or incomplete (exit $rc)"; status=1; }
    echo "== done in $(( $(date +%s) - started ))s: $([ "$status" = 0 ] && echo 'all steps passed' || echo 'a step FAILED')"
    echo "   GPU tests: $(tail -n 1 "$OUT_DIR/gpu_pytest.log" 2>/dev/null)"
    return "$status"
}

main 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
