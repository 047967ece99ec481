"""`ttx rl --curriculum ttcs` (TTCS, XMUDeepLIT/TTCS at c0a38fd): the synthesizer's rewards, the
BLEU clustering and the consistency band against the reference's formulas on fixed inputs, one
co-evolution step on a tiny model with a scripted engine, and the stage end to end with a
bit-exact --resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.test_rl import _common, _lines, gold_questions  # noqa: F401  (a fixture)
from tests.test_ttrl import digits_model_dir  # noqa: F401  (a fixture)
from ttx.rl import ttcs

# -- the reference's rules, restated from its source to compare against ----------------------

def ref_parse(predict: str):
    """src/reward_manager.py:177-192 (gen_question_func ttrl_icl: the last \\boxed{})."""
    import re

    questions = re.findall(r"<question>(.*?)</question>", predict, re.DOTALL)
    start = predict.rfind(r"\boxed{")
    answers = None
    if start != -1:                                   # custom_extract_boxed_content, :25-47
        content, depth = predict[start + len(r"\boxed{"):], 0
        for i, ch in enumerate(content):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == -1:
                answers = content[:i].strip()
                break
    if questions and answers:
        return questions[-1].strip(), answers.strip()
    return "", ""


def ref_bleu_distance_matrix(sentences):
    """src/reward_manager.py:50-65."""
    import numpy as np
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    n = len(sentences)
    dist = np.zeros((n, n))
    smoother = SmoothingFunction().method1
    for i in range(n):
        for j in range(i, n):
            score = 1.0 if i == j else sentence_bleu([sentences[j].split()], sentences[i].split(),
                                                     smoothing_function=smoother)
            dist[i, j] = dist[j, i] = 1 - score
    return dist


def ref_score(answers):
    """src/utils.py:355-364 and :271: the majority share (the "None" class scores 0), then
    1 - 2|p - 1/2|. Answers are compared as strings here (the reference's first, cheap check)."""
    counts: dict = {}
    for a in [str(a) for a in answers]:          # str(None) == "None", as extract_boxed_content gives
        counts[a] = counts.get(a, 0) + 1
    majority = max(counts, key=counts.get)
    p = 0.0 if majority.lower() == "none" else counts[majority] / len(answers)
    return p, 1 - 2 * abs(p - 0.5)


VARIANTS = [
    "Find the sum of all positive integers x such that x + 2 divides 12.",
    "Find the sum of all positive integers y such that y + 2 divides 12.",
    "Find the sum of all positive integers x such that x + 3 divides 15.",
    "",
    "A point moves along the circle of radius four; find the largest value of a linear form.",
    "How many subsets of a set with five elements have an even number of elements?",
    "",
]


def test_parse_rule_is_the_references():
    texts = ["[Design]: x\n<question>\nWhat is $2+2$?\n</question>\nFinal Answer: \\boxed{4}",
             "<question>a</question><question> b </question> \\boxed{\\frac{1}{2}}",
             "<question>no answer</question>", "\\boxed{3} without a question",
             "<question>q</question>\\boxed{}",
             "<question>q</question>\\boxed{unclosed", "<question>q</question>\\boxed{1} then \\boxed{2}"]
    for t in texts:
        assert ttcs.parse_variant(t) == ref_parse(t), t


def test_bleu_distances_are_the_references():
    ours = ttcs.bleu_distances(VARIANTS)
    ref = ref_bleu_distance_matrix(VARIANTS)
    for i in range(len(VARIANTS)):
        for j in range(len(VARIANTS)):
            assert ours[i][j] == pytest.approx(float(ref[i, j]), abs=1e-12)
    assert ours[0][1] < 0.5 < ours[0][4]          # near-duplicates are close, others far


def _brute_average_linkage(dist, threshold):
    """Reference semantics of sklearn's AgglomerativeClustering(distance_threshold, average,
    precomputed), used at reward_manager.py:77-83: no two final clusters have a mean pairwise
    distance below the threshold, and each cluster was built by merges below it."""
    import itertools

    labels = ttcs.average_linkage(dist, threshold)
    clusters = {}
    for i, lab in enumerate(labels):
        clusters.setdefault(lab, []).append(i)
    for a, b in itertools.combinations(clusters.values(), 2):
        assert sum(dist[i][j] for i in a for j in b) / (len(a) * len(b)) >= threshold
    return labels


def test_clustering_and_penalty_are_the_references():
    dist = ttcs.bleu_distances(VARIANTS)
    labels = _brute_average_linkage(dist, 0.5)
    assert labels == [0, 0, 0, 1, 2, 3, 4]        # the three "x + k divides" variants are one cluster
    # cluster_share_per_problem, reward_manager.py:85-90: the share of the batch in one's cluster
    assert ttcs.repetition_penalty(VARIANTS) == [3 / 7] * 3 + [1 / 7] * 4
    # a hand-made matrix where average linkage differs from single linkage: {0,1} merge at 0.2;
    # 2 is 0.3 from 1 but 0.9 from 0, mean 0.6 >= 0.5, so it stays alone
    d = [[0, 0.2, 0.9], [0.2, 0, 0.3], [0.9, 0.3, 0]]
    assert ttcs.average_linkage(d, 0.5) == [0, 0, 1]
    assert ttcs.average_linkage(d, 0.61) == [0, 0, 0]
    try:
        from sklearn.cluster import AgglomerativeClustering
    except ImportError:
        return
    for mat, t in ((d, 0.5), (d, 0.61), (dist, 0.5)):
        sk = AgglomerativeClustering(n_clusters=None, distance_threshold=t, metric="precomputed",
                                     linkage="average").fit_predict(mat)
        ours = ttcs.average_linkage(mat, t)
        assert len(set(sk)) == len(set(ours))
        assert all((sk[i] == sk[j]) == (ours[i] == ours[j]) for i in range(len(mat)) for j in range(len(mat)))


@pytest.mark.parametrize("answers", [["4"] * 10, ["4"] * 5 + ["7"] * 5, ["4"] * 7 + ["7"] * 3,
                                     [None] * 6 + ["4"] * 4, ["4", "7", "1", "2", None, None, None,
                                                              "3", "5", "6"],
                                     ["4", "7"] * 5, [None] * 10])
def test_majority_share_and_uncertainty_are_the_references(answers):
    p, u = ref_score(answers)
    assert ttcs.majority_share(answers) == p
    assert ttcs.uncertainty(ttcs.majority_share(answers)) == pytest.approx(u)


def test_synthesizer_reward_is_uncertainty_minus_cluster_share_floored_at_zero():
    shares = [0.5, 0.4, 1.0, None, 0.7, 0.5, None]
    rewards, penalty = ttcs.synth_rewards(VARIANTS, shares)
    pen = ttcs.repetition_penalty(VARIANTS)
    # reward_manager.py:206: max(0, base - penalty) if a question was parsed, else 0
    expect = [max(0, (1 - 2 * abs(p - 0.5)) - c) if q else 0 for q, p, c in zip(VARIANTS, shares, pen)]
    assert rewards == pytest.approx(expect) and penalty == pen
    assert rewards[2] == 0 and rewards[3] == 0


def test_band_is_inclusive_as_the_reference_keeps():
    # reward_manager.py:494 is_kept = low <= acc_mean <= high, solver.sh filter_lower/high 0.25/0.75
    assert [ttcs.in_band(p) for p in (0.2, 0.25, 0.5, 0.75, 0.8)] == [False, True, True, True, False]


# -- the stage end to end ------------------------------------------------------------------------

def _ttcs_args(model, questions):
    return _common(model, questions, "majority") + [
        "--curriculum", "ttcs", "--ttcs-variants", "2", "--ttcs-solver-votes", "4",
        "--ttcs-max-new-tokens", "6",
        "--ttcs-lr", "1e-3", "--lora-dropout", "0.1", "--steps", "2", "--save-every", "1"]


def test_ttcs_end_to_end_resumes_bit_for_bit(digits_model_dir, gold_questions, tmp_path):  # noqa: F811
    common = _ttcs_args(digits_model_dir, gold_questions)
    whole = run_cli(common + ["-o", tmp_path / "whole"])
    assert whole.exit_code == 0, whole.output
    first = run_cli(common + ["-o", tmp_path / "cut", "--stop-after", "1"])
    assert first.exit_code == 0 and "continue with --resume" in first.output
    again = run_cli(common + ["-o", tmp_path / "cut", "--resume"])
    assert again.exit_code == 0, again.output
    for adapter in ("adapter_model.safetensors", "synthesizer/adapter_model.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / adapter)), load_file(str(tmp_path / "cut" / adapter))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), adapter
    for name in ("rollouts.jsonl", "ttcs.jsonl", "train_log.jsonl", "synthesizer_train/train_log.jsonl"):
        assert _lines(tmp_path / "whole" / name) == _lines(tmp_path / "cut" / name), name
    log = _lines(tmp_path / "whole" / "train_log.jsonl")
    assert all("ttcs_parse_rate" in r and "ttcs_kept" in r for r in log)
    rows = _lines(tmp_path / "whole" / "ttcs.jsonl")
    assert len(rows) == 2 * 2 * 2 and {r["step"] for r in rows} == {1, 2}
    assert not (tmp_path / "whole" / "checkpoints").exists()
    assert not (tmp_path / "whole" / "synthesizer_train" / "checkpoints").exists()


# -- one co-evolution step on a tiny model, the engine scripted ------------------------------------

class ScriptedEngine:
    """Answers the synthesizer's prompts with fixed variants and the solver's with fixed votes
    (by question text); records which adapter was active at each call."""

    def __init__(self, model, tokenizer, variants, votes):
        self.model, self.tok, self.variants, self.votes, self.calls = model, tokenizer, variants, votes, []

    def encode(self, prompt):
        return self.tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)

    def generate(self, prompts, n, params):
        from ttx.engines.base import Generation, Trace

        self.calls.append((self.model.active_adapter, len(prompts), n))
        out = []
        for p in prompts:
            user = p[-1]["content"]
            texts = self.variants.pop(0) if "**Reference Question:**" in user else \
                [f"So the answer is \\boxed{{{a}}}." if a is not None else "I do not know."
                 for a in self.votes[user]]
            assert len(texts) == n
            traces = [Trace(t, 3, "stop", self.tok.encode(t, add_special_tokens=False)) for t in texts]
            out.append(Generation(traces, 5))
        return out


def _cfg(**kw):
    base = dict(seed=0, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_targets=("q_proj", "v_proj"),
                clip_low=0.2,
                clip_high=0.2, clip_c=3.0, ttcs_kl_coef=0.01, ttcs_temperature=1.0, micro_batch_size=2,
                mini_batch_size=1, batch_size=2, ttcs_variants=3, ttcs_lr=1e-2, weight_decay=0.0,
                max_grad_norm=1.0,
                chat=True, ttcs_max_new_tokens=64, instruction=None, system=None, max_new_tokens=16,
                temperature=1.0, top_p=1.0, ttcs_solver_votes=4, ttcs_keep=None, ttcs_low=0.25, ttcs_high=0.75,
                full=False, etmr=False, reward="majority")
    return SimpleNamespace(**{**base, **kw})


def test_one_step_rewards_the_synthesizer_and_keeps_the_band(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttx.rl.curricula.ttcs import TTCS
    from ttx.rl.plugins import Problem
    from ttx.train.lora import attach_lora

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), r=4, alpha=8, dropout=0.0,
                        targets=("q_proj", "v_proj"))
    block = "[Design]: ...\n<question>\n{}\n</question>\nFinal Answer: \\boxed{{1}}"
    v = [q for q in VARIANTS if q]
    variants = [[block.format(v[0]), block.format(v[1]), "no question here"],
                [block.format(v[3]), block.format(v[4]), block.format(v[2])]]
    votes = {v[0]: ["4", "4", "7", "7"], v[1]: ["4"] * 4, v[3]: ["4", "4", "4", "7"],
             v[4]: ["4", "7", "1", None], v[2]: [None, None, "4", "4"]}
    engine = ScriptedEngine(model, tok, [list(x) for x in variants], votes)
    cur = TTCS(_cfg())
    cur.attach(model=model, tokenizer=tok, engine=engine, out=tmp_path, pad_id=tok.eos_token_id, resume=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    qs = [Problem("0", "a", "What is 2+2?"), Problem("1", "b", "What is 3+4?")]
    kept, metrics = cur.problems(0, qs)

    assert engine.calls == [("synthesizer", 2, 3), ("default", 5, 4)]     # adapters switched in the engine
    assert model.active_adapter == "default"
    rows = _lines(tmp_path / "ttcs.jsonl")
    questions = [r["question"] for r in rows]
    assert questions == [v[0], v[1], "", v[3], v[4], v[2]]
    shares = [ref_score(votes[q])[0] if q else None for q in questions]   # utils.py:355-364 on the votes
    assert [r["p"] for r in rows] == shares
    penalty = ttcs.repetition_penalty(questions)
    expect = [max(0.0, ref_score(votes[q])[1] - c) if q else 0.0 for q, c in zip(questions, penalty)]
    assert [r["reward"] for r in rows] == pytest.approx(expect, abs=1e-6)
    # band 0.25 <= p <= 0.75, new, at most as many as the test questions: v0 (0.5) and v3 (0.75)
    assert [k.question for k in kept] == [v[0], v[3]] and [r["kept"] for r in rows] == \
        [True, False, False, True, False, False]
    assert metrics["ttcs_parse_rate"] == pytest.approx(5 / 6) and metrics["ttcs_kept"] == 2
    assert metrics["ttcs_p_q50"] == pytest.approx(0.5)
    after = dict(model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(".synthesizer." in n for n in moved)              # only the synthesizer learned
    assert cur.updates == 2 and cur.trainer.result.updates == 2           # one update per test question
    # a kept question is not offered again in a later step (data_merge.py:49-59)
    assert cur.save()["seen"] == sorted([v[0], v[3]])


# -- bad input: one line, exit 2, before a model loads ----------------------------------------------

@pytest.mark.parametrize("extra, field", [
    (["--ttcs-variants", "3"], "--ttcs-variants"),                              # without --curriculum ttcs
    (["--curriculum", "ttcs", "--reward", "gold"], "--reward"),       # synthetic questions have no gold
    (["--curriculum", "ttcs", "--full"], "--full"),                             # two adapters need LoRA
    (["--curriculum", "ttcs", "--ttcs-low", "0.8", "--ttcs-high", "0.5"], "--ttcs-low"),
])
def test_bad_ttcs_options_are_refused_before_the_model_loads(tmp_path, extra, field):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "a", "question": "1+1?", "answer": "2"}) + "\n")
    out = tmp_path / "o"
    result = run_cli(["rl", "--model", tmp_path / "no-such-model", "-i", q, "-o", out, *extra])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"'{field}'" in lines[0], result.output
    assert not out.exists()


def test_unknown_curriculum_is_refused(tmp_path):
    result = run_cli(["rl", "--curriculum", "nope", "-i", tmp_path / "q.jsonl", "-o", tmp_path / "o"])
    assert result.exit_code == 2 and "ttcs" in result.output
