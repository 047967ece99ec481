#!/usr/bin/env bash
# Test-time scaling then scoring: greedy, and majority voting at n = 1, 2, 4, 8, on one problem set.
#
#   recipes/pipelines/tts-and-score.sh PROBLEMS.jsonl OUT_DIR [tts-run options...]
#   recipes/pipelines/tts-and-score.sh problems.jsonl out/run --model path/to/hf-folder
#
# Writes OUT_DIR/greedy.jsonl, OUT_DIR/majority.jsonl (one record per problem and level),
# OUT_DIR/scaling.png and OUT_DIR/score.json, and prints the score table. Re-running it resumes.
set -euo pipefail
problems=${1:?usage: tts-and-score.sh PROBLEMS.jsonl OUT_DIR [tts-run options...]}
out=${2:?usage: tts-and-score.sh PROBLEMS.jsonl OUT_DIR [tts-run options...]}
shift 2
mkdir -p "$out"

# 1. greedy decoding: the baseline every scaling curve is measured against
ttx tts-run -i "$problems" -o "$out/greedy.jsonl" --strategy greedy --resume "$@"

# 2. majority voting at growing n: one file, one record per (problem, level)
ttx tts-run -i "$problems" -o "$out/majority.jsonl" --strategy majority --levels n=1,2,4,8 \
    --resume "$@"

# 3. one table for both runs, the ARISE ranking, and the scaling plot
ttx score --compare greedy="$out/greedy.jsonl" --compare majority="$out/majority.jsonl" \
    --plot "$out/scaling.png" --json > "$out/score.json"
ttx score --compare greedy="$out/greedy.jsonl" --compare majority="$out/majority.jsonl"
echo "plot: $out/scaling.png   summary: $out/score.json"
