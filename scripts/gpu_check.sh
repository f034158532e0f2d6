#!/usr/bin/env bash
# The GPU check (issue 15): on a fresh machine with one NVIDIA GPU, in under 8 minutes, for resnet50 (batch 64,
# float16) and deit_small (batch 64, bfloat16) on CUDA:
#   profile (CUDA events, turns, warm-up) -> score (synthetic) -> problem -> solve (budget 0.5) -> export, the
#   export timed in turns with the dense model (predicted vs measured, as fractions of dense); 100 AMP training
#   steps of the export on synthetic data (scripts/amp_steps.py); the export timed in TensorRT when the tensorrt
#   package is installed, and in ONNX Runtime's CUDA provider when onnxruntime-gpu is. Writes OUT/gpu_check.md
#   (a Markdown table) and every artifact under OUT/.
#
#   scripts/gpu_check.sh [--out DIR]      # on the GPU machine (PyTorch, timm, torchvision; pyomo + highspy)
#   scripts/gpu_check.sh --dry-run        # the same steps on CPU at a tiny size (tests/test_gpu_check.py)
#
# Random-init weights throughout: latency and AMP stability do not depend on them, and no model hub is reached.
# Knobs (environment): PYTHON (default python3), MAX_OPTIONS (CNN options per dim, default 8), REPEATS (timed
# calls per LUT row, default 20), STEPS (AMP steps, default 100), MODELS (default "resnet50 deit_small").
set -euo pipefail

DRY=0
OUT=gpu_check
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
MODELS="${MODELS:-resnet50 deit_small}"
if [ "$DRY" = 1 ]; then
  # CPU, tiny: the same commands, so that a test proves the script before a GPU is at hand
  DEVICE=cpu; RES=32; BATCH=2; WARMUP=1; REPEATS="${REPEATS:-2}"; STEPS="${STEPS:-3}"; MAX_OPTIONS="${MAX_OPTIONS:-2}"
  CNN_DTYPE=float32; VIT_DTYPE=float32; CNN_AMP=bf16; VIT_AMP=bf16; CNN_SPACE=(--multiple 8); CNN_SCORE_SPACE=""
  export OMP_NUM_THREADS=1
else
  DEVICE=cuda; RES=224; BATCH=64; WARMUP=5; REPEATS="${REPEATS:-20}"; STEPS="${STEPS:-100}"; MAX_OPTIONS="${MAX_OPTIONS:-8}"
  CNN_DTYPE=float16; VIT_DTYPE=bfloat16; CNN_AMP=fp16; VIT_AMP=bf16
  CNN_SPACE=(); CNN_SCORE_SPACE="--multiple 8"  # profile/problem/export: multiple 8 is the CUDA half default
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device here; use --dry-run')"
fi
if ! "$PY" -c "import pyomo, highspy" > /dev/null 2>&1; then
  # a fresh GPU machine without the solver: install the wheels brought along in .whl/ (see docs/runtimes.md §5)
  if ls "$REPO"/.whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mdp-site \
        "$REPO"/.whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/mdp-site"
  else
    echo "gpu_check.sh: pyomo and highspy are missing and there is no .whl/ with their wheels (docs/runtimes.md §5)" >&2
    exit 1
  fi
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
mdp() { echo "+ mdp $*" >> "$LOG"; "$PY" -m mdp_cli "$@" 2>> "$LOG" | tee -a "$LOG"; }
has() { "$PY" -c "$1" > /dev/null 2>&1; }

check_model() {
  local model="$1" dtype="$2" amp="$3" score_space="$4"; shift 4
  local space=("$@") dir="$OUT/$model"
  mkdir -p "$dir"
  local common=(-m "$model" -r "$RES" --random-init --device "$DEVICE" --dtype "$dtype" --batch "$BATCH"
                --lut-dir "$OUT/luts")
  local t0=$SECONDS
  mdp profile "${common[@]}" "${space[@]}" --warmup "$WARMUP" --repeats "$REPEATS" -q
  echo "$((SECONDS - t0))" > "$dir/profile_seconds"
  # mdp score has no --dtype, so the CUDA half-precision width default cannot reach it: say the multiple
  mdp score -m "$model" -r "$RES" --random-init --device "$DEVICE" "${space[@]}" $score_space --data synthetic --batches 1 \
      --batch-size 4 -o "$dir/importance.json" -q
  mdp problem "${common[@]}" "${space[@]}" --importance "$dir/importance.json" -o "$dir/problem.json"
  mdp solve "$dir/problem.json" --budget 0.5 -o "$dir/solution.json" > /dev/null
  # the budget gate's verdict goes in the table: a missed budget does not stop the check
  mdp export "${common[@]}" "${space[@]}" -s "$dir/solution.json" --importance "$dir/importance.json" \
      -o "$dir/exported" || echo "export of $model missed its budget (see the table)" | tee -a "$LOG"
  "$PY" "$REPO/scripts/amp_steps.py" "$dir/exported" --steps "$STEPS" --batch "$BATCH" --amp "$amp" \
      --device "$DEVICE" --out "$dir/amp.json" >> "$LOG" 2>&1
  if [ "$DRY" = 1 ] || has "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    # the export timed in ONNX Runtime (CPU in the dry run, the CUDA provider on the GPU; float16 there)
    local ort_dtype="$dtype"; [ "$DEVICE" = cuda ] && ort_dtype=float16
    mdp export "${common[@]/$dtype/$ort_dtype}" "${space[@]}" --runtime onnxruntime -s "$dir/solution.json" \
        --importance "$dir/importance.json" -o "$dir/exported_onnxruntime" --tolerance 10 \
      || echo "onnxruntime measurement of $model failed (see $LOG)" | tee -a "$LOG"
  fi
  if [ "$DEVICE" = cuda ] && has "import tensorrt"; then
    mdp export "${common[@]}" "${space[@]}" --runtime tensorrt -s "$dir/solution.json" \
        --importance "$dir/importance.json" -o "$dir/exported_tensorrt" --tolerance 10 \
      || echo "tensorrt measurement of $model failed (see $LOG)" | tee -a "$LOG"
  fi
}

START=$SECONDS
for model in $MODELS; do
  case "$model" in
    deit*|vit*) check_model "$model" "$VIT_DTYPE" "$VIT_AMP" "" ;;
    *) check_model "$model" "$CNN_DTYPE" "$CNN_AMP" "$CNN_SCORE_SPACE" --max-options "$MAX_OPTIONS" "${CNN_SPACE[@]}" ;;
  esac
done

"$PY" - "$OUT" "$((SECONDS - START))" "$DRY" $MODELS <<'EOF'
import json, platform, sys
from pathlib import Path

out, seconds, dry, models = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]


def load(path):
    return json.loads(path.read_text()) if path.is_file() else {}


def pct(value):
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def ms(value):
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


import torch

device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry else platform.processor() or "cpu"
lines = [f"# GPU check{' (dry run on CPU: tiny sizes, numbers meaningless)' if dry else ''}", "",
         f"{device}; torch {torch.__version__}; total {seconds} s", "",
         "| model | runtime | dtype | batch | profile s | predicted / dense | measured / dense (in turns) | error | "
         "measured ms | dense ms | budget | AMP steps/s | AMP loss first -> last |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for model in models:
    d = out / model
    amp = load(d / "amp.json")
    profile_s = (d / "profile_seconds").read_text().strip() if (d / "profile_seconds").is_file() else "-"
    for runtime, folder in (("eager", "exported"), ("onnxruntime", "exported_onnxruntime"),
                            ("tensorrt", "exported_tensorrt")):
        r = load(d / folder / "report.json")
        if not r:
            continue
        budget = "-" if r.get("within_tolerance") is None else ("met" if r["within_tolerance"] else "MISSED")
        amp_cells = ([f"{amp['steps_per_s']:.2f} ({amp['amp']})" if amp.get("steps_per_s") else "-",
                      f"{amp.get('first_loss', float('nan')):.3f} -> {amp.get('last_loss', float('nan')):.3f}"]
                     if runtime == "eager" and amp else ["", ""])
        lines.append("| " + " | ".join([model, runtime, str(r.get("dtype", "-")), str(r.get("batch", "-")),
                                          profile_s if runtime == "eager" else "", pct(r.get("predicted_fraction")),
                                          pct(r.get("measured_fraction")), pct(r.get("fraction_error")),
                                          ms(r.get("measured_ms")), ms(r.get("measured_dense_ms")),
                                          budget if runtime == "eager" else "", *amp_cells]) + " |")
lines += ["", "predicted: the LUT (eager rows) summed at the solution; error: predicted / measured fraction - 1. "
          "The onnxruntime and tensorrt rows time the same export in that runtime (prediction still from the "
          "eager LUT unless it was profiled with --runtime)."]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $OUT/gpu_check.md (log: $LOG)"
