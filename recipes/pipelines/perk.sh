#!/usr/bin/env bash
# PERK end to end: generate synthetic recall records -> perk-metatrain -> perk-encode -> score.
#
#   recipes/pipelines/perk.sh OUT_DIR [perk-metatrain options...] [-- perk-encode options...]
#   recipes/pipelines/perk.sh out/perk --config recipes/perk-metatrain-cpu.yaml
#   TRAIN_N=400 CONTEXT_WORDS=400 recipes/pipelines/perk.sh out/perk --lora-r 16 -- --limit 20
#
# Environment: TRAIN_N (200), TEST_N (30) records, CONTEXT_WORDS (200) per context, FACTS (3).
# Writes OUT_DIR/train.jsonl, test.jsonl, perk/ (the PERK folder), answers.jsonl, score.json and
# prints the score table. Re-running it resumes (meta-training from its newest checkpoint).
set -euo pipefail
out=${1:?usage: perk.sh OUT_DIR [perk-metatrain options...] [-- perk-encode options...]}
shift
train_opts=()
while [[ $# -gt 0 && $1 != "--" ]]; do train_opts+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
encode_opts=("$@")
mkdir -p "$out"

# 1. data: held-out test records come from another seed (other names, numbers and positions)
python -m ttx.data.recall --n "${TRAIN_N:-200}" --context-words "${CONTEXT_WORDS:-200}" \
    --facts "${FACTS:-3}" --seed 0 -o "$out/train.jsonl"
python -m ttx.data.recall --n "${TEST_N:-30}" --context-words "${CONTEXT_WORDS:-200}" \
    --facts "${FACTS:-3}" --seed 1 -o "$out/test.jsonl"

# 2. meta-train the LoRA init, the inner step sizes and the token-weighting head
ttx perk-metatrain -i "$out/train.jsonl" -o "$out/perk" --resume ${train_opts[@]+"${train_opts[@]}"}

# 3. test time: per record, inner loop on its context, answer without the context, discard
ttx perk-encode --perk "$out/perk" -i "$out/test.jsonl" -o "$out/answers.jsonl" --resume \
    ${encode_opts[@]+"${encode_opts[@]}"}

# 4. score the answers like any tts-run records
ttx score -i "$out/answers.jsonl" --json > "$out/score.json"
ttx score -i "$out/answers.jsonl"
