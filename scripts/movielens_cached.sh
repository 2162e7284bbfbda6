#!/usr/bin/env bash
# Issue 12's results: the paper's arms on the MovieLens posters with cached 224x160 Lite0
# features, label ratios 0.1/0.3/1.0, paired seeds. Resumable: run it again to go on; the
# report (results.md) is rebuilt from the finished cells each time.
#   bash scripts/movielens_cached.sh [WORKDIR] [SEEDS]     (defaults: runs/movielens_cached 0-29)
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-runs/movielens_cached}"
SEEDS="${2:-0-29}"
DATA="${CFIMAGE_MOVIELENS_DIR:-../shared/data/movielens_posters}"
CATALOGUE="$WORKDIR/catalogue"
if [ ! -f "$CATALOGUE/items.csv" ]; then
  python scripts/prepare_movielens.py --ratings="$DATA/ratings.csv" \
      --posters="$DATA/posters/ml1m" --min_label_count=10 --out="$CATALOGUE"
fi
python -m cfimage.experiment --workdir="$WORKDIR" --seeds="$SEEDS" \
    --arms=image_only,multitask,multitask_sqrt,multitask_loss,two_stage,contrastive \
    --label_ratios=0.1,0.3,1.0 --cf_weights=0.5,2 \
    --parallel=2 --threads_per_cell=1 --cells_per_process=50 \
    --train_flags="--catalogue=$(cd "$CATALOGUE" && pwd),--allow_outside_paths,\
--unknown_interaction_items=keep,--backbone=efficientnet_lite0,--weights=imagenet,\
--image_size=224x160,--train_backbone=false,--adapter_units=256,\
--feature_cache=$(mkdir -p "$WORKDIR/features" && cd "$WORKDIR/features" && pwd),\
--epochs=30,--early_stopping_patience=5,--batch_size=64,--learning_rate=1e-3,--pretrain_epochs=10"
