#!/usr/bin/env bash
# The GPU check (issue 16): a 32-layer 7B-shaped model (random bf16 weights, 8 rank-16 adapters on all
# seven projections), merged with TIES to a full model and with SST-Merge end to end (Fisher passes on
# random-word chat data, GEVP, filter, exact low-rank PEFT output), all with --device cuda; wall time,
# peak RSS and peak GPU memory per step, one JSON row each, in $OUT/gpu_check.jsonl (and the log beside).
#
# On a lent GPU machine (python3 there holds a CUDA torch, transformers and peft, but not pydantic):
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#                  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
#   device run:  benchmarks/gpu_check.sh   (carry .whl; about 5 minutes on one H200 with 16 cores)
#   then here:   .venv/bin/python -m benchmarks.run --stages gpu,assemble,render --keep-results \
#                  --gpu-rows <files_at>/gpu_check.jsonl
# The script on a CPU: LAYERS=1 DEVICE=cpu PY=.venv/bin/python benchmarks/gpu_check.sh (7B-shaped layers;
# the tests run it with TINY=1, small layers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
LAYERS=${LAYERS:-32}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/sst-gpu-check}
OUT=${OUT:-$WORK}
FISHER_EXAMPLES=${FISHER_EXAMPLES:-64}
SIZE=$([ -n "${TINY:-}" ] && echo --tiny || true)
mkdir -p "$WORK" "$OUT"
if [ -d .whl ] && ! "$PY" -c "import pydantic" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PY" -c "import pydantic, torch, transformers, peft" || { echo "gpu_check: missing packages (see the header)" >&2; exit 2; }
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; fi
rows=$OUT/gpu_check.jsonl
: > "$rows"
echo "[gpu_check] fixtures: $LAYERS layers in $WORK"
"$PY" -m benchmarks.fixtures --work "$WORK" --layers "$LAYERS" --adapters 8 $SIZE > /dev/null
for step in ties sst; do
  echo "[gpu_check] $step on $DEVICE"
  "$PY" -m benchmarks.bench_gpu --step "$step" --work "$WORK" --layers "$LAYERS" --device "$DEVICE" \
    --fisher-examples "$FISHER_EXAMPLES" $SIZE 2> "$OUT/gpu_check_$step.log" | tee -a "$rows"
done
echo "[gpu_check] rows in $rows"
