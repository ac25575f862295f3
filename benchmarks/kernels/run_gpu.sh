#!/usr/bin/env bash
# Every GPU check and timing of the CCA kernels in one call, so one short lease of a GPU host covers
# them all: the kernel tests on the device, the per-layer CCA benchmark (P4) and the whole
# ZAYA1-8B-shaped model, kernels vs reference. Needs torch, triton, transformers (with ZAYA)
# and pytest; no vLLM.
#
#   bash benchmarks/kernels/run_gpu.sh     # logs + JSON go to $OUT
#
# A host whose transformers predates ZAYA can be handed wheels in .whl/ (pure-Python
# transformers and whatever it needs), installed here into a private folder first.
# Without a CUDA device it runs the same steps at their --smoke sizes (Triton interpreter), so
# the script itself is testable anywhere. Exit status: non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

if ! "$PY" -c "import mrsa.kernels" 2>/dev/null; then
    # A plain checkout (GPU hosts get no install): lay the package out as a wheel installs it,
    # mrsa/ with its parts (the top-level folders) inside, as links.
    site=$(mktemp -d)
    mkdir "$site/mrsa"
    ln -s "$PWD"/mrsa/*.py "$site/mrsa/"
    for part in service rsa engine kernels evals; do ln -s "$PWD/$part" "$site/mrsa/$part"; done
    export PYTHONPATH="$site:$PYTHONPATH"
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/mrsa-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/mrsa-site:$PYTHONPATH"
fi

"$PY" - <<'EOF' | tee "$OUT/env.txt"
import torch, triton, transformers
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"device: {dev}; torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}")
EOF
if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then smoke=(); else smoke=(--smoke); fi

failed=()
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember failures
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log" || failed+=("$name")
}
step kernel_tests "$PY" -m pytest tests/kernels -q -p no:cacheprovider
step cca_bench "$PY" benchmarks/kernels/cca_bench.py "${smoke[@]}"
if [ ${#smoke[@]} -eq 0 ]; then
    step zaya_model_bench "$PY" benchmarks/kernels/zaya_model_bench.py --batch 1 16 64
else
    step zaya_model_bench "$PY" benchmarks/kernels/zaya_model_bench.py --smoke
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (logs in $OUT)"
    exit 1
fi
echo "all steps passed (logs and JSON in $OUT)"
