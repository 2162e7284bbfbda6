#!/usr/bin/env bash
# One command on a GPU machine (after `pip install -e '.[gpu]'`), from anywhere:
#     scripts/benchmark_gpu.sh [more benchmark.py flags]
# Runs scripts/benchmark.py at 224 px, batch 64: input pipeline, image-only vs multitask,
# two-tower, serving signature, and, because a GPU is present, training in float32 vs
# mixed_float16 with XLA off vs on. Writes docs/benchmarks_gpu.json; a few minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import tensorflow as tf, sys; sys.exit(0 if tf.config.list_physical_devices("GPU")
          else "benchmark_gpu.sh: TensorFlow sees no GPU (pip install -e .[gpu]?)")'
python scripts/benchmark.py --image_size=224 --batch_size=64 --steps=50 \
    --out=docs/benchmarks_gpu.json "$@"
