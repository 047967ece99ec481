#!/usr/bin/env bash
# Distill a model into a hybrid Mamba-2 / attention model, then run the same problems with the
# teacher and the hybrid and score them side by side.
#
#   recipes/pipelines/distill-mamba.sh MODEL TRAIN.jsonl PROBLEMS.jsonl OUT_DIR [distill-to-mamba options...]
#   recipes/pipelines/distill-mamba.sh smollm2-135m-instruct ../shared/data/gsm8k/train.jsonl \
#       problems.jsonl out/mamba --config recipes/distill-to-mamba.yaml
#
# Writes OUT_DIR/hybrid (the Bamba checkpoint + manifest), OUT_DIR/teacher.jsonl,
# OUT_DIR/hybrid.jsonl (greedy tts-run records) and OUT_DIR/score.json, and prints the table.
# MAX_NEW_TOKENS (default 256) bounds each answer. Re-running it resumes training and tts-run.
set -euo pipefail
usage="usage: distill-mamba.sh MODEL TRAIN.jsonl PROBLEMS.jsonl OUT_DIR [distill-to-mamba options...]"
model=${1:?$usage}
train=${2:?$usage}
problems=${3:?$usage}
out=${4:?$usage}
shift 4
mkdir -p "$out"
tokens=${MAX_NEW_TOKENS:-256}

# 1. convert + distill (continues from the newest checkpoint if a run was interrupted)
ttx distill-to-mamba -m "$model" -i "$train" -o "$out/hybrid" --resume "$@"

# 2. the same greedy run with the teacher and with the hybrid (the hybrid loads as a plain HF folder)
ttx tts-run -m "$model" -i "$problems" -o "$out/teacher.jsonl" --strategy greedy \
    --max-new-tokens "$tokens" --resume --no-progress
ttx tts-run -m "$out/hybrid" -i "$problems" -o "$out/hybrid.jsonl" --strategy greedy \
    --max-new-tokens "$tokens" --resume --no-progress

# 3. accuracy and tokens, teacher against hybrid
ttx score --compare teacher="$out/teacher.jsonl" --compare hybrid="$out/hybrid.jsonl" --json \
    > "$out/score.json"
ttx score --compare teacher="$out/teacher.jsonl" --compare hybrid="$out/hybrid.jsonl"
echo "hybrid: $out/hybrid   summary: $out/score.json"
