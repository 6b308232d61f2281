#!/usr/bin/env bash
# The GPU check (issue 17): what a machine with a GPU measures, in one script, in at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh             # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps on the CPU at toy sizes (CI runs this)
#
# Steps, each under its own time limit, each writing into $GPU_CHECK_OUT (default
# benchmarks/results/gpu_check/; the dry run's default is a temporary folder):
#   1. env.txt         torch, CUDA, the GPU (nvidia-smi), CPU and cores
#   2. step_cost.csv   benchmarks/step_cost.py --device cuda: one training step of each method
#   3. demo/           the demo (python -m e2vpt train, defaults) on CUDA: its summary.json
#   4. gpu_epoch_compile_{off,on}.csv   one E2VPT epoch of ViT-B/16 @224 (random init) on 1,000 synthetic
#                      500x375 JPEGs through the real loader: samples/s, the loader's img/s, GPU busy %
# A step that fails or runs out of time is reported and the others still run; the exit status is the
# number of failed steps. The last line sums up where each result is.
set -u
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
if (( DRY )); then
  OUT="${GPU_CHECK_OUT:-$(mktemp -d)}"; DEVICE=cpu
else
  OUT="${GPU_CHECK_OUT:-benchmarks/results/gpu_check}"; DEVICE=cuda
  if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch; run with --dry-run to check the script on the CPU" >&2
    exit 2
  fi
fi
mkdir -p "$OUT"
FAILED=0
step() {  # step NAME SECONDS COMMAND...: run, time, report
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if declare -F "$1" > /dev/null; then set -- bash -c "$1 \"\$@\"" _ "${@:2}"; fi  # a function of this script
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    echo "gpu_check: $name ok in $((SECONDS - start)) s: $(tail -n 1 "$OUT/$name.log")"
  else
    echo "gpu_check: $name FAILED (status $?, $((SECONDS - start)) s; limit $limit s): see $OUT/$name.log"
    FAILED=$((FAILED + 1))
  fi
}

demo() {  # the demo with the given flags, then one line: accuracy, time, device, precision
  python3 -m e2vpt train "$@" --run-dir "$OUT/demo" --quiet > /dev/null && python3 -c "import json, sys; \
s = json.load(open(sys.argv[1])); print(f\"demo: test acc {s['test_acc']:.3f} in {s['wall_s']:.1f} s on \
{s['device']} ({s['precision']})\")" "$OUT/demo/summary.json"
}
export -f demo
export OUT

step env 20 bash -c "python3 -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
\"gpu\", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' > '$OUT/env.txt'; \
(nvidia-smi || echo 'no nvidia-smi') >> '$OUT/env.txt'; nproc >> '$OUT/env.txt'; echo env written"

if (( DRY )); then
  step step_cost 240 python3 benchmarks/step_cost.py --device cpu --quick --sections main --demo-batch 8 \
       --out "$OUT/step_cost.csv"
  step demo 240 demo --device cpu --epochs 1 --prune-rounds 0
  EPOCH=(--device cpu --backbone demo --images 64 --folder "$OUT/jpeg-64")
  step gpu_epoch_compile_off 240 python3 benchmarks/gpu_epoch.py "${EPOCH[@]}" --out "$OUT/gpu_epoch_compile_off.csv"
  step gpu_epoch_compile_on 240 python3 benchmarks/gpu_epoch.py "${EPOCH[@]}" --compile --compile-backend eager \
       --out "$OUT/gpu_epoch_compile_on.csv"
else
  step step_cost 150 python3 benchmarks/step_cost.py --device cuda --sections main --out "$OUT/step_cost.csv"
  step demo 60 demo --device cuda
  EPOCH=(--device cuda --images 1000 --folder "$OUT/jpeg-1000")
  step gpu_epoch_compile_off 100 python3 benchmarks/gpu_epoch.py "${EPOCH[@]}" --out "$OUT/gpu_epoch_compile_off.csv"
  step gpu_epoch_compile_on 150 python3 benchmarks/gpu_epoch.py "${EPOCH[@]}" --compile \
       --out "$OUT/gpu_epoch_compile_on.csv"
fi
[[ -f "$OUT/demo/summary.json" ]] && cp "$OUT/demo/summary.json" "$OUT/demo_summary.json"
echo "gpu check: $FAILED step(s) failed; results in $OUT"
exit "$FAILED"
