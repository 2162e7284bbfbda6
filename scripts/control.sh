#!/usr/bin/env bash
# Issue 12's positive control at full size: the multitask arm against image-only on the
# synthetic control catalogue (--demo_kind=control: each item's interactions are a known
# function of what its image shows, its label is the shape; docs/data.md), at 10% of labels,
# on cached features (30 paired seeds, λ ∈ {2, 8} chosen on validation) and end to end
# (10 paired seeds at the λ the cached run chose on validation). Resumable: run it again to
# go on; finished cells are copied to docs/results/control/<protocol>/cells/ and restored from
# there on a fresh machine.
#   bash scripts/control.sh [WORKDIR] [CACHED_SEEDS] [E2E_SEEDS]
#   (defaults: runs/control 0-29 0-9; PROTOCOLS="cached e2e" picks which run)
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-runs/control}"
CACHED_SEEDS="${2:-0-29}"
E2E_SEEDS="${3:-0-9}"
PROTOCOLS="${PROTOCOLS:-cached e2e}"
RESULTS=docs/results/control
mkdir -p "$WORKDIR"
WORKDIR="$(cd "$WORKDIR" && pwd)"
# The control catalogue at the generator's defaults (1200 items, 400 users, seed 0), Lite0 with
# its ImageNet weights at 64 px, AdamW 1e-3, early stopping on validation mAP.
COMMON="--demo_kind=control,--backbone=efficientnet_lite0,--weights=imagenet,--image_size=64,\
--early_stopping_patience=5,--batch_size=32,--learning_rate=1e-3"

run_protocol() {  # NAME SEEDS CF_WEIGHTS TRAIN_FLAGS
  local name="$1" seeds="$2" weights="$3" flags="$4"
  local workdir="$WORKDIR/$name" results="$RESULTS/$name"
  mkdir -p "$workdir/cells" "$results/cells"
  # Stage 1 first, so that its vectors can be checked against the committed cells' (sha256
  # beside them) before any cell is restored: cells of other vectors are never mixed.
  if [ ! -f "$workdir/stage1/cf_stage1.json" ]; then
    echo "$flags" | tr ',' '\n' > "$workdir/train_flags.txt"
    python -m cfimage.train --flagfile="$workdir/train_flags.txt" --workdir="$workdir/stage1" \
        --stage1_only
  fi
  local digest
  digest="$(python -c "import numpy as np, hashlib, sys; \
print(hashlib.sha256(np.load(sys.argv[1])['vectors'].tobytes()).hexdigest())" \
    "$workdir/stage1/cf_embeddings.npz")"
  if [ -f "$results/stage1_sha256.txt" ] && [ "$(cat "$results/stage1_sha256.txt")" != "$digest" ]; then
    echo "control.sh: stage 1 gave other vectors ($digest) than the committed $name cells" \
         "($(cat "$results/stage1_sha256.txt")); move $results/cells away to start afresh" >&2
    return 1
  fi
  echo "$digest" > "$results/stage1_sha256.txt"
  for saved in "$results"/cells/*/metrics.json; do
    [ -f "$saved" ] || continue
    cell="$(basename "$(dirname "$saved")")"
    if [ ! -f "$workdir/cells/$cell/metrics.json" ]; then
      mkdir -p "$workdir/cells/$cell" && cp "$saved" "$workdir/cells/$cell/metrics.json"
    fi
  done
  local status=0
  python -m cfimage.experiment --workdir="$workdir" --seeds="$seeds" --arms=image_only,multitask \
      --label_ratios=0.1 --cf_weights="$weights" --parallel=2 --threads_per_cell=1 \
      --cells_per_process=50 --train_flags="$flags" || status=$?
  for done_cell in "$workdir"/cells/*/metrics.json; do
    [ -f "$done_cell" ] || continue
    cell="$(basename "$(dirname "$done_cell")")"
    mkdir -p "$results/cells/$cell" && cp "$done_cell" "$results/cells/$cell/metrics.json"
  done
  for report in results.md results.csv; do
    if [ -f "$workdir/$report" ]; then cp "$workdir/$report" "$results/"; fi
  done
  return "$status"
}

chosen_lambda() {  # the λ of the cached multitask arm with the best mean validation mAP
  python - "$RESULTS/cached/results.csv" <<'EOF'
import sys
import pandas as pd
results = pd.read_csv(sys.argv[1])
multitask = results[results.arm == "multitask"]
print(f"{multitask.groupby('cf_weight').val_map.mean().idxmax():g}")
EOF
}

for protocol in $PROTOCOLS; do
  case "$protocol" in
    cached)
      run_protocol cached "$CACHED_SEEDS" 2,8 "$COMMON,--train_backbone=false,\
--adapter_units=256,--feature_cache=$WORKDIR/features,--epochs=30" ;;
    e2e)
      if [ ! -f "$RESULTS/cached/results.csv" ]; then
        echo "control.sh: the end-to-end run takes the cached run's λ: run PROTOCOLS=cached first" >&2
        exit 1
      fi
      lambda="$(chosen_lambda)"
      if [ -z "$lambda" ]; then
        echo "control.sh: no multitask λ in $RESULTS/cached/results.csv" >&2
        exit 1
      fi
      run_protocol e2e "$E2E_SEEDS" "$lambda" "$COMMON,--epochs=15" ;;
    *) echo "control.sh: unknown protocol $protocol (cached, e2e)" >&2; exit 1 ;;
  esac
done
