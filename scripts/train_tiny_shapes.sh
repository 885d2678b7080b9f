#!/usr/bin/env bash
# Train glipv2_tiny on a freshly generated ShapesWorld on this machine's CPU, install the result
# as weights/glipv2_tiny_shapes and score it on fresh val and heldout splits.
#   scripts/train_tiny_shapes.sh            (RUN=runs/glipv2_tiny_shapes, IMAGES=2000)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/glipv2_tiny_shapes}
IMAGES=${IMAGES:-2000}
GLIPV2=${GLIPV2:-.venv/bin/glipv2}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

start=$(date +%s)
# --no-val: the model is scored below, on fresh splits, outside the training time
"$GLIPV2" train --config configs/glipv2_tiny_shapes.yaml --shapes-images "$IMAGES" --out "$RUN" --no-resume --no-val
echo "training (data generation included) took $(( $(date +%s) - start )) s" | tee "$RUN/wall_time.txt"

rm -rf weights/glipv2_tiny_shapes
mkdir -p weights
cp -r "$RUN/model" weights/glipv2_tiny_shapes
du -sh weights/glipv2_tiny_shapes

for split in val heldout; do
  seed=$([ "$split" = val ] && echo 101 || echo 102)
  "$GLIPV2" data shapes --out "$RUN/eval_$split" --num-images 200 --seed "$seed" --split "$split"
  "$GLIPV2" eval coco --model weights/glipv2_tiny_shapes --ann "$RUN/eval_$split/instances.json" \
    --images "$RUN/eval_$split/images" --out "$RUN/eval_$split/metrics.json"
done
