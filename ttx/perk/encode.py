"""`ttx perk-encode`: PERK at test time (Chen et al. 2025, §3.1).

Per record: run the inner loop on its context from the meta-learned LoRA init, write the adapted
weights into the PEFT model, answer the question with the question alone in the prompt (greedy,
through ttx's hf engine), then put the init back, so nothing leaks from one record to the next.
Answers are tts-run records (`ttx score` scores them); `--resume` skips ids already written.
"""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import asdict
from pathlib import Path

from ttx.options import resume_may_change
from ttx.perk.config import EncodeConfig
from ttx.records import Output, refuse_overlap, stage_fingerprint

STAGE = "perk-encode"


def record_seed(seed: int, rid) -> int:
    """A per-record seed (LoRA dropout in the inner loop) that does not depend on record order."""
    return zlib.crc32(f"{seed}:{rid}".encode())


class PerkAnswerer:
    """Answer records with a PERK module: adapt per record, generate through the hf engine."""

    def __init__(self, module, tokenizer, model_name: str, max_new_tokens: int = 16,
                 grad_accum: int = 1, seed: int = 0):
        from ttx.engines import engine_over

        self.module, self.tokenizer = module, tokenizer
        self.engine = engine_over(module.model, tokenizer, name=model_name)
        self.max_new_tokens, self.grad_accum, self.seed = max_new_tokens, grad_accum, seed
        self.init = module.snapshot()               # the meta-learned init, restored per record

    def answer(self, record: dict, cfg: EncodeConfig) -> dict:
        import torch

        from ttx.engines.base import SamplingParams
        from ttx.perk.inner import adapt
        from ttx.perk.segments import context_segments, question_prompt
        from ttx.tts.sampling import Greedy
        from ttx.tts.strategy import StrategyConfig

        m = self.module
        device = m.inner_lrs.device
        start = time.perf_counter()
        torch.manual_seed(record_seed(self.seed, record[cfg.id_field]))
        segments = context_segments(self.tokenizer, record[cfg.context_field],
                                    m.cfg.segment_tokens).to(device)
        init = {n: t.clone() for n, t in self.init.items()}
        params, history = adapt(m, segments, unroll=0, grad_accum=self.grad_accum, init=init,
                                lrs=m.inner_lrs.detach())
        m.load_lora(params)
        try:
            strategy = StrategyConfig(strategy="greedy", n=1, params=SamplingParams(
                max_new_tokens=self.max_new_tokens, temperature=0.0, stop=("\n",)))
            prompt = question_prompt(record[cfg.question_field], segments.count)
            gen = self.engine.generate([prompt], 1, strategy.params)[0]
        finally:
            m.load_lora(self.init)                  # discard the adapter: nothing leaks
        outcome = Greedy(strategy).outcome(gen, strategy)
        return {**record, "strategy": "perk", "n": 1, "level_key": "n", "level": 1, "repeat": 0,
                "traces": outcome.traces, "pred": outcome.pred,
                "completion_tokens": outcome.completion_tokens,
                "sequential_tokens": outcome.sequential_tokens,
                "prompt_tokens": outcome.prompt_tokens,
                "wall_s": round(time.perf_counter() - start, 4), "model": self.engine.model_name,
                "perk": {"segments": segments.count, "context_tokens": segments.loss_tokens,
                         "inner_steps": int(m.inner_lrs.shape[0]),
                         "inner_loss": [round(x, 5) for x in history]}}


def read_inputs(cfg: EncodeConfig) -> list[dict]:
    """The records, validated (string context and question, unique ids) before a model loads."""
    from ttx.perk.metatrain import read_records

    return read_records(cfg.input, (cfg.context_field, cfg.question_field), cfg.limit,
                        cfg.id_field, unique=True)


def encode(cfg: EncodeConfig, options: dict | None = None, module=None, tokenizer=None) -> dict:
    """Answer every record of cfg.input with PERK; returns the manifest summary.

    `module`/`tokenizer` take an already built PERK module (benchmarks: a fresh LoRA init)."""
    from tqdm import tqdm

    from ttx.scoring.answers import answers_equal, extract_answer

    refuse_overlap(cfg.output, [cfg.input])
    records = read_inputs(cfg)                  # bad input fails before a model is loaded
    if module is None:
        module, tokenizer = load_perk(cfg)
    fingerprint = stage_fingerprint(asdict(cfg), [str(Path(cfg.perk) / "perk_state.safetensors")],
                                    volatile=resume_may_change(EncodeConfig))
    out = Output(cfg.output, stage=STAGE, fingerprint=fingerprint, inputs=[cfg.input],
                 resume=cfg.resume, key=lambda r: str(r.get(cfg.id_field)))
    todo = [r for r in records if not out.has(str(r[cfg.id_field]))]
    answerer = PerkAnswerer(module, tokenizer, cfg.model or module.cfg.model, cfg.max_new_tokens,
                            cfg.inner_grad_accum, cfg.seed)
    stats = {"written": 0, "correct": 0, "graded": 0}
    t0 = time.perf_counter()
    try:
        for record in tqdm(todo, desc=STAGE, unit="record", file=sys.stderr,
                           disable=not cfg.progress):
            row = answerer.answer(record, cfg)
            out.write(row)
            stats["written"] += 1
            gold = record.get(cfg.answer_field)
            if gold is not None:
                stats["graded"] += 1
                stats["correct"] += answers_equal(row["pred"], extract_answer(str(gold)))
    except BaseException:
        out.close()
        raise
    summary = {"records": len(records), "written": stats["written"],
               "skipped_done": len(records) - len(todo),
               "accuracy_of_written": stats["correct"] / stats["graded"] if stats["graded"]
               else None, "wall_s": round(time.perf_counter() - t0, 3)}
    out.close(summary, options={"cli": options or {}, "run": asdict(cfg)})
    return summary


def load_perk(cfg: EncodeConfig):
    """(PERK module, tokenizer): the base model with the meta-learned LoRA, step sizes, head."""
    from ttx.models import load_model
    from ttx.perk import module as pm

    perk_cfg, _ = pm.read_config(Path(cfg.perk))
    base, tokenizer, folder = load_model(cfg.model or perk_cfg.model, cfg.device, cfg.dtype)
    module = pm.load(base, Path(cfg.perk), folder)
    for p in module.parameters():
        p.requires_grad_(False)      # test time: only the inner loop's own copies need gradients
    return module, tokenizer
