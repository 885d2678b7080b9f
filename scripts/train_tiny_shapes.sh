#!/usr/bin/env bash
# Train the multi-task glipv2_tiny (detection, grounding, masks, VQA, captions) on a freshly generated
# ShapesWorld on this machine's CPU and install it as the shipped model folder,
# src/glipv2/weights/glipv2_tiny_shapes (inside the package, so that wheels carry it; SHIPPED= elsewhere).
#   scripts/train_tiny_shapes.sh                 (RUN=runs/glipv2_tiny_shapes, IMAGES=2000, 2 threads)
# With BASELINE=1 a detection-only twin (configs/glipv2_tiny_shapes_detection.yaml) trains at the same
# time, one core each (THREADS=1), for the "one model" comparison; DET_STEPS sets its length.
# Score the result with scripts/eval_tiny_shapes.py.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/glipv2_tiny_shapes}
IMAGES=${IMAGES:-2000}
# the shipped weights: 2,800 steps at 2 threads (about 40 minutes on the project machine, see README)
MT_STEPS=${MT_STEPS:-2800}
DET_STEPS=${DET_STEPS:-1935}
BASELINE=${BASELINE:-0}
THREADS=${THREADS:-$([ "$BASELINE" = 1 ] && echo 1 || echo 2)}
GLIPV2=${GLIPV2:-.venv/bin/glipv2}
export HF_HUB_OFFLINE=1
mkdir -p "$RUN"

train() {  # name config steps
  local start
  start=$(date +%s)
  # --no-val: the models are scored afterwards, on fresh splits, outside the training time
  OMP_NUM_THREADS=$THREADS "$GLIPV2" train --config "$2" --shapes-images "$IMAGES" --out "$RUN/$1" \
    --max-steps "$3" --no-resume --no-val > "$RUN/$1.log" 2>&1
  echo "$1: training (data generation included) took $(( $(date +%s) - start )) s" | tee "$RUN/$1.wall_time.txt"
}

train multitask configs/glipv2_tiny_shapes.yaml "$MT_STEPS" &
mt=$!
if [ "$BASELINE" = 1 ]; then
  train detection configs/glipv2_tiny_shapes_detection.yaml "$DET_STEPS" &
  det=$!
fi
wait "$mt"
if [ "$BASELINE" = 1 ]; then
  wait "$det"
fi

# glipv2.utils.shipped finds the shipped models here, by name
SHIPPED=${SHIPPED:-src/glipv2/weights/glipv2_tiny_shapes}
rm -rf "$SHIPPED"
mkdir -p "$(dirname "$SHIPPED")"
cp -r "$RUN/multitask/model" "$SHIPPED"
du -sh "$SHIPPED"
