"""Generation throughput with a LoRA adapter (`tts-run --adapter`): the fused forward, which
merges the adapter into its packed weights, against transformers' modules running peft's LoRA
layers on the same packed base weights, and against the base model without the adapter.

    .venv/bin/python bench/adapter_engine.py [--rounds 2]

The adapter is a random LoRA of rank 8 (alpha 16) on all seven linear layers of every decoder
layer of the default model, what tlm-adapt and ttrl train; its values do not change the cost.
The workload is tts_engine's: 4 prompts x 8 traces x 128 forced tokens, temperature 0.7, rounds
alternating. Writes bench/results/adapter_engine.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from bench.tts_engine import _alternate, _prompts, run_hf_engine  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(folder: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from ttx.models import load_model

    model, _, _ = load_model("smollm2-135m-instruct", "cpu", "float32")
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:                   # peft starts B at zero: make the adapter act
                p.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(0))
    lora.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from ttx.engines.hf import HFEngine

    start = machine()                          # the load average before the bench's own work
    prompts = _prompts()
    with tempfile.TemporaryDirectory() as tmp:
        make_adapter(Path(tmp))
        fused = HFEngine(device="cpu", adapter=tmp, prefix_cache_mb=0)
        modules = HFEngine(device="cpu", adapter=tmp, prefix_cache_mb=0)
        modules.fused = None                  # peft's LoRA layers through transformers' modules
        base = HFEngine(device="cpu", prefix_cache_mb=0)
        assert fused.fused is not None
        engines = {"adapter_fused": fused, "adapter_transformers_modules": modules,
                   "no_adapter_fused": base}
        for engine in engines.values():
            run_hf_engine(engine, prompts[:1], 1)                      # warm-up
        results: dict[str, list] = {}
        _alternate({name: (lambda e=e: run_hf_engine(e, prompts, len(prompts)))
                    for name, e in engines.items()}, args.rounds, results)
    summary = {k: round(statistics.mean(r["tokens_per_s"] for r in v), 1)
               for k, v in results.items()}
    out = {"machine": start,
           "settings": {"n": 8, "prompts": len(prompts), "forced_tokens": 128,
                        "temperature": 0.7, "lora_rank": 8, "lora_targets": TARGETS,
                        "rounds": args.rounds},
           "runs": results, "mean_tokens_per_s": summary,
           "fused_over_modules": round(summary["adapter_fused"]
                                       / summary["adapter_transformers_modules"], 3)}
    path = ROOT / "bench" / "results" / "adapter_engine.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2), out["fused_over_modules"])


if __name__ == "__main__":
    main()
