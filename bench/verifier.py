"""Verifiers trained on the default model's own samples, and the search they guide.

    .venv/bin/python bench/verifier.py            # the full bench (see docs/verifier-train.md)
    .venv/bin/python bench/verifier.py --smoke    # the same pipeline, tiny: under 2 minutes

Training problems and test problems come from ttx.data.arith with different generator seeds
(train: --train-seed 1, test: seed 0, the main job's 30 problems; a training question that also
appears among the test questions is dropped). The policy samples n traces per training problem
(temperature 0.4, as the main job), `ttx score --per-record` judges them, and `ttx verifier-train`
trains an ORM and a PRM (Math-Shepherd tags; --prm-labels outcome or rollout). On the test
problems, through the `ttx tts-run` CLI: greedy; n sampled traces scored by the policy's mean
log-probability (best-of-n logprob, and majority@n over the same traces); best-of-n with the
trained ORM (and weighted best-of-n over the same traces and scores); beam search with the
trained PRM. Accuracy and tokens from `ttx score`; the verifiers' held-out AUC and accuracy
from their manifests; the training cost (samples, tokens, wall time).
Every stage is resumable: records and verifiers go to --out (out/bench/verifier/) and are reused
when present (--fresh discards them). Writes bench/results/verifier.json and copies the records
and the verifiers' manifests to bench/results/verifier/ (--smoke: verifier_smoke*).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FULL = {"train_problems": 60, "test_problems": 30, "n": 8, "max_new_tokens": 256, "epochs": 2,
        "rollouts": 4, "max_steps": 4, "step_tokens": 64}
SMOKE = {"train_problems": 4, "test_problems": 2, "n": 2, "max_new_tokens": 24, "epochs": 1,
         "rollouts": 2, "max_steps": 2, "step_tokens": 12}


def ttx(*args) -> float:
    """Run one ttx stage in this process (the real click group); its wall time in seconds."""
    from ttx.cli import cli

    t0 = time.perf_counter()
    try:
        cli.main([str(a) for a in args], standalone_mode=False)
    except SystemExit as exc:            # a TtxError exits 2 with its one line on stderr
        if exc.code:
            raise
    return time.perf_counter() - t0


def quiet(*args) -> float:
    """ttx(...) with its stdout (score's JSON) discarded."""
    import io
    from contextlib import redirect_stdout

    with redirect_stdout(io.StringIO()):
        return ttx(*args)


def write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def derived(records: list[dict], strategy: str, pick) -> list[dict]:
    """The same traces aggregated another way (same tokens): majority, weighted best-of-n."""
    return [{**r, "strategy": strategy, "pred": pick(r["traces"])} for r in records]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the pipeline in < 2 min")
    ap.add_argument("--train-problems", type=int)
    ap.add_argument("--test-problems", type=int)
    ap.add_argument("--n", type=int, help="traces per problem (training samples, best-of-n, beam)")
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--train-seed", type=int, default=1)
    ap.add_argument("--prm-labels", choices=["outcome", "rollout"], default="outcome")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", type=Path, help="records and verifiers (default out/bench/verifier"
                                              "[_smoke]/, outside git: the verifiers are ~0.5 GB)")
    ap.add_argument("--fresh", action="store_true", help="discard earlier records and verifiers")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (bench/strategies measured 1 best on a shared 2-core box)")
    args = ap.parse_args(argv)
    size = dict(SMOKE if args.smoke else FULL)
    for key in ("train_problems", "test_problems", "n", "max_new_tokens"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    name = "verifier_smoke" if args.smoke else "verifier"
    out = args.out or ROOT / "out" / "bench" / name
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(args.threads)
    from ttx.data.arith import generate
    from ttx.scoring.answers import majority_vote
    from ttx.tts.sampling import best_of

    test = generate(size["test_problems"], seed=0)
    seen = {p["question"] for p in test}
    train = [p for p in generate(size["train_problems"], seed=args.train_seed)
             if p["question"] not in seen]
    write(out / "train_problems.jsonl", train)
    write(out / "test_problems.jsonl", test)
    n, mnt = size["n"], size["max_new_tokens"]
    policy = ["--model", args.model, "--temperature", "0.4", "--seed", "0", "--no-progress"]
    walls_path = out / "walls.json"          # wall time per stage, summed over invocations
    walls: dict[str, float] = json.loads(walls_path.read_text()) if walls_path.exists() else {}

    def stage(key, path: Path, *argv):
        """Every stage resumes (tts-run --resume, verifier-train --resume): a rerun after an
        interruption finishes the work; one after a finished run only reloads the model."""
        print(f"[bench/verifier] {key}", file=sys.stderr, flush=True)
        walls[key] = round(walls.get(key, 0.0) + quiet(*argv), 1)
        walls_path.write_text(json.dumps(walls, indent=1))
        return path

    # -- training data: the policy's own samples, judged against gold
    stage("train_sample", out / "train.jsonl", "tts-run", "-i", out / "train_problems.jsonl",
          "-o", out / "train.jsonl", "--strategy", "sample", "--n", n, "--max-new-tokens", mnt,
          "--resume", *policy)
    stage("train_score", out / "train.scored.jsonl", "score", "-i", out / "train.jsonl",
          "--per-record", out / "train.scored.jsonl", "--json")
    common = ["-i", out / "train.scored.jsonl", "--model", args.model, "--epochs", size["epochs"],
              "--no-progress", "--resume", "--seed", "0"]
    stage("orm_train", out / "orm" / "ttx_reward.json", "verifier-train", "-o", out / "orm",
          "--kind", "orm", *common)
    prm_opts = ["--prm-labels", args.prm_labels]
    if args.prm_labels == "rollout":
        prm_opts += ["--rollouts", size["rollouts"], "--temperature", "0.4", "--max-new-tokens", mnt]
    stage("prm_train", out / "prm" / "ttx_reward.json", "verifier-train", "-o", out / "prm",
          "--kind", "prm", *prm_opts, *common)

    # -- the test problems, through tts-run
    tp = ["-i", out / "test_problems.jsonl", "--max-new-tokens", mnt, "--resume", *policy]
    runs = {"greedy": stage("greedy", out / "greedy.jsonl", "tts-run", "-o", out / "greedy.jsonl",
                            "--strategy", "greedy", *tp)}
    runs["best-of-n logprob"] = stage("bon_logprob", out / "bon_logprob.jsonl", "tts-run", "-o",
                                      out / "bon_logprob.jsonl", "--strategy", "best-of-n",
                                      "--n", n, "--scorer", "logprob", *tp)
    runs["best-of-n ORM"] = stage("bon_orm", out / "bon_orm.jsonl", "tts-run", "-o",
                                  out / "bon_orm.jsonl", "--strategy", "best-of-n", "--n", n,
                                  "--reward-model", out / "orm", *tp)
    beam = ["--strategy", "beam", "--n", n, "--beam-width", "2", "--max-steps", size["max_steps"],
            "--step-tokens", size["step_tokens"]]
    runs["beam PRM"] = stage("beam_prm", out / "beam_prm.jsonl", "tts-run", "-o",
                             out / "beam_prm.jsonl", *beam, "--reward-model", out / "prm", *tp)
    # the same traces aggregated another way: no new tokens
    write(out / "majority.jsonl", derived(read(out / "bon_logprob.jsonl"), "majority",
                                          lambda ts: majority_vote([t["pred"] for t in ts])))
    write(out / "bon_orm_weighted.jsonl", derived(read(out / "bon_orm.jsonl"), "best-of-n",
                                                  lambda ts: best_of(ts, True, float)))
    runs["majority (same traces)"] = out / "majority.jsonl"
    runs["weighted best-of-n ORM"] = out / "bon_orm_weighted.jsonl"

    score_json = out / "score.json"
    compare = [a for label, path in runs.items() for a in ("--compare", f"{label}={path}")]
    from contextlib import redirect_stdout

    with open(score_json, "w") as f, redirect_stdout(f):
        ttx("score", *compare, "--json")
    with open(out / "score.txt", "w") as f, redirect_stdout(f):
        ttx("score", *compare)
    scored = {r["name"]: r["summary"] for r in json.loads(score_json.read_text())["runs"]}
    same = [a["text"] for r in read(out / "bon_logprob.jsonl") for a in r["traces"]] == \
        [a["text"] for r in read(out / "bon_orm.jsonl") for a in r["traces"]]
    table = {label: {"accuracy": scored[label]["accuracy"],
                     "accuracy_ci": scored[label]["accuracy_ci"],
                     "mean_completion_tokens": scored[label]["mean_completion_tokens"],
                     "mean_sequential_tokens": scored[label]["mean_sequential_tokens"],
                     "total_wall_s": scored[label]["total_wall_s"]} for label in runs}
    verifiers = {}
    for kind in ("orm", "prm"):
        s = json.loads((out / kind / "ttx_manifest.json").read_text())["summary"]
        verifiers[kind] = {"labels": s["labels"], "train": s["train"], "held_out": s["held_out"],
                           "before": s["before"], "after": s["after"], "steps": s["steps"],
                           "train_tokens": s["train_tokens"], "train_s": s["train_s"],
                           "rollouts": s["rollouts"]}
    train_records = read(out / "train.jsonl")
    cost = {"samples": sum(len(r["traces"]) for r in train_records),
            "sample_tokens": sum(r["completion_tokens"] for r in train_records),
            "rollout_tokens": (verifiers["prm"]["rollouts"] or {}).get("tokens", 0),
            "train_tokens": {k: v["train_tokens"] for k, v in verifiers.items()},
            "wall_s": walls}
    result = {"bench": name, "settings": {**size, "train_seed": args.train_seed, "test_seed": 0,
                                          "train_problems_used": len(train),
                                          "prm_labels": args.prm_labels, "model": args.model,
                                          "temperature": 0.4},
              "test": table, "orm_and_logprob_runs_share_traces": same,
              "verifiers": verifiers, "training_cost": cost, "machine": machine(argv)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    keep = RESULTS / name                    # the records (small), not the verifiers' weights
    keep.mkdir(exist_ok=True)
    for path in [*out.glob("*.jsonl"), out / "score.txt", out / "walls.json"]:
        shutil.copy(path, keep / path.name)
    for kind in ("orm", "prm"):
        for path in ("ttx_manifest.json", "ttx_reward.json", "eval_scores.jsonl", "train_log.jsonl"):
            shutil.copy(out / kind / path, keep / f"{kind}.{path}")
    print(f"{'run':26} {'accuracy':>9} {'tokens':>8}")
    for label, row in table.items():
        print(f"{label:26} {row['accuracy']:9.3f} {row['mean_completion_tokens']:8.1f}")
    for kind, v in verifiers.items():
        print(f"{kind}: held-out AUC {v['before'].get('auc')} -> {v['after'].get('auc')}, "
              f"accuracy {v['after'].get('accuracy')}, best-of-n {v['after'].get('best_of_n')} "
              f"(oracle {v['after'].get('oracle')})")
    print(f"wrote {RESULTS / (name + '.json')}")


if __name__ == "__main__":
    main()
