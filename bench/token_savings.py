"""DeepConf's and adaptive consistency's claim: the accuracy of majority voting at n = 32 for
fewer completion tokens, on unseen problems (GSM8K test), with a second table at equal tokens.

    .venv/bin/python bench/token_savings.py [--problems 20] [--n 32] [--max-new-tokens 256]
    .venv/bin/python bench/token_savings.py --engine openai --base-url URL --model NAME   # larger

Each run is exactly the command a user types (`ttx tts-run --strategy S --n 32`, every other
option at its default but the budget and seed), so what is measured is the strategies' defaults:
deepconf online (warm-up traces set the threshold, low-confidence traces cancelled in the engine,
consensus stop) and adaptive-consistency's default stopping rule. majority runs once at n = N (its
curve is maj@k of those traces, `ttx score`'s estimator, at k times its tokens per trace) and
ffs over `--levels n=N/16,N/4,N`; the equal-token table gives, for each strategy, the accuracy
majority and ffs reach at the first point whose mean completion tokens are at or above the
strategy's own (or their largest).

Token savings are paired per problem (strategy - majority at n = N, mean completion tokens,
bootstrap 95% interval over problems); accuracies carry `ttx score`'s 95% intervals. Records go to
bench/results/token_savings/<name>.jsonl (resumed: delete the folder or pass --fresh to redo);
writes bench/results/token_savings.json. A 135M model on 2 cores answers few GSM8K problems: the
accuracies are small and their intervals wide; the token counts are what this bench can show.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

OUT = ROOT / "bench" / "results"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def levels(n: int) -> str:
    """n=2,8,32 for n = 32: ffs's curve at a quarter of the cost of every power of two."""
    values, k = [], max(1, n // 16)
    while k < n:
        values.append(k)
        k *= 4
    return "n=" + ",".join(str(v) for v in values + [n])


def runs(n: int) -> dict[str, list[str]]:
    return {"majority": ["--strategy", "majority", "--n", str(n)],
            "ffs": ["--strategy", "ffs", "--n", str(n), "--levels", levels(n)],
            "deepconf": ["--strategy", "deepconf", "--n", str(n)],
            "adaptive-consistency": ["--strategy", "adaptive-consistency", "--n", str(n)]}


def tokens_by_problem(path: Path, level_value: int | None = None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if level_value is not None and r.get("n") != level_value:
            continue
        out.setdefault(str(r["id"]), []).append(float(r["completion_tokens"]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", default="hf")
    ap.add_argument("--model", default=None, help="default: ttx's default model")
    ap.add_argument("--base-url", default=None, help="--engine openai: the server")
    ap.add_argument("--only", nargs="*", default=None, help="a subset of the runs")
    ap.add_argument("--fresh", action="store_true", help="discard earlier records")
    args = ap.parse_args(argv)

    from ttx.score import score
    from ttx.scoring.intervals import paired_ci

    folder = OUT / "token_savings"
    if args.fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    problems = folder / "problems.jsonl"
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:args.problems]]
    problems.write_text("".join(json.dumps({"id": f"gsm8k-test-{i}", **r}) + "\n"
                                for i, r in enumerate(rows)))
    common = ["-i", str(problems), "--max-new-tokens", str(args.max_new_tokens), "--seed",
              str(args.seed), "--engine", args.engine, "--resume", "--no-progress"]
    common += ["--model", args.model] if args.model else []
    common += ["--base-url", args.base_url] if args.base_url else []
    before = machine(argv)
    table = runs(args.n)
    names = args.only or list(table)
    walls, commands = {}, {}
    for name in names:
        out = folder / f"{name}.jsonl"
        cmd = [str(ROOT / ".venv" / "bin" / "ttx"), "tts-run", *table[name], "-o", str(out), *common]
        commands[name] = " ".join(["ttx", *cmd[1:]])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        walls[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {walls[name]} s", file=sys.stderr, flush=True)

    files = {name: folder / f"{name}.jsonl" for name in table if (folder / f"{name}.jsonl").exists()}
    result = score(compare=[f"{name}={path}" for name, path in files.items()])
    by_name = {run["name"]: run for run in result["runs"]}

    def curve(name: str) -> list[dict]:
        """ffs: one point per level; majority: maj@k of the n-trace run (the first k traces'
        vote, ttx score's estimator) at k times its mean tokens per trace."""
        if name not in by_name:
            return []
        if name == "majority":
            top = by_name[name]["levels"][-1]
            per_trace = top["mean_completion_tokens"] / args.n
            ks = sorted(int(k[4:]) for k in top if k.startswith("maj@") and not k.endswith("_ci"))
            return [{"n": k, "accuracy": top[f"maj@{k}"], "accuracy_ci": top.get(f"maj@{k}_ci"),
                     "mean_completion_tokens": round(k * per_trace, 1)} for k in ks]
        return [{"n": lv["value"], "accuracy": lv["accuracy"], "accuracy_ci": lv.get("accuracy_ci"),
                 "mean_completion_tokens": lv["mean_completion_tokens"],
                 "mean_sequential_tokens": lv["mean_sequential_tokens"]}
                for lv in by_name[name]["levels"]]

    base = tokens_by_problem(files["majority"]) if "majority" in files else {}
    savings, equal = [], []
    for name in ("deepconf", "adaptive-consistency"):
        if name not in by_name:
            continue
        top = by_name[name]["levels"][-1]
        mine = tokens_by_problem(files[name])
        diff = paired_ci(base, mine) if base else None
        maj = {}
        if base:
            top_maj = by_name["majority"]["levels"][-1]
            maj = {"accuracy": top_maj["accuracy"], "accuracy_ci": top_maj.get("accuracy_ci"),
                   "mean_completion_tokens": top_maj["mean_completion_tokens"]}
        savings.append({
            "strategy": name, "accuracy": top["accuracy"], "accuracy_ci": top.get("accuracy_ci"),
            "mean_completion_tokens": top["mean_completion_tokens"],
            "mean_sequential_tokens": top["mean_sequential_tokens"],
            "majority_accuracy": maj.get("accuracy"), "majority_accuracy_ci": maj.get("accuracy_ci"),
            "majority_mean_completion_tokens": maj.get("mean_completion_tokens"),
            "tokens_minus_majority": diff and round(diff["difference"], 1),
            "tokens_minus_majority_ci": diff and diff["ci"] and [round(x, 1) for x in diff["ci"]],
            "token_ratio_to_majority": (round(top["mean_completion_tokens"]
                                              / maj["mean_completion_tokens"], 3)
                                        if maj.get("mean_completion_tokens") else None)})
        row = {"strategy": name, "accuracy": top["accuracy"],
               "mean_completion_tokens": top["mean_completion_tokens"]}
        for ref in ("majority", "ffs"):
            points = curve(ref)
            at = next((p for p in points if p["mean_completion_tokens"]
                       >= top["mean_completion_tokens"]), points[-1] if points else None)
            row[ref] = at
        equal.append(row)

    report = {"bench": "token_savings", "model": args.model or "smollm2-135m-instruct",
              "engine": args.engine, "problems": args.problems, "problem_set": "GSM8K test, first N",
              "n": args.n, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
              "commands": commands, "wall_s": walls, "savings_vs_majority": savings,
              "equal_tokens": equal, "curves": {name: curve(name) for name in ("majority", "ffs")},
              "machine": before, "load_average_1m_after": machine()["load_average_1m"]}
    (OUT / "token_savings.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'strategy':<22} {'acc':>6} {'tokens':>8} {'maj acc':>8} {'maj tokens':>10} {'ratio':>6}")
    for s in savings:
        print(f"{s['strategy']:<22} {s['accuracy']:>6.3f} {s['mean_completion_tokens']:>8.1f} "
              f"{s['majority_accuracy'] or 0:>8.3f} {s['majority_mean_completion_tokens'] or 0:>10.1f} "
              f"{s['token_ratio_to_majority']!s:>6}")


if __name__ == "__main__":
    main()
