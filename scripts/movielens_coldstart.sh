#!/usr/bin/env bash
# Issue 13's cold-start figures on the MovieLens posters: for the test items (never trained on),
# audience recall@50 of the real raters (model vs popularity vs the item's own vector) and
# similar-items label overlap / CF-neighbour recall@10 (predicted vector vs image-only
# embedding), `python -m cfimage.coldstart` over the models of the cached protocol of
# docs/results/movielens_cached (same catalogue, stage 1, features and flags).
#   bash scripts/movielens_coldstart.sh [WORKDIR] [SEEDS]   (defaults: runs/movielens_coldstart 0-4)
# The cells are trained afresh (RESTORE=no: the committed cells hold metrics only, and the
# measurement needs each model's checkpoint); resumable: finished cells are kept, measured runs
# are read back from the report's cache. Report: docs/results/movielens_coldstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-runs/movielens_coldstart}"
SEEDS="${2:-0-4}"
RESULTS=docs/results/movielens_coldstart
LABEL_RATIOS="${LABEL_RATIOS:-0.1,1.0}"

RESTORE=no ARMS=image_only,multitask LABEL_RATIOS="$LABEL_RATIOS" CF_WEIGHTS=0.5,2 \
    FEATURES="${FEATURES:-runs/movielens_cached/features}" RESULTS="$RESULTS" \
    bash scripts/movielens_cached.sh "$WORKDIR" "$SEEDS"
python -m cfimage.coldstart --workdir="$WORKDIR/coldstart" --runs="$WORKDIR/cells/*"
for report in "$WORKDIR"/coldstart/coldstart.md "$WORKDIR"/coldstart/coldstart.csv; do
  cp "$report" "$RESULTS/"
done
