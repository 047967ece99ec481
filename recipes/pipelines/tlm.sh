#!/usr/bin/env bash
# Test-Time Learning on a test split, then answer it with and without the adapter.
#
#   recipes/pipelines/tlm.sh TEST.jsonl OUT_DIR [model options...]
#   recipes/pipelines/tlm.sh test.jsonl out/tlm --model path/to/hf-folder --max-new-tokens 256
#
# Trailing options go to tlm-adapt and tts-run, so keep them to those both accept: --model,
# --device, --dtype, --max-new-tokens, --seed, --no-progress, ...
# Writes OUT_DIR/adapter/ (PEFT), OUT_DIR/{baseline,adapted}.jsonl, OUT_DIR/score.json, and prints
# the comparison table. Re-running it resumes every stage.
set -euo pipefail
test=${1:?usage: tlm.sh TEST.jsonl OUT_DIR [model options...]}
out=${2:?usage: tlm.sh TEST.jsonl OUT_DIR [model options...]}
shift 2
mkdir -p "$out"

# 1. learn from the unlabeled test questions (answers never read); skip if already done
if [ ! -f "$out/adapter/adapter_config.json" ]; then
  ttx tlm-adapt -i "$test" -o "$out/adapter" --resume "$@"
fi

# 2. the same questions, greedy, without and with the adapter
ttx tts-run -i "$test" -o "$out/baseline.jsonl" --strategy greedy --resume "$@"
ttx tts-run -i "$test" -o "$out/adapted.jsonl" --strategy greedy --adapter "$out/adapter" --resume "$@"

# 3. one table for both
ttx score --compare baseline="$out/baseline.jsonl" --compare tlm="$out/adapted.jsonl" --json \
    > "$out/score.json"
ttx score --compare baseline="$out/baseline.jsonl" --compare tlm="$out/adapted.jsonl"
