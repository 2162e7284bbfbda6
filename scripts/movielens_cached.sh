#!/usr/bin/env bash
# Issue 12's results: the paper's arms on the MovieLens posters with cached 224x160 Lite0
# features, label ratios 0.1/0.3/1.0, paired seeds. Resumable: run it again to go on; the
# report (results.md) is rebuilt from the finished cells each time.
#   bash scripts/movielens_cached.sh [WORKDIR] [SEEDS]     (defaults: runs/movielens_cached 0-29)
# Other arms on the same stage 1, features and image-only cells (issues 13 and 14):
#   ARMS=image_only,hybrid,hybrid+multitask RESULTS=docs/results/movielens_hybrid \
#       bash scripts/movielens_cached.sh
# keeps only the cells that docs/results/movielens_cached/cells does not hold under $RESULTS.
# Another stage 1 or other stage-2 options (issue 13's screening) need a workdir of their own;
# FEATURES shares the cached features (they depend on the images and the backbone only):
#   EXTRA_FLAGS=--cf_model=mult_vae,--cf_target=raw \
#   FEATURES=runs/movielens_cached/features ARMS=image_only,multitask \
#   RESULTS=docs/results/movielens_variants/mult_vae bash scripts/movielens_cached.sh \
#       runs/movielens_mult_vae
# Such a run shares no cells with docs/results/movielens_cached (its image-only cells run
# again on its own vectors).
# PROTOCOL=e2e fine-tunes the backbone end to end instead (96x64 px, 6 epochs: the protocol
# of docs/results/movielens_lite0, 3-4.5 min per cell here), on the same catalogue and stage 1;
# it too needs a workdir and RESULTS of its own (issue 14's confirmation):
#   PROTOCOL=e2e ARMS=image_only,hybrid RESULTS=docs/results/movielens_hybrid/e2e \
#       bash scripts/movielens_cached.sh runs/movielens_hybrid_e2e 0-4
# LABEL_RATIOS (default 0.1,0.3,1.0) and CF_WEIGHTS (default 0.5,2) run part of the grid;
# RESTORE=no trains every cell afresh in the workdir, keeping its checkpoints (nothing is
# restored from committed cells: scripts/movielens_coldstart.sh measures the models).
# Each finished cell's metrics.json is also kept under docs/results/movielens_cached/cells/
# (commit them as they arrive): a later run on a fresh machine restores them and runs only the
# cells still missing. It refuses to mix cells whose stage-1 vectors differ: stage1_sha256.txt
# (sha256 of the vectors) and stage1_fingerprint.json (scripts/stage1_fingerprint.py: means,
# stds and random projections of the vectors) are recorded beside the cells. Stage 1 is
# bit-reproducible on one CPU model only (oneDNN's sgemm picks its kernel per processor: an AMD
# EPYC and an Intel Sapphire Rapids differ by max |diff| 1.3e-6, recall@10 0.262 either way),
# so on another CPU the sha256 differs and the fingerprint decides: equal up to rounding counts
# as the same vectors; without a fingerprint the script refuses as for other vectors.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-runs/movielens_cached}"
SEEDS="${2:-0-29}"
DATA="${CFIMAGE_MOVIELENS_DIR:-../shared/data/movielens_posters}"
BASE=docs/results/movielens_cached  # the grid of issue 12: its cells are shared, not copied
RESULTS="${RESULTS:-$BASE}"
DEFAULT_ARMS=image_only,multitask,multitask_sqrt,multitask_loss,two_stage,contrastive
ARMS="${ARMS:-$DEFAULT_ARMS}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
LABEL_RATIOS="${LABEL_RATIOS:-0.1,0.3,1.0}"
CF_WEIGHTS="${CF_WEIGHTS:-0.5,2}"
RESTORE="${RESTORE:-yes}"
PROTOCOL="${PROTOCOL:-cached}"
case "$PROTOCOL" in
  cached) STAGE2_FLAGS="--image_size=224x160,--train_backbone=false,--adapter_units=256,\
--feature_cache=FEATURES_DIR,--epochs=30,--early_stopping_patience=5,--batch_size=64,\
--learning_rate=1e-3,--pretrain_epochs=10"
          OWN_GRID="$EXTRA_FLAGS" ;;  # non-empty: cells of its own, not the issue-12 grid's
  e2e) STAGE2_FLAGS="--image_size=96x64,--train_backbone=true,--epochs=6,--batch_size=32,\
--learning_rate=5e-4"
       OWN_GRID=e2e ;;
  *) echo "movielens_cached.sh: unknown PROTOCOL $PROTOCOL (cached, e2e)" >&2; exit 1 ;;
esac
if { [ -n "$OWN_GRID" ] || [ "$ARMS" != "$DEFAULT_ARMS" ]; } && [ "$RESULTS" = "$BASE" ]; then
  echo "movielens_cached.sh: other ARMS, EXTRA_FLAGS or PROTOCOL need RESULTS of their own" \
       "(the report and cells of $BASE are the issue-12 grid's)" >&2
  exit 1
fi
if [ -n "$OWN_GRID" ] && [ "$(realpath -m "$WORKDIR")" = "$(realpath -m runs/movielens_cached)" ]; then
  echo "movielens_cached.sh: EXTRA_FLAGS or PROTOCOL=e2e need a workdir of its own (its cells" \
       "would take the names of the issue-12 grid's): pass one, e.g. runs/movielens_variant" >&2
  exit 1
fi
IFS=, read -ra ARM_LIST <<<"$ARMS"
FEATURES="${FEATURES:-$WORKDIR/features}"
CATALOGUE="$WORKDIR/catalogue"
if [ ! -f "$CATALOGUE/items.csv" ]; then
  python scripts/prepare_movielens.py --ratings="$DATA/ratings.csv" \
      --posters="$DATA/posters/ml1m" --min_label_count=10 --out="$CATALOGUE"
fi
TRAIN_FLAGS="--catalogue=$(cd "$CATALOGUE" && pwd),--allow_outside_paths,\
--unknown_interaction_items=keep,--backbone=efficientnet_lite0,--weights=imagenet,\
${STAGE2_FLAGS/FEATURES_DIR/$(mkdir -p "$FEATURES" && cd "$FEATURES" && pwd)}\
${EXTRA_FLAGS:+,$EXTRA_FLAGS}"
EXPERIMENT=(python -m cfimage.experiment --workdir="$WORKDIR" --seeds="$SEEDS"
    --arms="$ARMS"
    --label_ratios="$LABEL_RATIOS" --cf_weights="$CF_WEIGHTS"
    --parallel=2 --threads_per_cell=1 --cells_per_process=50 --train_flags="$TRAIN_FLAGS")

# Stage 1 first (the experiment reuses it), so that its vectors can be checked against the
# committed cells' before any cell is restored or run.
if [ ! -f "$WORKDIR/stage1/cf_stage1.json" ]; then
  echo "$TRAIN_FLAGS" | tr ',' '\n' > "$WORKDIR/train_flags.txt"
  python -m cfimage.train --flagfile="$WORKDIR/train_flags.txt" --workdir="$WORKDIR/stage1" \
      --stage1_only
fi
VECTORS="$WORKDIR/stage1/cf_embeddings.npz"
DIGEST="$(python -c "import numpy as np, hashlib, sys; \
print(hashlib.sha256(np.load(sys.argv[1])['vectors'].tobytes()).hexdigest())" "$VECTORS")"
CHECK=""
same_vectors() {  # true when the cells under $1 trained on these vectors (CHECK: why, if known)
  CHECK="no $1/stage1_fingerprint.json (recorded before fingerprints were)"
  if [ "$(cat "$1/stage1_sha256.txt" 2>/dev/null)" = "$DIGEST" ]; then return 0; fi
  [ -f "$1/stage1_fingerprint.json" ] || return 1
  # The sha256 differs: equal up to rounding (another CPU's float kernels) counts as the same.
  if CHECK="$(python scripts/stage1_fingerprint.py check "$VECTORS" \
      "$1/stage1_fingerprint.json" 2>&1)"; then
    echo "movielens_cached.sh: stage-1 vectors against $1: $CHECK"
    return 0
  fi
  return 1
}
mkdir -p "$RESULTS/cells"
# The grid of issue 12 shares its cells only with runs of the same flags on the same vectors.
VERIFIED=""  # the last results folder found to hold cells of these vectors
if [ -z "$OWN_GRID" ] && same_vectors "$BASE"; then
  SHARED="$BASE"
  VERIFIED="$BASE"
else
  SHARED="$RESULTS"
fi
for results in "$SHARED" "$RESULTS"; do
  if [ "$results" = "$VERIFIED" ]; then continue; fi
  if [ -f "$results/stage1_sha256.txt" ] && ! same_vectors "$results"; then
    echo "movielens_cached.sh: stage 1 gave other vectors ($DIGEST) than the committed cells" \
         "($(cat "$results/stage1_sha256.txt")): $CHECK. A different CPU alone changes the" \
         "sha256 (oneDNN picks its sgemm kernels per processor); only a fingerprint of the" \
         "cells' vectors ($results/stage1_fingerprint.json, scripts/stage1_fingerprint.py)" \
         "lets vectors equal up to rounding through. Move $results/cells away to start afresh" >&2
    exit 1
  fi
  VERIFIED="$results"
done
# The sha256 and fingerprint recorded first stay: vectors that passed the fingerprint check
# on another CPU do not overwrite them (the reference would drift with each machine). A
# fingerprint is added only beside a sha256 of these very vectors.
if [ ! -f "$RESULTS/stage1_sha256.txt" ]; then echo "$DIGEST" > "$RESULTS/stage1_sha256.txt"; fi
if [ ! -f "$RESULTS/stage1_fingerprint.json" ] \
    && [ "$(cat "$RESULTS/stage1_sha256.txt")" = "$DIGEST" ]; then
  python scripts/stage1_fingerprint.py write "$VECTORS" "$RESULTS/stage1_fingerprint.json"
fi
for saved in "$SHARED"/cells/*/metrics.json "$RESULTS"/cells/*/metrics.json; do
  [ -f "$saved" ] && [ "$RESTORE" != no ] || continue
  cell="$(basename "$(dirname "$saved")")"
  if [ ! -f "$WORKDIR/cells/$cell/metrics.json" ]; then
    mkdir -p "$WORKDIR/cells/$cell" && cp "$saved" "$WORKDIR/cells/$cell/metrics.json"
  fi
done

keep_cells() {  # copies the finished cells of $ARMS (metrics.json) and the report into $RESULTS
  for done_cell in "$WORKDIR"/cells/*/metrics.json; do
    [ -f "$done_cell" ] || continue
    cell="$(basename "$(dirname "$done_cell")")"
    ours=false  # only this run's arms: the workdir may hold other grids' cells
    for arm in "${ARM_LIST[@]}"; do
      case "$cell" in "${arm}_r"*) ours=true ;; esac
    done
    if [ "$ours" = false ]; then continue; fi
    if [ "$RESULTS" != "$SHARED" ] && [ -f "$SHARED/cells/$cell/metrics.json" ]; then continue; fi
    mkdir -p "$RESULTS/cells/$cell" && cp "$done_cell" "$RESULTS/cells/$cell/metrics.json"
  done
  for report in results.md results.csv map_vs_label_ratio.png gain_vs_label_ratio.png; do
    if [ -f "$WORKDIR/$report" ]; then cp "$WORKDIR/$report" "$RESULTS/"; fi
  done
}
trap keep_cells EXIT
"${EXPERIMENT[@]}"
