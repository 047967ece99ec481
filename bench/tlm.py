"""Does Test-Time Learning lower perplexity on the target domain without hurting other text?

    .venv/bin/python bench/tlm.py [--adapt 64] [--held 32] [--control 32] [--threads 2]

Target domain: GSM8K test questions, templated as tts-run prompts them. The adapter learns from
the first --adapt of them (answers never read); held-out: the next --held questions, never trained
on; control: paragraphs of general English prose (the GNU GPL text on this machine), templated the
same way. Each configuration runs the real stage (ttx.tlm.adapt.run_tlm) and reports mean
log-perplexity before/after on all three sets, inputs selected, backward passes, seconds per
sample and peak memory. Baseline: the frozen model (the "before" column). Writes
bench/results/tlm.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
CONTROL_TEXT = Path("/usr/share/common-licenses/GPL-3")

CONFIGS = [   # name, options
    ("offline LoRA lr 5e-5 (paper default)", dict(mode="offline", lr=5e-5)),
    ("offline LoRA lr 5e-4", dict(mode="offline", lr=5e-4)),
    ("online LoRA lr 5e-4, block 16", dict(mode="online", lr=5e-4, stream_block=16)),
    ("offline QLoRA lr 5e-4", dict(mode="offline", lr=5e-4, load_in_4bit=True)),
]


def _write(path: Path, texts: list[str], prefix: str) -> str:
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"{prefix}{i}", "question": t}) + "\n")
    return str(path)


def _control_paragraphs(count: int) -> list[str]:
    paras = [" ".join(p.split()) for p in CONTROL_TEXT.read_text().split("\n\n")]
    return [p for p in paras if len(p.split()) >= 40][:count]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapt", type=int, default=64)
    ap.add_argument("--held", type=int, default=32)
    ap.add_argument("--control", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="run only configs whose name contains this")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tlm.json"))
    args = ap.parse_args(argv)

    import torch

    from ttx.tlm.adapt import TLMConfig, run_tlm

    torch.set_num_threads(args.threads)
    questions = [json.loads(line)["question"] for line in GSM8K.read_text().splitlines()]
    tmp = Path(tempfile.mkdtemp(prefix="bench-tlm-"))
    adapt = _write(tmp / "adapt.jsonl", questions[:args.adapt], "q")
    held = _write(tmp / "held.jsonl", questions[args.adapt:args.adapt + args.held], "h")
    control = _write(tmp / "control.jsonl", _control_paragraphs(args.control), "c")
    rows = []
    for name, opts in CONFIGS:
        if args.only and args.only not in name:
            continue
        t0 = time.perf_counter()
        s = run_tlm(TLMConfig(input=adapt, output=str(tmp / f"adapter-{len(rows)}"), eval=(held, control),
                              progress=False, save_every=0, **opts))
        row = {"config": name, **opts, "wall_s": round(time.perf_counter() - t0, 1),
               "selected": s["selected"], "seen": s["seen"], "backward_passes": s["backward_passes"],
               "skipped_fraction": s["skipped_fraction"], "s_per_sample": s["s_per_sample"],
               "adapt_before": s["mean_log_ppl_before"], "adapt_after": s["mean_log_ppl_after"],
               "held_before": s["eval"][held]["mean_log_ppl_before"],
               "held_after": s["eval"][held]["mean_log_ppl_after"],
               "control_before": s["eval"][control]["mean_log_ppl_before"],
               "control_after": s["eval"][control]["mean_log_ppl_after"],
               "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"bench": "tlm", "model": "smollm2-135m-instruct",
              "data": {"adapt": f"GSM8K test questions 0..{args.adapt - 1}",
                       "held_out": f"GSM8K test questions {args.adapt}..{args.adapt + args.held - 1}",
                       "control": f"{len(_control_paragraphs(args.control))} paragraphs of {CONTROL_TEXT}"},
              "notes": "log-perplexity = mean token NLL of the chat-templated input; peak RSS is the "
                       "process maximum so far (configs run in order in one process)",
              "machine": machine(argv), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
