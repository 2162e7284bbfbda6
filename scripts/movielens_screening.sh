#!/usr/bin/env bash
# Issue 13's screening on the MovieLens posters: each CF model, target and loss option of
# docs/experiments.md ("CF models, targets and losses") against image-only, on the cached
# protocol of docs/results/movielens_cached (same catalogue, features, flags, label ratios
# 0.1/0.3/1.0, λ in {0.5, 2} chosen on validation, paired seeds), then one report over all of
# them and the issue-12 and distill arms (`python -m cfimage.screen`).
#   bash scripts/movielens_screening.sh [OPTIONS] [SEEDS]
#       (defaults: every option below, 0-29; OPTIONS: names, comma-separated, e.g. cosine,l2)
#   bash scripts/movielens_screening.sh confirm [SEEDS]      (default 0-9)
#       the configuration chosen on validation per label ratio, end to end (see below)
# Each option is an experiment of its own (scripts/movielens_cached.sh with EXTRA_FLAGS) in
# runs/movielens_<option>, reported under docs/results/movielens_variants/<option>/ (commit
# its cells as they arrive: a rerun restores them and runs only the missing ones). Image-only
# reads no CF vector, so its cells are the issue-12 grid's, copied into each workdir
# (cfimage.screen checks that they agree). The two-tower options share the issue-12 grid's
# stage 1 (runs/movielens_cached/stage1, run first if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANTS=docs/results/movielens_variants
declare -A FLAGS=(
  [mult_vae]=--cf_model=mult_vae,--cf_target=raw  # the paper's recipe: raw decoder rows + bias
  [svd]=--cf_model=svd
  [cosine]=--cf_loss=cosine
  [l2]=--cf_target=l2
  [infonce]=--cf_loss=infonce
  [score]=--cf_loss=score
  [mse]=--cf_loss=mse
  [pca_whiten]=--cf_target=pca_whiten:16
  [min_interactions]=--cf_loss_min_interactions=10
  # Each option's own knob at a second value (chosen on validation with λ by cfimage.screen):
  [infonce_tau05]=--cf_loss=infonce,--cf_temperature_stage2=0.5
  [pca_whiten4]=--cf_target=pca_whiten:4
  [min_interactions3]=--cf_loss_min_interactions=3
)
ORDER=mult_vae,svd,cosine,l2,infonce,score,mse,pca_whiten,min_interactions
ORDER=$ORDER,infonce_tau05,pca_whiten4,min_interactions3
declare -A SAME_OPTION=([infonce_tau05]=infonce [pca_whiten4]=pca_whiten
                        [min_interactions3]=min_interactions)  # the knob's other value
if [ "${1:-}" = confirm ]; then
  # The configuration chosen on validation per label ratio (chosen.csv of the report below),
  # end to end (PROTOCOL=e2e of movielens_cached.sh: Lite0 fine-tuned at 96x64, 6 epochs)
  # against image-only on paired seeds; image-only's seeds 0-4 are the e2e cells of
  # docs/results/movielens_hybrid/e2e (same protocol; image-only reads no CF vector).
  SEEDS="${2:-0-9}"
  tail -n +2 "$VARIANTS/chosen.csv" | while IFS=, read -r ratio option arm cf_weight _; do
    if [ "$arm" = image_only ]; then
      echo "== label ratio $ratio: image-only chosen on validation, nothing to confirm"
      continue
    fi
    extra="${FLAGS[$option]:-}"  # issue12 and distill: the default flags
    workdir="runs/movielens_confirm_r$ratio"
    mkdir -p "$workdir/cells"
    cp -rn docs/results/movielens_hybrid/e2e/cells/image_only_r"$ratio"_* "$workdir/cells/" \
        2>/dev/null || true
    echo "== label ratio $ratio: $option $arm λ=$cf_weight ($extra), end to end"
    PROTOCOL=e2e EXTRA_FLAGS="$extra" ARMS="image_only,$arm" LABEL_RATIOS="$ratio" \
    CF_WEIGHTS="$cf_weight" RESULTS="$VARIANTS/e2e/r$ratio" \
        bash scripts/movielens_cached.sh "$workdir" "$SEEDS"
  done
  CONFIRMED=""
  for results in "$VARIANTS"/e2e/r*/results.csv; do
    [ -f "$results" ] || continue
    ratio_dir="$(dirname "$results")"
    CONFIRMED="${CONFIRMED:+$CONFIRMED,}$(basename "$ratio_dir")=$ratio_dir"
  done
  # Holm over the label ratios' confirmations together (each ratio's results.md has one test).
  [ -z "$CONFIRMED" ] || python -m cfimage.screen --out="$VARIANTS/e2e" --results="$CONFIRMED"
  exit 0
fi
OPTIONS="${1:-$ORDER}"
SEEDS="${2:-0-29}"
IFS=, read -ra OPTION_LIST <<<"$OPTIONS"
for option in "${OPTION_LIST[@]}"; do
  if [ -z "${FLAGS[$option]:-}" ]; then
    echo "movielens_screening.sh: unknown option $option (${ORDER})" >&2
    exit 1
  fi
done

if [ ! -f runs/movielens_cached/stage1/cf_stage1.json ]; then  # the shared two-tower stage 1
  ARMS=image_only LABEL_RATIOS=0.1 RESULTS=runs/movielens_cached/stage1_report \
      bash scripts/movielens_cached.sh runs/movielens_cached 0-0
fi
for option in "${OPTION_LIST[@]}"; do
  workdir="runs/movielens_$option"
  mkdir -p "$workdir/cells"
  cp -rn docs/results/movielens_cached/cells/image_only_* "$workdir/cells/"
  case "${FLAGS[$option]}" in
    *--cf_model=*) ;;  # a stage 1 of its own
    *) if [ ! -f "$workdir/stage1/cf_stage1.json" ]; then
         mkdir -p "$workdir/catalogue" "$workdir/stage1"
         cp -r runs/movielens_cached/catalogue/. "$workdir/catalogue/"
         cp -r runs/movielens_cached/stage1/. "$workdir/stage1/"
       fi ;;
  esac
  echo "== $option (${FLAGS[$option]})"
  EXTRA_FLAGS="${FLAGS[$option]}" FEATURES=runs/movielens_cached/features \
  ARMS=image_only,multitask RESULTS="$VARIANTS/$option" \
      bash scripts/movielens_cached.sh "$workdir" "$SEEDS"
  cp "$workdir/stage1/cf_stage1.json" "$VARIANTS/$option/"  # its held-out recall@k
done

# One report over every finished option, the issue-12 arms and the distill arms; an option's
# own knob is chosen on validation between its two values (--same_option).
RESULTS_ARG=issue12=docs/results/movielens_cached,distill=$VARIANTS
SAME_ARG=""
for option in ${ORDER//,/ }; do
  if [ -f "$VARIANTS/$option/results.csv" ]; then
    RESULTS_ARG="$RESULTS_ARG,$option=$VARIANTS/$option"
    other="${SAME_OPTION[$option]:-}"
    if [ -n "$other" ] && [ -f "$VARIANTS/$other/results.csv" ]; then
      SAME_ARG="${SAME_ARG:+$SAME_ARG,}$option=$other"
    fi
  fi
done
python -m cfimage.screen --out="$VARIANTS" --results="$RESULTS_ARG" --same_option="$SAME_ARG"
