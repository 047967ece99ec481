"""`--reward mrt` and `--advantage mrt`: progress, reward and per-episode advantages on a scripted J
(a scripted engine and grader, here only), the advantages reaching the loss (gradient check on a
tiny model), and refusals. The reference's episode cutting, forced text and regret are pinned in
tests/test_mrt_reference.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests import test_ttrl
from tests.conftest import run_cli
from ttx.engines.base import Generation, SamplingParams, Trace
from ttx.errors import TtxError
from ttx.rl import mrt
from ttx.rl.config import RLConfig
from ttx.rl.grpo import GRPOConfig, Rollout, group_advantages, grpo_loss, sequence_logprobs
from ttx.rl.plugins import Group, Problem, check_options, load_advantage, load_reward

pytestmark = pytest.mark.usefixtures("one_torch_thread")
digits_model_dir, questions = test_ttrl.digits_model_dir, test_ttrl.questions     # fixtures

M = 4
RESPONSES = [
    # three episodes: boundaries at "Wait" (3 paragraphs in) and "Alternatively"
    "Let x be 3.\n\nThen 2x is 6.\n\nSo 6.\n\nWait, the question asks 3x.\n\nThat is 9.\n\nSo 9."
    "\n\nAlternatively, 3 + 3 + 3 = 9.\n\nThe answer is \\boxed{9}.",
    # one episode: the "Wait" comes too early to cut
    "3x = 9.\n\nWait, yes.\n\nThe answer is \\boxed{9}.",
    # two episodes, wrong in the end
    "x is 3.\n\n3x is 6.\n\nSo 6.\n\nBut wait, is it? Yes.\n\nThe answer is \\boxed{6}.",
]
ANSWERS = ["9", "9", "6"]


def _cfg(**kw):
    base = dict(input="q.jsonl", output="out", reward="mrt", advantage="mrt", mrt_samples=M)
    return RLConfig(**{**base, **kw})


class ScriptedEngine:
    """Forced answers "0".."m-1" for every prompt; the scripted grader decides which are right."""

    def __init__(self, tok):
        self.tok, self.prompts = tok, []

    def generate(self, prompts, n, params):
        self.prompts.append((prompts, n, params))
        return [Generation(traces=[Trace(text=str(i), completion_tokens=2, finish_reason="stop")
                                   for i in range(n)], prompt_tokens=len(p.ids)) for p in prompts]


def scripted_j(prefix: str) -> float:
    """J after a prefix: the share of right forced answers, scripted on the prefix's length."""
    return {0: 0.25}.get(len(prefix), (len(prefix) * 7 % 5) / M)


@pytest.fixture()
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def scripted(monkeypatch):
    from ttx.rl.rewards import mrt as plugin

    def grade(prefix, answer, gold):
        return 1.0 if int(answer) < round(scripted_j(prefix) * M) else 0.0

    monkeypatch.setattr(plugin, "forced_correct", grade)


def _group(tok, engine):
    ids = [tok(t, add_special_tokens=False).input_ids for t in RESPONSES]
    return Group(step=0, problem=Problem(key="0", id="q0", question="3x?", gold="9"),
                 prompt_ids=[1, 2, 3], response_ids=ids,
                 texts=[tok.decode(i, skip_special_tokens=True) for i in ids], answers=ANSWERS,
                 engine=engine, tokenizer=tok, params=SamplingParams(max_new_tokens=100), seed=5)


def test_reward_is_outcome_plus_alpha_progress_on_a_scripted_j(tok, scripted):
    alpha = 0.5
    engine = ScriptedEngine(tok)
    reward = load_reward("mrt")(_cfg(mrt_alpha=alpha))
    g = _group(tok, engine)
    out = reward.score(g)
    for text, r, info, outcome in zip(g.texts, out.rewards, out.infos, [1.0, 1.0, 0.0]):
        eps = mrt.episodes(text)
        prefixes = mrt.forced_prefixes(eps)
        j = [scripted_j(p) for p in prefixes] + [outcome]       # J_0..J_{n-1}, then the outcome
        assert info["mrt_j"] == pytest.approx(j) and info["mrt_outcome"] == outcome
        prg = [b - a for a, b in zip(j, j[1:])]                  # paper Def. 6.1
        assert r == pytest.approx(outcome + alpha * sum(prg))    # paper eq. 6.2
        # each episode's first token: the decoded tokens before it are the text before it
        ids = tok(text, add_special_tokens=False).input_ids
        for t, c in zip(info["mrt_token_starts"], mrt.episode_starts(text)):
            assert tok.decode(ids[:t]) == text[:c]
    assert [len(i["mrt_token_starts"]) for i in out.infos] == [3, 1, 2]
    # one call: J_0 once, then each response's inner boundaries; m answers each, the reference's text
    [(prompts, n, params)] = engine.prompts
    assert n == M and len(prompts) == 1 + 2 + 0 + 1
    assert (params.temperature, params.top_p, params.max_new_tokens) == (0.6, 0.95, 256)
    assert tok.decode(prompts[0].ids[3:]) == mrt.FORCED_ANSWER and list(prompts[0].ids[:3]) == [1, 2, 3]
    first = mrt.forced_prefixes(mrt.episodes(g.texts[0]))[1]
    assert tok.decode(prompts[1].ids[3:]) == first + mrt.FORCED_ANSWER
    assert out.metrics["regret"] == pytest.approx(out.record["regret"], abs=1e-6)
    assert 0.0 <= out.metrics["regret"] <= 1.0 and out.metrics["j0"] == 0.25


def test_logged_regret_is_the_reference_curve(tok, scripted):
    engine = ScriptedEngine(tok)
    g = _group(tok, engine)
    out = load_reward("mrt")(_cfg(mrt_budget=500)).score(g)
    [(prompts, _, _)] = engine.prompts
    # costs (regret.ipynb cell 10): prompt tokens + answer tokens / 16; the outcome at the response's end
    cost = [len(p.ids) + M * 2 / 16 for p in prompts]
    curves = [(out.infos[0]["mrt_j"], [cost[0], cost[1], cost[2], 3 + len(g.response_ids[0])], 500.0),
              (out.infos[1]["mrt_j"], [cost[0], 3 + len(g.response_ids[1])], 500.0),
              (out.infos[2]["mrt_j"], [cost[0], cost[3], 3 + len(g.response_ids[2])], 500.0)]
    assert out.metrics["regret"] == pytest.approx(mrt.cumulative_regret(curves))


def test_advantages_are_the_outcomes_plus_alpha_progress_per_episode():
    alpha = 2.0
    infos = [{"mrt_outcome": 1.0, "mrt_j": [0.25, 0.5, 1.0], "mrt_token_starts": [0, 2]},
             {"mrt_outcome": 0.0, "mrt_j": [0.25, 0.75, 0.0], "mrt_token_starts": [0, 1]},
             {"mrt_outcome": 1.0, "mrt_j": [0.25, 1.0], "mrt_token_starts": [0]}]
    rollouts = [Rollout(group=0, prompt_ids=[1], response_ids=[5] * n, reward=0.0, info=i)
                for n, i in zip([4, 3, 2], infos)]
    load_advantage("mrt")(_cfg(mrt_alpha=alpha)).compute(rollouts)
    a = group_advantages([1.0, 0.0, 1.0], [0, 0, 0])
    assert [r.advantage for r in rollouts] == pytest.approx(a)
    assert rollouts[0].token_advantages == pytest.approx([a[0] + 0.5] * 2 + [a[0] + 1.0] * 2)
    assert rollouts[1].token_advantages == pytest.approx([a[1] + 1.0] + [a[1] - 1.5] * 2)
    assert rollouts[2].token_advantages == pytest.approx([a[2] + 1.5] * 2)


def test_token_advantages_reach_the_loss(tiny_model_dir):
    """At ratio 1 the clipped loss is −(1/T) Σ_t A_t log π(o_t) in gradient: the gradient of
    grpo_loss equals the one of that sum, token advantage by token advantage."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).float()
    prompt, resp = [11, 12, 13], [21, 22, 23, 24, 25]
    adv = [1.5, 1.5, -0.5, -0.5, 2.0]
    with torch.no_grad():
        old, _, _ = sequence_logprobs(model, [prompt], [resp], 0)
    r = Rollout(group=0, prompt_ids=prompt, response_ids=resp, advantage=0.0,
                old_logprobs=old[0].tolist(), token_advantages=adv)
    cfg = GRPOConfig(clip_c=None)
    model.zero_grad()
    loss, _ = grpo_loss(model, [r], cfg, pad_id=0)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    logp, _, _ = sequence_logprobs(model, [prompt], [resp], 0)
    (-(torch.tensor(adv) * logp[0]).sum() / len(resp)).backward()
    want = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert loss.item() == pytest.approx(-sum(adv) / len(adv), abs=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
    # the scalar advantage alone would give another gradient
    model.zero_grad()
    flat = dataclasses.replace(r, token_advantages=None, advantage=sum(adv) / len(adv))
    grpo_loss(model, [flat], cfg, pad_id=0)[0].backward()
    other = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, other))


def test_needs_gold_answers():
    reward = load_reward("mrt")(_cfg())
    problems = [Problem("0", "a", "1+1?", "2"), Problem("1", "b", "2+2?", None)]
    with pytest.raises(TtxError, match="record 'b' has none"):
        reward.check(problems)
    assert reward.needs_gold


def test_mrt_options_and_advantage_are_refused_elsewhere():
    with pytest.raises(TtxError, match="--mrt-alpha"):
        check_options(_cfg(reward="gold", advantage="grpo", mrt_alpha=0.3))
    with pytest.raises(TtxError, match="needs --reward mrt"):
        load_advantage("mrt")(_cfg(reward="gold"))
    check_options(_cfg(mrt_alpha=0.3))
    check_options(_cfg(advantage="grpo"))                 # the scalar MRT reward under GRPO


# -- end to end on a tiny model ------------------------------------------------------------------

@pytest.fixture()
def fours(tmp_path):
    """Questions whose gold answer is the digits model's likeliest first token: rewards vary."""
    path = tmp_path / "fours.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i} + {4 - i}?", "answer": "4"}) + "\n"
                            for i in range(4)))
    return path


def _e2e(model, questions, out, *extra):
    return run_cli(["rl", "--reward", "mrt", "--advantage", "mrt", "--model", model, "-i", questions,
                    "-o", out, "--n", "4", "--n-train", "4", "--batch-size", "2", "--max-new-tokens", "1",
                    "--mrt-samples", "4", "--mrt-answer-tokens", "1", "--lr", "1e-3", "--steps", "3",
                    "--save-every", "1", "--lora-dropout", "0.1", "--no-progress", *extra])


def test_end_to_end_with_resume_bit_exact(digits_model_dir, fours, tmp_path):
    from safetensors.torch import load_file

    whole = _e2e(digits_model_dir, fours, tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    log = [json.loads(x) for x in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    assert [r["rollout_step"] for r in log] == [1, 1, 2, 2, 3, 3]
    assert all(0.0 <= r["regret"] <= 1.0 and "j0" in r and "progress_mean" in r for r in log)
    recs = [json.loads(x) for x in (tmp_path / "whole" / "rollouts.jsonl").read_text().splitlines()]
    for r in recs:      # rewards: outcome + α (J_n − J_0), J_n the outcome (α = 1)
        assert r["rewards"] == pytest.approx([2 * j[-1] - j[0] for j in r["j"]])
    assert any(r["j"][0][0] not in (0.0, 1.0) for r in recs)                # J_0 is estimated, not 0/1
    assert any(a != 0 for r in recs for a in r["advantages"]) and any(r["grad_norm"] > 0 for r in log)
    first = _e2e(digits_model_dir, fours, tmp_path / "cut", "--stop-after", "1")
    assert first.exit_code == 0 and "continue with --resume" in first.output, first.output
    other = _e2e(digits_model_dir, fours, tmp_path / "cut", "--resume", "--mrt-alpha", "0.5")
    assert other.exit_code == 2 and "--mrt-alpha" in other.output, other.output    # in the fingerprint
    again = _e2e(digits_model_dir, fours, tmp_path / "cut", "--resume")
    assert again.exit_code == 0, again.output
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("rollouts.jsonl", "train_log.jsonl"):
        assert (tmp_path / "whole" / name).read_text() == (tmp_path / "cut" / name).read_text()


def test_refused_without_gold_answers_before_a_model_loads(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "b", "question": "2+2?"}\n')
    out = tmp_path / "out"
    result = run_cli(["rl", "--reward", "mrt", "--advantage", "mrt", "--model", tmp_path / "no-model",
                      "-i", path, "-o", out, "--no-progress"])
    assert result.exit_code == 2 and "record 'b' has none" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
