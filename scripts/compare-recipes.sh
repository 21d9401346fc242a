#!/bin/bash
# Every row of trainer/RESULTS.md's comparison, the shipped counter, its held-out check and the
# training-speed bench, one command at a time on a quiet machine (scripts/wait-quiet.sh before
# each). Steps (default: all, in this order; about 2 h 15 min on 2 CPU cores):
#   pixels whole shipped frozen-lite0 frozen-lite1 frozen-lite2 bench heldout
# and frozen-lite0-160 (input size); after GPU runs (scripts/gpu-whole.sh) copied to
# artifacts/gpu-runs: gpu-import ensembles.
# Needs the extra set in data/abid-extra (../shared/data/abid-extra/README.md says how).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
P=artifacts/cache/pixels224
CAL=trainer/results/extra-original-ids.txt
steps=("$@")
(( ${#steps[@]} )) || steps=(pixels whole shipped frozen-lite0 frozen-lite1 frozen-lite2 bench heldout)
for step in "${steps[@]}"; do
  echo "== $step"
  scripts/wait-quiet.sh
  case $step in
    pixels) "$BIN/binaudit" train pixels --source-dir data/abid-extra --out $P ;;
    whole) "$BIN/binaudit" train whole --pixels $P --name whole-lite0 --order 30 \
             --description "Lite0 whole network: 4 epochs 160 px + 6 at 224, AdamW (head 1e-3, backbone 3e-4), warm-up + cosine, EMA, count-preserving augmentation, soft labels σ 0.6, median" \
             --calibration-ids $CAL --out artifacts/models/whole-lite0 ;;
    shipped) # the counter shipped 2026-12-02, from git history
             mkdir -p artifacts/models/shipped-20261202
             git show 598ed85:models/counter/model.pt > artifacts/models/shipped-20261202/model.pt
             git show 598ed85:models/counter/model.json > artifacts/models/shipped-20261202/model.json
             "$BIN/binaudit" train score --pixels $P --artifact artifacts/models/shipped-20261202 \
               --name shipped-tail --order 20 --calibration-ids $CAL \
               --description "Lite0 head conv + classifier on cached frozen maps, soft labels (counter shipped 2026-12-02)" ;;
    frozen-lite0-160) # input size: the same frozen recipe on a 160-px decode of the same images
      "$BIN/binaudit" train pixels --source-dir data/abid-extra --out artifacts/cache/pixels160 --image-size 160
      "$BIN/binaudit" train frozen --pixels artifacts/cache/pixels160 --calibration-ids $CAL \
        --architecture efficientnet_lite0 --name frozen-lite0-160 --order 9 ;;
    frozen-lite*) "$BIN/binaudit" train frozen --pixels $P --calibration-ids $CAL \
                    --architecture "efficientnet_${step#frozen-}" --order "1${step: -1}" ;;
    gpu-import) # whole-network runs trained on a borrowed H200 (scripts/gpu-whole.sh), scored here
      n=0
      for run in ${GPU_RUNS:-artifacts/gpu-runs/lite*-s*.pt}; do
        name=$(basename "$run" .pt) arch=${name%-s*} seed=${name##*-s} n=$((n + 1))
        [[ $n == 1 ]] || scripts/wait-quiet.sh
        "$BIN/binaudit" train whole-import --run "$run" --pixels $P --calibration-ids $CAL \
          --name "whole-gpu-$name" --order "3$n" --out "artifacts/models/whole-gpu-$name" \
          --description "${arch^} whole network on an H200: 25 epochs at 224 px, batch 128, AdamW (head 2e-3, backbone 6e-4), warm-up + cosine, EMA weights of the lowest-NLL epoch, batched count-preserving augmentation, bf16, trained on WebP-q85 pixels; seed $seed"
      done ;;
    ensembles) # means of the whole-network counters' probabilities (each member's logits cached)
      G=artifacts/models/whole-gpu
      ens() { "$BIN/binaudit" train ensemble-score --pixels $P --calibration-ids $CAL "$@"; }
      ens --name ensemble-all6 --order 61 --description "mean of the 6 whole-network counters (Lite0 on the CPU; Lite0 ×2, Lite1, Lite2 ×2 on the H200)" \
        --artifact models/counter --artifact $G-lite0-s0 --artifact $G-lite0-s1 \
        --artifact $G-lite1-s0 --artifact $G-lite2-s0 --artifact $G-lite2-s1
      ens --name ensemble-lite0x3 --order 62 --description "mean of the 3 whole-network Lite0 counters (CPU run, H200 seeds 0 and 1)" \
        --artifact models/counter --artifact $G-lite0-s0 --artifact $G-lite0-s1
      ens --name ensemble-lite2x2 --order 63 --description "mean of the 2 whole-network Lite2 counters (H200 seeds 0 and 1)" \
        --artifact $G-lite2-s0 --artifact $G-lite2-s1 ;;
    bench) "$BIN/python" -m bench.train_threads --steps 5 --sizes 160,224 --batch-size 16 ;;
    heldout) # looked at once per shipped model, after it is frozen
      "$BIN/binaudit" train pixels --source-dir ../shared/data/abid-sample --out artifacts/cache/sample224
      "$BIN/binaudit" train heldout --pixels artifacts/cache/sample224 --artifact models/counter \
        --out trainer/results/heldout-sample-whole-lite0.json
      "$BIN/binaudit" train heldout --pixels artifacts/cache/sample224 \
        --artifact artifacts/models/shipped-20261202 --out trainer/results/heldout-sample-shipped-20261202.json ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
