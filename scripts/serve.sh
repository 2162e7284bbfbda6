#!/usr/bin/env bash
# Serves every model under saved_models/ with the official TensorFlow Serving image:
# REST on 8501, gRPC on 8500, models and versions from scripts/models.config, server-side
# batching from scripts/batching_parameters.txt.
#
#   scripts/serve.sh                          # from the repository root
#   SAVED_MODELS=/srv/models TF_SERVING_IMAGE=tensorflow/serving:2.19.1-gpu scripts/serve.sh
#
# Then: python scripts/client.py --signature=serving_default poster.jpg
# TF Serving polls the config's base paths: a new version that cfimage.train exports
# (written atomically) is loaded and the old one unloaded without a restart.
set -euo pipefail
cd "$(dirname "$0")/.."

SAVED_MODELS="$(realpath "${SAVED_MODELS:-saved_models}")"
MODELS_CONFIG="$(realpath "${MODELS_CONFIG:-scripts/models.config}")"
BATCHING="$(realpath "${BATCHING_PARAMETERS:-scripts/batching_parameters.txt}")"
IMAGE="${TF_SERVING_IMAGE:-tensorflow/serving:latest}"
REST_PORT="${REST_PORT:-8501}"
GRPC_PORT="${GRPC_PORT:-8500}"

if [ ! -d "$SAVED_MODELS" ]; then
  echo "no $SAVED_MODELS: export a model first (python -m cfimage.train)" >&2
  exit 1
fi

exec docker run --rm --name "${CONTAINER_NAME:-cfimage-serving}" \
  -p "$REST_PORT:8501" -p "$GRPC_PORT:8500" \
  -v "$SAVED_MODELS:/models:ro" \
  -v "$MODELS_CONFIG:/config/models.config:ro" \
  -v "$BATCHING:/config/batching_parameters.txt:ro" \
  "$IMAGE" \
  --model_config_file=/config/models.config \
  --model_config_file_poll_wait_seconds=60 \
  --enable_batching=true \
  --batching_parameters_file=/config/batching_parameters.txt \
  --enable_model_warmup=true \
  "$@"
