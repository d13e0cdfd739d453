#!/usr/bin/env bash
# The paper's findings in miniature (paper Table 2): PPP (the default run) and its three ablations, trained by
# reward weights from the SAME SFT model, evaluated beside the scripted baselines on the same held-out tasks.
#   bash scripts/reproduce.sh [OUT_DIR]        (default runs/repro; ~40 min on a 2-core CPU)
# Writes OUT_DIR/results.json and OUT_DIR/results.md (tables); docs/experiments.md discusses one such run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/repro}
# A quick smoke run: SFT_EXTRA="--pretrain-steps 10 --sft-steps 20" EXTRA="--rl-steps 4"
SFT_EXTRA=${SFT_EXTRA:-}  # warm-start flags, for the PPP run only (the ablations start from its SFT model)
EXTRA=${EXTRA:-}          # RL flags, for every run
mkdir -p "$OUT"
start=$(date +%s)
echo "== PPP: the default run (SFT warm start, then GRPO with all three rewards)"
python train.py --model small --prefs all --out "$OUT/ppp" $SFT_EXTRA $EXTRA | tee "$OUT/ppp.log"
declare -A WEIGHTS=([no_proact]="--w-proact 0" [no_pers]="--w-pers 0" [task_only]="--w-proact 0 --w-pers 0")
for name in no_proact no_pers task_only; do
  echo "== ablation $name: ${WEIGHTS[$name]}, from the same SFT model"
  python train.py --model "$OUT/ppp/sft_model" --sft-steps 0 --eval-tasks 0 --out "$OUT/$name" \
    ${WEIGHTS[$name]} $EXTRA | tee "$OUT/$name.log"
done
echo "== evaluation"
python eval.py --agent never_ask --agent lazy --agent oracle --agent "$OUT/ppp/sft_model" \
  --agent "$OUT/ppp/model" --agent "$OUT/no_proact/model" --agent "$OUT/no_pers/model" \
  --agent "$OUT/task_only/model" --eval-tasks 24 --eval-temperature 1 --json "$OUT/results.json" | tee "$OUT/results.md"
echo "== done in $(( $(date +%s) - start )) s; tables in $OUT/results.md"
