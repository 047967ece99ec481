"""Does test-time RL on unlabeled questions beat the majority vote it learns from?

    .venv/bin/python bench/ttrl.py [--problems 16] [--steps 10] [--only TTRL TTRL+EAR] [--smoke]

The test set: problems of the bundled arithmetic generator (ttx.data.arith, seed 0), trained on
without their answers (the stage logs the pseudo-labels' accuracy against them, nothing more).
Before: the default model's greedy accuracy and maj@k (k = --eval-n samples at TTRL's evaluation
setting, temperature 0.6, top-p 0.95). Then the real stage (ttx.rl.ttrl.run_ttrl, LoRA) in four
configurations: TTRL, TTRL + ETMR, TTRL + EAR, TTRL + ETMR + EAR, each followed by the same greedy
and maj@k evaluation of the adapted model. Rollouts sample at temperature 0.6 by default, not TTRL's
1.0: at 1.0 the default model's 8 votes on a question scatter (majority ratio 0.16 in a measured
first step, pseudo-label accuracy 0) and there is no consensus to learn from. Per configuration:
rollout tokens generated, wall time, and the pseudo-label accuracy and majority ratio at each
rollout step. The paper's claim to test
is "accuracy after TTRL exceeds maj@k before". Writes bench/results/ttrl.json (--smoke: the same
code on 2 problems, one rollout step, TTRL and TTRL+ETMR+EAR only, written to a temporary folder
unless --out is given). A run with --only keeps the other configurations' rows of an earlier file
of the same size and temperature; each row records its own machine and commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

MODEL = "smollm2-135m-instruct"
CONFIGS = [("TTRL", {}), ("TTRL+ETMR", {"etmr": True}), ("TTRL+EAR", {"ear": True}),
           ("TTRL+ETMR+EAR", {"etmr": True, "ear": True})]
# Sized for 2 CPU cores: 8 votes of which 4 trained (TTRL's 1:2), ETMR 2 trees x (1 + 3 branches x 1 fork)
# = 8 leaves, 10 rollout steps of 4 questions (2.5 passes over the 16), LoRA lr 1e-4.
FULL = dict(problems=16, steps=10, n_votes=8, n_train=4, batch_size=4, mini_batch_size=1, micro_batch_size=4,
            max_new_tokens=128, etmr_trees=2, etmr_forks=1, etmr_branches=3, eval_n=8, lr=1e-4)
SMOKE = dict(problems=2, steps=1, n_votes=2, n_train=2, batch_size=2, mini_batch_size=1, micro_batch_size=2,
             max_new_tokens=12, etmr_trees=1, etmr_forks=1, etmr_branches=1, eval_n=2, lr=1e-4)
SMOKE_CONFIGS = ("TTRL", "TTRL+ETMR+EAR")   # every code path, half the runs


def _earlier_rows(out: Path, size: dict, temperature: float, ran: set[str]) -> list[dict]:
    """Rows of configurations not run now from an earlier result at the same size and rollout
    temperature (so `--only` runs add up to one table); a different setting starts afresh."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return []
    if earlier.get("size") != size or earlier.get("rollout_temperature") != temperature:
        return []
    return [r for r in earlier.get("rows", []) if r.get("config") not in ran]


def evaluate(adapter: str | None, problems: list[dict], max_new_tokens: int, k: int, seed: int) -> dict:
    """Greedy accuracy, maj@k and mean accuracy of the k samples (temperature 0.6, top-p 0.95)."""
    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine
    from ttx.prompts import build_prompt
    from ttx.scoring.answers import answers_equal, extract_answer, majority_vote

    engine = HFEngine(model=MODEL, adapter=adapter)
    prompts = [build_prompt(p["question"]) for p in problems]
    t0 = time.perf_counter()
    greedy = engine.generate(prompts, 1, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    sampled = engine.generate(prompts, k, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.6,
                                                         top_p=0.95, seed=seed))
    g_ok, maj_ok, mean_ok, tokens = 0, 0, 0.0, 0
    for p, g, s in zip(problems, greedy, sampled):
        g_ok += answers_equal(extract_answer(g.traces[0].text), p["answer"])
        answers = [extract_answer(t.text) for t in s.traces]
        maj_ok += answers_equal(majority_vote(answers), p["answer"])
        mean_ok += sum(answers_equal(a, p["answer"]) for a in answers) / len(answers)
        tokens += g.traces[0].completion_tokens + sum(t.completion_tokens for t in s.traces)
    n = len(problems)
    return {"greedy": round(g_ok / n, 4), f"maj@{k}": round(maj_ok / n, 4), f"mean@{k}": round(mean_ok / n, 4),
            "eval_tokens": tokens, "eval_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a run of under two minutes (tiny budget)")
    for key, value in FULL.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                        help=f"default {value} (smoke: {SMOKE[key]})")
    ap.add_argument("--temperature", type=float, default=0.6,
                    help="rollout temperature (TTRL's is 1.0; on the 135M model its votes scatter: majority "
                         "ratio 0.16 at 1.0, measured on this problem set)")
    ap.add_argument("--only", nargs="*", help="configurations to run (names as in the table)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 measured fastest on the shared 2-core machine)")
    ap.add_argument("--out", help="default bench/results/ttrl.json (smoke: a temporary folder)")
    args = ap.parse_args(argv)
    size = {k: (getattr(args, k) if getattr(args, k) is not None else (SMOKE if args.smoke else FULL)[k])
            for k in FULL}

    import torch

    from ttx.data.arith import generate
    from ttx.rl.ttrl import TTRLConfig, run_ttrl

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-ttrl-"))
    default_out = work / "ttrl.json" if args.smoke else ROOT / "bench" / "results" / "ttrl.json"
    out = Path(args.out) if args.out else default_out
    problems = generate(size["problems"], seed=0)
    test = work / "test.jsonl"
    test.write_text("".join(json.dumps(p) + "\n" for p in problems))
    t_all, load_start = time.perf_counter(), round(__import__("os").getloadavg()[0], 2)
    before = evaluate(None, problems, size["max_new_tokens"], size["eval_n"], seed=1)
    print(json.dumps({"config": "before", **before}), flush=True)
    rows, maj = [], f"maj@{size['eval_n']}"
    for name, opts in CONFIGS:
        wanted = args.only or (SMOKE_CONFIGS if args.smoke else [n for n, _ in CONFIGS])
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        s = run_ttrl(TTRLConfig(
            input=str(test), output=str(work / name), model=MODEL, n_votes=size["n_votes"],
            n_train=size["n_train"],
            temperature=args.temperature, max_new_tokens=size["max_new_tokens"], batch_size=size["batch_size"],
            mini_batch_size=size["mini_batch_size"], micro_batch_size=size["micro_batch_size"],
            steps=size["steps"], lr=size["lr"], etmr_trees=size["etmr_trees"], etmr_forks=size["etmr_forks"],
            etmr_branches=size["etmr_branches"], save_every=0, progress=False, **opts))
        train_s = time.perf_counter() - t0
        after = evaluate(str(work / name), problems, size["max_new_tokens"], size["eval_n"], seed=1)
        row = {"config": name, **opts, "rollout_tokens": s["rollout_tokens"], "updates": s["updates"],
               "train_wall_s": round(train_s, 1), "after": after,
               "greedy_gain": round(after["greedy"] - before["greedy"], 4),
               "maj_gain": round(after[maj] - before[maj], 4),
               "greedy_after_beats_maj_before": after["greedy"] > before[maj],
               "mean_after_beats_maj_before": after[f"mean@{size['eval_n']}"] > before[maj],
               "pseudo_label_accuracy_per_step": [p["label_accuracy"] for p in s["per_step"]],
               "majority_ratio_per_step": [p["majority_ratio"] for p in s["per_step"]],
               "reward_accuracy_per_step": [p["reward_accuracy"] for p in s["per_step"]]}
        row["machine"] = machine(argv)          # per row: --only runs add rows to an earlier file
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows = _earlier_rows(out, size, args.temperature, {r["config"] for r in rows}) + rows
    result = {"bench": "ttrl", "smoke": args.smoke, "model": MODEL, "problem_set": "ttx.data.arith seed 0",
              "size": size, "rollout_temperature": args.temperature,
              "eval": f"greedy and maj@{size['eval_n']} (temperature 0.6, top-p 0.95), "
                      f"{size['max_new_tokens']} new tokens, the same problems the adapter was trained on "
                      "(test-time training)",
              "notes": "LoRA r 16 on all linear layers, KL 0.001, clip 0.2, one question per update; "
                       "ETMR trees M x (1 + B N) leaves replace the votes; *_beats_maj_before compare "
                       "accuracy after (greedy; mean of the k samples, TTRL's pass@1) with maj@k before "
                       "(TTRL's claim); 16 problems: one problem is 0.0625",
              "before": before, "rows": rows, "wall_s": round(time.perf_counter() - t_all, 1),
              "load_average_1m_start": load_start, "machine": machine(argv)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
