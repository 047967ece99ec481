#!/usr/bin/env bash
# A verifier from the policy's own samples, then verifier-guided search on other problems.
#
#   recipes/pipelines/verifier.sh TRAIN.jsonl TEST.jsonl OUT_DIR [model options...]
#   python -m ttx.data.arith --n 60 --seed 1 -o train.jsonl
#   python -m ttx.data.arith --n 30 --seed 0 -o test.jsonl
#   recipes/pipelines/verifier.sh train.jsonl test.jsonl out/verifier --temperature 0.4 --seed 0
#
# Trailing options go to tts-run and verifier-train, so keep them to those both accept: --model
# (the policy and the verifiers' base), --device, --dtype, --max-new-tokens, --temperature,
# --top-p, --seed, --no-progress, ... N (default 8) sets the traces per problem.
# Writes OUT_DIR/{train,train.scored}.jsonl, the verifiers OUT_DIR/orm/ and OUT_DIR/prm/, the test
# runs OUT_DIR/{greedy,orm-best-of-n,prm-beam}.jsonl and OUT_DIR/score.json, and prints
# the comparison table. Re-running it resumes every stage.
set -euo pipefail
train=${1:?usage: verifier.sh TRAIN.jsonl TEST.jsonl OUT_DIR [model options...]}
test=${2:?usage: verifier.sh TRAIN.jsonl TEST.jsonl OUT_DIR [model options...]}
out=${3:?usage: verifier.sh TRAIN.jsonl TEST.jsonl OUT_DIR [model options...]}
shift 3
n=${N:-8}
mkdir -p "$out"

# 1. sample the training problems: n traces each, right and wrong ones alike
ttx tts-run -i "$train" -o "$out/train.jsonl" --strategy sample --n "$n" --resume "$@"

# 2. judge every trace against the gold answers
ttx score -i "$out/train.jsonl" --per-record "$out/train.scored.jsonl" > /dev/null

# 3. an outcome verifier, and a process verifier (Math-Shepherd tags, labels from outcomes)
ttx verifier-train -i "$out/train.scored.jsonl" -o "$out/orm" --kind orm --resume "$@"
ttx verifier-train -i "$out/train.scored.jsonl" -o "$out/prm" --kind prm --resume "$@"

# 4. the test problems: greedy, then the verifiers guiding best-of-n and beam search
ttx tts-run -i "$test" -o "$out/greedy.jsonl" --strategy greedy --resume "$@"
ttx tts-run -i "$test" -o "$out/orm-best-of-n.jsonl" --strategy best-of-n --n "$n" \
    --reward-model "$out/orm" --resume "$@"
ttx tts-run -i "$test" -o "$out/prm-beam.jsonl" --strategy beam --n "$n" \
    --reward-model "$out/prm" --resume "$@"

# 5. one table for all three
runs=(--compare greedy="$out/greedy.jsonl" --compare orm-best-of-n="$out/orm-best-of-n.jsonl"
      --compare prm-beam="$out/prm-beam.jsonl")
ttx score "${runs[@]}" --json > "$out/score.json"
ttx score "${runs[@]}"
