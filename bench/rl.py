"""Do `ttx rl`'s reward and advantage plug-ins (issue 36) do what their papers claim, on the default model?

    .venv/bin/python bench/rl.py [--only hapo mrt discover label-free] [--steps 12] [--smoke]
    # a larger model on a GPU (the same four sections, sized up):
    .venv/bin/python bench/rl.py --model Qwen/Qwen2.5-0.5B-Instruct --device cuda --train 32 \
        --batch-size 8 --steps 16 --held-out 200 --n 8 --max-new-tokens 512 --eval-n 8 \
        --mrt-samples 8 --mrt-answer-tokens 128 --countdown 16 --out bench/results/rl-gpu.json

Four sections, each the real stage (ttx.rl.stage.run_rl, LoRA, each reward's own KL default)
against its baseline at the same rollout steps, group size and learning rate:

- hapo: `--reward hapo` against `--reward gold` (ordinary RLVR GRPO). Evaluated before and after
  with tts-run (`--strategy majority --n eval_n` at temperature 0.6, `--adapter`) on held-out
  problems: accuracy (maj@k and the mean over the k samples) and the mean length in tokens of the
  correct samples, each with its 95% bootstrap interval over problems (ttx.scoring.intervals),
  and the paired intervals of hapo − gold (the same problems and sampling seeds). HAPO's claim:
  shorter correct responses at equal accuracy.
- mrt: `--reward mrt --advantage mrt` against outcome-only `--reward gold`. The cumulative regret
  (ttx.rl.mrt, the authors' regret.ipynb definition) of the same held-out samples before and after,
  J estimated by the mrt reward's own forced answers (ttx.rl.rewards.mrt) on tts-run's traces
  (re-tokenized from their text, as HAPO re-tokenizes), with intervals over problems.
- discover: `--reward discover --advantage entropic` (TTT-Discover) against `--advantage grpo`
  (the mean baseline) with the same reward on Countdown (ttx.data.countdown): best-so-far reward
  per problem against samples drawn, from each step's train_log.jsonl row.
- label-free: `--reward self-certainty` and `--reward entropy` against TTRL's `--reward majority`:
  per rollout step the accuracy of the sampled answers against the gold answers (only logged) and
  the collapse indicators, answer diversity (distinct answers / responses, no answer one class,
  from rollouts.jsonl) and the policy's mean token entropy (train_log.jsonl).

Problems: the arithmetic generator (ttx.data.arith: training seed 0, held-out seed 1 minus any
question also in training), Countdown seed 0 for discover. Rollouts sample at temperature 0.6 for
every arm (the 135M model's samples scatter at 1.0; see bench/ttrl.py). Writes
bench/results/rl.json and its records folder bench/results/rl/ (train logs, rollouts and tts-run
records of every arm); --smoke: the same code at a tiny size into a temporary folder unless --out
(3.3 minutes measured on the shared 2 cores at load 4, 8 model loads). The defaults are sized for
about 20 minutes on 2 CPU cores (an estimate from bench/ttrl.py's measured rates: 8 runs of 48
rollouts, 4 evaluations of 80 samples). Not measured here: rollouts through a vLLM server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

MODEL = "smollm2-135m-instruct"
# 4 training problems seen 3 times each (6 steps x 2 questions): HAPO's length reward is 0 until a
# problem's history h_i is known, i.e. from a problem's second visit on. 4 samples per question, all
# trained (HAPO's and TTT-Discover's recipes train on every sample), one question per update.
FULL = dict(train=4, held_out=20, steps=6, batch_size=2, n=4, max_new_tokens=128, lr=1e-4,
            eval_n=4, mrt_samples=4, mrt_answer_tokens=32, countdown=4)
SMOKE = dict(train=2, held_out=2, steps=1, batch_size=2, n=2, max_new_tokens=16, lr=1e-4,
             eval_n=2, mrt_samples=2, mrt_answer_tokens=8, countdown=2)
# arm: (reward, advantage, problem set)
ARMS = {"gold": ("gold", "grpo", "arith"), "hapo": ("hapo", "grpo", "arith"),
        "mrt": ("mrt", "mrt", "arith"),
        "discover": ("discover", "entropic", "countdown"), "discover-grpo": ("discover", "grpo", "countdown"),
        "majority": ("majority", "grpo", "arith"), "self-certainty": ("self-certainty", "grpo", "arith"),
        "entropy": ("entropy", "grpo", "arith")}
SECTIONS = {"hapo": ("gold", "hapo"), "mrt": ("gold", "mrt"), "discover": ("discover", "discover-grpo"),
            "label-free": ("majority", "self-certainty", "entropy")}
TEMPERATURE, TOP_P = 0.6, 0.95


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ci(groups: dict[str, list[float]]) -> dict:
    from ttx.scoring.intervals import bootstrap_ci

    values = [v for vs in groups.values() for v in vs]
    per_problem = [sum(vs) / len(vs) for vs in groups.values() if vs]
    ci = bootstrap_ci({k: v for k, v in groups.items() if v})
    return {"mean": round(sum(per_problem) / len(per_problem), 4) if per_problem else None,
            "ci95": [round(x, 4) for x in ci] if ci else None, "problems": len(per_problem),
            "values": len(values)}


def per_step(folder: Path) -> list[dict]:
    """The last train_log.jsonl row of each rollout step (a step's rows share its metrics), with
    the accuracy and answer diversity of its sampled responses from rollouts.jsonl."""
    from ttx.scoring.answers import answers_equal

    rows: dict[int, dict] = {}
    for r in _jsonl(folder / "train_log.jsonl"):
        if "rollout_step" in r:
            rows[int(r["rollout_step"])] = r
    groups: dict[int, list[dict]] = {}
    for rec in _jsonl(folder / "rollouts.jsonl"):
        groups.setdefault(int(rec["step"]), []).append(rec)
    out = []
    for step in sorted(rows):
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in rows[step].items()
               if isinstance(v, (int, float)) and k not in ("rollout_step", "step")}   # step: the trainer's
        recs = groups.get(step, [])
        gold = [r for r in recs if r.get("gold") is not None]
        if gold:
            right = [sum(a is not None and answers_equal(a, str(r["gold"])) for a in r["answers"])
                     / len(r["answers"]) for r in gold]
            row["sample_accuracy"] = round(sum(right) / len(right), 4)
        if recs:
            row["answer_diversity_all"] = round(sum(
                len(set(r["answers"])) / len(r["answers"])
                for r in recs) / len(recs), 4)
        out.append({"step": step, **row})
    return out


class Bench:
    def __init__(self, args, size: dict, work: Path, records: Path, argv: list[str] | None):
        self.args, self.size, self.work, self.records, self.argv = args, size, work, records, argv
        self.runs: dict[str, dict] = {}
        self.evals: dict[str, dict] = {}
        from ttx.data.arith import generate
        from ttx.data.countdown import generate as countdown

        train = generate(size["train"], seed=0)
        seen = {p["question"] for p in train}
        held = [p for p in generate(size["held_out"] + size["train"], seed=1) if p["question"] not in seen]
        self.held = held[:size["held_out"]]
        self.files = {"arith": _write(work / "train.jsonl", train),
                      "held_out": _write(work / "held_out.jsonl", self.held),
                      "countdown": _write(work / "countdown.jsonl", countdown(size["countdown"], seed=0))}

    def run(self, arm: str) -> dict:
        """One `ttx rl` run (once per bench run, shared between sections)."""
        if arm in self.runs:
            return self.runs[arm]
        from ttx.rl.config import RLConfig
        from ttx.rl.stage import run_rl

        reward, advantage, data = ARMS[arm]
        s, a = self.size, self.args
        extra = ({"mrt_samples": s["mrt_samples"], "mrt_answer_tokens": s["mrt_answer_tokens"]}
                 if reward == "mrt" else {})
        folder = self.work / "runs" / arm
        t0 = time.perf_counter()
        summary = run_rl(RLConfig(
            input=str(self.files[data]), output=str(folder), model=a.model, device=a.device,
            reward=reward, advantage=advantage, n_votes=s["n"], n_train=s["n"], temperature=TEMPERATURE,
            top_p=TOP_P, max_new_tokens=s["max_new_tokens"], batch_size=s["batch_size"], mini_batch_size=1,
            micro_batch_size=s["n"], steps=s["steps"], lr=s["lr"], save_every=0, progress=False,
            overwrite=True, **extra))
        wall = time.perf_counter() - t0
        steps = per_step(folder)
        for name in ("train_log.jsonl", "rollouts.jsonl", "ttx_manifest.json"):   # the manifest: plug-in state
            dest = self.records / "runs" / arm / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, dest)
        self.runs[arm] = {"arm": arm, "reward": reward, "advantage": advantage, "problems": data,
                          "adapter": str(folder), "train_wall_s": round(wall, 1),
                          "rollout_tokens": summary["rollout_tokens"], "updates": summary["updates"],
                          "per_step": steps,
                          "machine": machine(self.argv)}
        print(json.dumps({k: v for k, v in self.runs[arm].items() if k not in ("per_step", "machine")}),
              flush=True)
        return self.runs[arm]

    def evaluate(self, arm: str | None) -> dict:
        """tts-run --strategy majority --n eval_n (temperature 0.6) with the arm's adapter (None:
        the base model) on the held-out problems: per-problem traces and the summary."""
        name = arm or "before"
        if name in self.evals:
            return self.evals[name]
        from ttx.engines.base import SamplingParams
        from ttx.engines.hf import HFEngine
        from ttx.scoring.answers import answers_equal
        from ttx.tts.run import RunConfig, run_tts
        from ttx.tts.strategy import StrategyConfig

        adapter = self.run(arm)["adapter"] if arm else None
        engine = HFEngine(model=self.args.model, device=self.args.device, adapter=adapter)
        out = self.records / "eval" / f"{name}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        k = self.size["eval_n"]
        params = SamplingParams(max_new_tokens=self.size["max_new_tokens"], temperature=TEMPERATURE,
                                top_p=TOP_P, seed=1)
        t0 = time.perf_counter()
        run_tts(engine, RunConfig(input=str(self.files["held_out"]), output=str(out), progress=False,
                                  strategy=StrategyConfig(strategy="majority", n=k, params=params)))
        wall = time.perf_counter() - t0
        records = _jsonl(out)
        maj, mean, lengths, tokens = {}, {}, {}, {}
        for r in records:
            pid = str(r["id"])
            gold = str(r["answer"])
            ok = [t["pred"] is not None and answers_equal(t["pred"], gold) for t in r["traces"]]
            maj[pid] = [float(r["pred"] is not None and answers_equal(r["pred"], gold))]
            mean[pid] = [float(x) for x in ok]
            lengths[pid] = [float(t["completion_tokens"]) for t, x in zip(r["traces"], ok) if x]
            tokens[pid] = [float(t["completion_tokens"]) for t in r["traces"]]
        self.evals[name] = {"engine": engine, "records": records,
                            "groups": {"accuracy": mean, "correct_length": lengths}, "summary": {
            f"maj@{k}": _ci(maj), f"mean@{k}": _ci(mean), "correct_length": _ci(lengths),
            "length_all": _ci(tokens), "eval_s": round(wall, 1)}}
        print(json.dumps({"eval": name, **self.evals[name]["summary"]}), flush=True)
        return self.evals[name]

    def regret(self, arm: str | None) -> dict:
        """The cumulative regret of the held-out samples of evaluate(arm): J from the mrt reward's
        forced answers, per problem (ttx.rl.mrt.cumulative_regret over its samples)."""
        from ttx.engines.base import SamplingParams
        from ttx.prompts import build_prompt
        from ttx.rl.config import RLConfig
        from ttx.rl.plugins import Group, Problem
        from ttx.rl.rewards.mrt import PLUGIN
        from ttx.scoring.answers import extract_answer

        ev = self.evaluate(arm)
        engine, tok = ev["engine"], ev["engine"].tokenizer
        scorer = PLUGIN(RLConfig(input="", output="", reward="mrt", advantage="mrt",
                                 mrt_samples=self.size["mrt_samples"],
                                 mrt_answer_tokens=self.size["mrt_answer_tokens"]))
        params = SamplingParams(max_new_tokens=self.size["max_new_tokens"], temperature=TEMPERATURE)
        t0 = time.perf_counter()
        regret, j0, episodes = {}, [], []
        for i, r in enumerate(ev["records"]):
            texts = [t["text"] for t in r["traces"]]
            group = Group(step=0, problem=Problem(key=str(i), id=r["id"], question=r["question"],
                                                  gold=str(r["answer"])),
                          prompt_ids=engine.encode(build_prompt(r["question"])),
                          response_ids=[tok(t, add_special_tokens=False).input_ids for t in texts],
                          texts=texts, answers=[extract_answer(t) for t in texts], engine=engine,
                          tokenizer=tok, params=params, seed=1000 + i)
            m = scorer.score(group).metrics
            regret[str(r["id"])] = [m["regret"]]
            j0.append(m["j0"])
            episodes.append(m["episodes"])
        return {"regret": _ci(regret), "j0_mean": round(sum(j0) / len(j0), 4),
                "episodes_mean": round(sum(episodes) / len(episodes), 3),
                "regret_s": round(time.perf_counter() - t0, 1)}


def _strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "adapter"}


def section_hapo(b: Bench) -> dict:
    out = {"before": b.evaluate(None)["summary"]}
    for arm in SECTIONS["hapo"]:
        out[arm] = {"run": _strip(b.run(arm)), "after": b.evaluate(arm)["summary"]}
    k = b.size["eval_n"]
    g, h = out["gold"]["after"], out["hapo"]["after"]
    gg, hg = b.evaluate("gold")["groups"], b.evaluate("hapo")["groups"]
    out["claim"] = {"hapo_correct_length_minus_gold": _diff(h["correct_length"], g["correct_length"]),
                    "hapo_accuracy_minus_gold": _diff(h[f"mean@{k}"], g[f"mean@{k}"]),
                    # the same problems and sampling seeds: paired intervals (problems with a correct
                    # sample in both runs for the length)
                    "paired_correct_length": _paired(gg["correct_length"], hg["correct_length"]),
                    "paired_accuracy": _paired(gg["accuracy"], hg["accuracy"]),
                    "accuracy_intervals_overlap": _overlap(h[f"mean@{k}"], g[f"mean@{k}"]),
                    "correct_length_intervals_overlap": _overlap(h["correct_length"], g["correct_length"])}
    return out


def section_mrt(b: Bench) -> dict:
    out = {"before": b.regret(None)}
    for arm in SECTIONS["mrt"]:
        out[arm] = {"run": _strip(b.run(arm)), "after": b.regret(arm)}
    m, g = out["mrt"]["after"]["regret"], out["gold"]["after"]["regret"]
    out["claim"] = {"mrt_regret_minus_gold": _diff(m, g), "intervals_overlap": _overlap(m, g)}
    return out


def section_discover(b: Bench) -> dict:
    out = {}
    for arm in SECTIONS["discover"]:
        run = b.run(arm)
        curve = [{k: r.get(k) for k in ("step", "samples", "best_so_far", "best_so_far_max", "valid")}
                 for r in run["per_step"]]
        out[arm] = {"run": _strip(run), "best_so_far_curve": curve,
                    "final_best_so_far": curve[-1]["best_so_far"] if curve else None}
    out["claim"] = {"entropic_minus_grpo_final_best_so_far": _minus(
        out["discover"]["final_best_so_far"], out["discover-grpo"]["final_best_so_far"])}
    return out


def section_label_free(b: Bench) -> dict:
    out = {}
    for arm in SECTIONS["label-free"]:
        run = b.run(arm)
        out[arm] = {"run": _strip(run), "per_step": [
            {"step": r["step"], "sample_accuracy": r.get("sample_accuracy"),
             "answer_diversity": r.get("answer_diversity_all"), "entropy": r.get("entropy"),
             "mean_entropy": r.get("mean_entropy"), "reward_mean": r.get("reward_mean")}
            for r in run["per_step"]]}
    return out


def _paired(base: dict, other: dict) -> dict | None:
    from ttx.scoring.intervals import paired_ci

    p = paired_ci({k: v for k, v in base.items() if v}, {k: v for k, v in other.items() if v})
    if p is None:
        return None
    ci = [round(x, 4) for x in p["ci"]] if p["ci"] else None
    return {"difference": round(p["difference"], 4), "ci95": ci, "problems": p["n_problems"]}


def _minus(a, b):
    return None if a is None or b is None else round(a - b, 4)


def _diff(a: dict, b: dict):
    return _minus(a["mean"], b["mean"])


def _overlap(a: dict, b: dict):
    if not a["ci95"] or not b["ci95"]:
        return None
    return a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]


RUNNERS = {"hapo": section_hapo, "mrt": section_mrt, "discover": section_discover,
           "label-free": section_label_free}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the same code at a tiny size (about a minute)")
    for key, value in FULL.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                        help=f"default {value} (smoke: {SMOKE[key]})")
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS), help="sections to run (default: all)")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 measured fastest on the shared 2-core machine; bench/ttrl.py)")
    ap.add_argument("--out", help="default bench/results/rl.json (smoke: a temporary folder)")
    args = ap.parse_args(argv)
    size = {k: (getattr(args, k) if getattr(args, k) is not None else (SMOKE if args.smoke else FULL)[k])
            for k in FULL}
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    default_out = work / "rl.json" if args.smoke else ROOT / "bench" / "results" / "rl.json"
    out = Path(args.out) if args.out else default_out
    records = out.with_suffix("")
    if records.exists():
        shutil.rmtree(records)
    records.mkdir(parents=True)
    bench = Bench(args, size, work, records, argv)
    t0 = time.perf_counter()
    sections = {}
    for name in args.only or list(SECTIONS):
        sections[name] = RUNNERS[name](bench)
    result = {"bench": "rl", "smoke": args.smoke, "model": args.model, "device": args.device, "size": size,
              "rollout_temperature": TEMPERATURE, "rollout_top_p": TOP_P,
              "problem_sets": {"train": "ttx.data.arith seed 0", "held_out": "ttx.data.arith seed 1, minus "
                               "training questions", "countdown": "ttx.data.countdown seed 0"},
              "eval": f"tts-run --strategy majority --n {size['eval_n']} --temperature {TEMPERATURE} "
                      f"--top-p {TOP_P} --max-new-tokens {size['max_new_tokens']} [--adapter A] on "
                      f"{len(bench.held)} held-out problems; intervals: 95% bootstrap over problems "
                      "(ttx.scoring.intervals)",
              "notes": "LoRA (ttx's defaults), each reward's KL default, clip 0.2, one question per update, "
                       "every sample trained (--n-train = --n), rollouts at temperature 0.6 in every arm "
                       "(TTT-Discover's is 1.0); correct_length: tokens of the samples graded "
                       "correct, per problem then averaged over problems with one; regret: MRT's "
                       "normalized regret (J* = 1, budget prompt + --max-new-tokens) of each held-out "
                       "problem's samples, J from --mrt-samples forced answers",
              "sections": sections, "records": str(records.relative_to(ROOT)) if records.is_relative_to(ROOT)
              else str(records), "wall_s": round(time.perf_counter() - t0, 1), "machine": machine(argv)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if not args.smoke:
        shutil.rmtree(work, ignore_errors=True)       # the adapters; their logs are in the records
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
