#!/usr/bin/env bash
# In-Place TTT end to end: convert a model, continue training it on long documents, generate.
#
#   recipes/pipelines/inplace-ttt.sh DOCS.jsonl PROBLEMS.jsonl OUT_DIR [training options...]
#   MODEL=smollm2-135m-instruct CHUNK=256 recipes/pipelines/inplace-ttt.sh \
#       ../shared/data/gsm8k/train.jsonl problems.jsonl out/ttt \
#       --text-field question,answer --join-records 12 --max-length 1024 --max-steps 100
#
# Environment: MODEL (default smollm2-135m-instruct), LAYERS (default every 6th), CHUNK (256),
# MAX_NEW_TOKENS (256, for tts-run). Trailing options go to the training stage.
# Writes OUT_DIR/converted, OUT_DIR/trained (checkpoints), OUT_DIR/runs.jsonl and
# OUT_DIR/score.json. Re-running it skips finished stages and resumes an interrupted training.
set -euo pipefail
docs=${1:?usage: inplace-ttt.sh DOCS.jsonl PROBLEMS.jsonl OUT_DIR [training options...]}
problems=${2:?usage: inplace-ttt.sh DOCS.jsonl PROBLEMS.jsonl OUT_DIR [training options...]}
out=${3:?usage: inplace-ttt.sh DOCS.jsonl PROBLEMS.jsonl OUT_DIR [training options...]}
shift 3
mkdir -p "$out"
layers=()
if [[ -n "${LAYERS:-}" ]]; then layers=(--layers "$LAYERS"); fi

# 1. convert: the down projections of the chosen layers become fast weights (same logits as before)
if [[ ! -f "$out/converted/config.json" ]]; then
    ttx inplace-ttt-convert --model "${MODEL:-smollm2-135m-instruct}" -o "$out/converted" \
        --chunk "${CHUNK:-256}" "${layers[@]}"
fi

# 2. continued training on long documents makes the fast weights useful (resumable)
if [[ ! -f "$out/trained/config.json" ]]; then
    ttx inplace-ttt-convert --model "$out/converted" -i "$docs" -o "$out/trained" --resume "$@"
fi

# 3. generate with the TTT cache (fast weights update as each chunk fills), then score
ttx tts-run --model "$out/trained" -i "$problems" -o "$out/runs.jsonl" --strategy greedy \
    --max-new-tokens "${MAX_NEW_TOKENS:-256}" --resume
ttx score -i "$out/runs.jsonl" --json > "$out/score.json"
ttx score -i "$out/runs.jsonl"
