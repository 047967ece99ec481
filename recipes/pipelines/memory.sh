#!/usr/bin/env bash
# Memory from one split, used on another: does it help? (ReasoningBank / Dynamic Cheatsheet style)
#
#   recipes/pipelines/memory.sh TRAIN.jsonl TEST.jsonl OUT_DIR [model options...]
#   recipes/pipelines/memory.sh train.jsonl test.jsonl out/memory --model path/to/hf-folder
#
# Trailing options go to every model stage (tts-run and memory-extract), so keep them to those
# both accept: --model, --engine, --base-url, --max-new-tokens, --seed, --no-progress, ...
# Writes OUT_DIR/{train,train.scored,bank,baseline,with_memory,online,online-bank}.jsonl and
# OUT_DIR/score.json, and prints the comparison table. Re-running it resumes every stage.
set -euo pipefail
train=${1:?usage: memory.sh TRAIN.jsonl TEST.jsonl OUT_DIR [model options...]}
test=${2:?usage: memory.sh TRAIN.jsonl TEST.jsonl OUT_DIR [model options...]}
out=${3:?usage: memory.sh TRAIN.jsonl TEST.jsonl OUT_DIR [model options...]}
shift 3
mkdir -p "$out"

# 1. solve the train split with a few traces each: successes and failures both teach
ttx tts-run -i "$train" -o "$out/train.jsonl" --strategy majority --n 2 --resume "$@"

# 2. mark each record correct or not against the gold answers
ttx score -i "$out/train.jsonl" --per-record "$out/train.scored.jsonl" > /dev/null

# 3. distil strategies and pitfalls into the bank (merges into an existing bank)
ttx memory-extract -i "$out/train.scored.jsonl" -o "$out/bank.jsonl" "$@"

# 4. the test split without and with memory: same model, strategy and budget
ttx tts-run -i "$test" -o "$out/baseline.jsonl" --strategy greedy --resume "$@"
ttx tts-run -i "$test" -o "$out/with_memory.jsonl" --strategy greedy --resume \
    --memory "$out/bank.jsonl" --memory-k 1 "$@"

# 5. learning online instead: the test split alone, the bank updated after each problem
ttx tts-run -i "$test" -o "$out/online.jsonl" --strategy greedy --resume \
    --memory "$out/online-bank.jsonl" --memory-update --memory-item-format tips "$@"

# 6. one table for all three
runs=(--compare baseline="$out/baseline.jsonl" --compare memory="$out/with_memory.jsonl"
      --compare online="$out/online.jsonl")
ttx score "${runs[@]}" --json > "$out/score.json"
ttx score "${runs[@]}"
