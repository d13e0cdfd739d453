#!/usr/bin/env bash
# The paper's findings in miniature (issue 5): one SFT model, then PPP and its three ablations trained from
# it by reward weights, all evaluated beside the scripted baselines on the same held-out tasks.
#   bash scripts/reproduce.sh [OUT_DIR]        (default runs/repro; ~1 hour on a 2-core CPU)
# Writes OUT_DIR/results.json and OUT_DIR/results.md (tables); docs/results.md discusses one such run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/repro}
EXTRA=${EXTRA:-}   # e.g. EXTRA="--rl-steps 10" for a quick smoke run
mkdir -p "$OUT"
start=$(date +%s)
echo "== SFT warm start (shared by every RL run)"
python train.py --model small --rl-steps 0 --eval-tasks 0 --out "$OUT/sft" $EXTRA
declare -A WEIGHTS=(
  [ppp]=""
  [no_proact]="--w-proact 0"
  [no_pers]="--w-pers 0"
  [task_only]="--w-proact 0 --w-pers 0"
)
for name in ppp no_proact no_pers task_only; do
  echo "== RL: $name ${WEIGHTS[$name]}"
  python train.py --model "$OUT/sft/model" --sft-steps 0 --eval-tasks 0 --out "$OUT/$name" \
    ${WEIGHTS[$name]} $EXTRA
done
echo "== evaluation"
python eval.py --agent never_ask --agent lazy --agent oracle --agent "$OUT/sft/model" \
  --agent "$OUT/ppp/model" --agent "$OUT/no_proact/model" --agent "$OUT/no_pers/model" \
  --agent "$OUT/task_only/model" --tasks 50 --json "$OUT/results.json" | tee "$OUT/results.md"
echo "== done in $(( $(date +%s) - start )) s; tables in $OUT/results.md"
