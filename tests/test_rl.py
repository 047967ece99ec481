"""ttx rl: each reward and advantage plug-in against its reference's formula on fixed inputs
(HAPO's cosine length reward and history, Intuitor's self-certainty, GRPO), per-token advantages
in GRPO's loss, every reward end to end on a tiny model with bit-exact resume, and bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli
from tests.test_ttrl import digits_model_dir  # noqa: F401  (a fixture)
from ttx.rl.grpo import GRPOConfig, Rollout, grpo_loss, policy_loss, sequence_logprobs
from ttx.rl.plugins import Group, Problem, advantage_names, load_advantage, load_reward, reward_names
from ttx.rl.rewards.hapo import length_reward

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# -- HAPO (HCY123902/HAPO@c91ae3b) ------------------------------------------------------------------

MAX_LEN = 100000          # HAPO utils.py:4, "h_i is Null"


def ref_compute_len_reward(history_len, seq_len, is_corr, w_lr):
    """HAPO utils.py:38-55 compute_len_reward (cosine), written out."""
    if history_len < MAX_LEN and history_len > 0:
        if seq_len < 2 * history_len:
            r = math.cos((seq_len / history_len) * (math.pi / 2))
        else:
            r = math.cos(math.pi)
        if is_corr:
            r = max(-0.7, r)
        else:
            r = min(0, r)
    else:
        r = 0
    return r * w_lr


def ref_combined_reward_func(lens_dict, batch, w_lr):
    """HAPO grpo_trainer.py:75-106 combined_reward_func, mode "min", without the repetition
    penalty (rep_penalty 0.0, train_grpo.py:94): batch = [(prompt_idx, seq_len, r_corr)]."""
    rewards, curr = [], {p: [] for p, _, _ in batch}
    gathered = dict(lens_dict)
    for prompt_idx, seq_len, r_corr in batch:
        r_len = ref_compute_len_reward(gathered.get(prompt_idx, MAX_LEN), seq_len, r_corr >= 1.0, w_lr)
        rewards.append(r_corr + r_len)
        if r_corr >= 1:
            curr[prompt_idx].append(seq_len)
    for p, lens in curr.items():
        if lens:
            lens_dict[p] = min(min(lens), lens_dict.get(p, MAX_LEN))
    return rewards


@pytest.mark.parametrize("w", [1.0, 0.5])
def test_hapo_length_reward_is_the_references_cosine_with_its_clamps(w):
    for h in (None, 1, 5, 10, 37):
        for n in range(0, 90):
            for correct in (True, False):
                want = ref_compute_len_reward(MAX_LEN if h is None else h, n, correct, w)
                assert w * length_reward(n, h, correct) == pytest.approx(want, abs=1e-12), (h, n, correct)
    # the clamps: a correct response never below -0.7, an incorrect one never above 0
    assert length_reward(25, 10, True) == -0.7 and length_reward(2, 10, False) == 0.0
    assert length_reward(0, 10, True) == 1.0 and length_reward(10, 10, True) == pytest.approx(0.0, abs=1e-12)


def _group(step, key, answers, lens, gold="4"):
    return Group(step=step, problem=Problem(key=key, id=key, question="q", gold=gold), prompt_ids=[1],
                 response_ids=[[7] * n for n in lens], texts=[str(a) for a in answers], answers=answers)


def test_hapo_rewards_and_history_follow_combined_reward_func_over_steps():
    cfg = SimpleNamespace(hapo_weight=1.0, input="q.jsonl", answer_field="answer")
    reward = load_reward("hapo")(cfg)
    steps = [  # (key, answers, lengths) per group; gold is "4"
        [("0", ["4", "5", "4", None], [12, 3, 20, 40]), ("1", ["3", "3"], [5, 6])],
        [("0", ["4", "4", "2", "4"], [8, 30, 4, 16]), ("1", ["4", "1"], [9, 2])],
        [("0", ["4", "7", "4", "4"], [4, 7, 100, 9]), ("1", ["4", "4"], [30, 3])],
    ]
    lens_dict: dict = {}
    for step, groups in enumerate(steps):
        gs = [_group(step, k, a, n) for k, a, n in groups]
        scored = [reward.score(g) for g in gs]
        batch = [(int(k), n, float(a == "4")) for k, ans, lens in groups for a, n in zip(ans, lens)]
        want = ref_combined_reward_func(lens_dict, batch, 1.0)
        assert [r for s in scored for r in s.rewards] == pytest.approx(want, abs=1e-12)
        reward.end_step(step, gs, scored)
        assert reward.history == {str(k): v for k, v in lens_dict.items()}
    assert reward.history == {"0": 4, "1": 3}
    # the state survives the checkpoint's JSON round trip
    again = load_reward("hapo")(cfg)
    again.load_state_dict(json.loads(json.dumps(reward.state_dict())))
    assert again.history == reward.history


# -- self-certainty (sunblaze-ucb/Intuitor@3f0cdd7) and entropy -------------------------------------

def test_token_stats_match_intuitors_self_certainty_and_the_entropy(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from ttx.rl.tokenstats import token_stats

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts, responses = [[5, 6, 7, 8], [9, 10], [3, 4]], [[11, 12], [13, 14, 15, 16], []]
    stats = token_stats(model, prompts, responses, pad_id=0, temperature=0.7, micro_batch_size=2)
    _, _, ent = sequence_logprobs(model, prompts[:2], responses[:2], pad_id=0, temperature=0.7, entropy=True)
    for i, (p, r) in enumerate(zip(prompts[:2], responses[:2])):
        with torch.no_grad():
            z = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1:-1] / 0.7
        # verl-intuitor/verl/utils/torch_functional.py:151-154: logsumexp(logits) - logits.mean(-1)
        assert stats[i]["self_certainty"] == pytest.approx((torch.logsumexp(z, -1) - z.mean(-1)).tolist(),
                                                           abs=1e-4)
        assert stats[i]["entropy"] == pytest.approx(ent[i, -len(r):].tolist(), abs=1e-5)
        # KL(U || p) = -log V - mean_v log p_v = the self-certainty - log V (Intuitor's self-certainty)
        kl = (-math.log(z.shape[-1]) - torch.log_softmax(z, -1).mean(-1)).tolist()
        assert [s - math.log(z.shape[-1]) for s in stats[i]["self_certainty"]] == pytest.approx(kl, abs=1e-4)
    assert stats[2] == {"entropy": [], "self_certainty": []}


def test_label_free_rewards_are_token_means_and_log_collapse_indicators():
    scripted = [{"entropy": [1.0, 3.0], "self_certainty": [2.0, 4.0, 9.0]},
                {"entropy": [0.5], "self_certainty": [1.0]}, {"entropy": [], "self_certainty": []}]
    g = _group(0, "0", ["4", "4", None], [2, 1, 0])
    g.token_stats = lambda: scripted
    # open-r1-intuitor intuitor_trainer.py:880-889: the mean over each response's tokens
    sc = load_reward("self-certainty")(SimpleNamespace()).score(g)
    assert sc.rewards == [5.0, 1.0, 0.0]
    en = load_reward("entropy")(SimpleNamespace()).score(g)
    assert en.rewards == [-2.0, -0.5, 0.0]
    assert en.metrics["answer_diversity"] == pytest.approx(2 / 3)      # "4" and no answer
    assert en.metrics["mean_entropy"] == pytest.approx((2.0 + 0.5 + 0.0) / 3)
    assert en.metrics["accuracy"] == pytest.approx(2 / 3)
    assert load_reward("entropy").kl_default > 0 and load_reward("self-certainty").kl_default > 0


def test_gold_reward_grades_with_ttx_scoring():
    g = _group(0, "0", ["4", "4.0", "5", None], [1, 1, 1, 1])
    assert load_reward("gold")(SimpleNamespace()).score(g).rewards == [1.0, 1.0, 0.0, 0.0]


def test_a_reward_that_is_not_finite_is_a_named_error():
    from ttx.errors import TtxError
    from ttx.rl.plugins import Scored
    from ttx.rl.stage import _check_scored

    q = Problem(key="0", id="q7", question="q")
    _check_scored(Scored([1.0, -0.5]), 2, "x", q)
    with pytest.raises(TtxError, match=r"--reward x gave a reward that is not finite \(nan\) to question 'q7'"):
        _check_scored(Scored([1.0, float("nan")]), 2, "x", q)
    with pytest.raises(TtxError, match="1 rewards for 2 responses"):
        _check_scored(Scored([1.0]), 2, "x", q)


# -- advantages ----------------------------------------------------------------------------------

def test_registries_and_the_grpo_estimator():
    from ttx.rl.grpo import group_advantages

    assert {"majority", "gold", "self-certainty", "entropy", "hapo"} <= set(reward_names())
    assert "grpo" in advantage_names()
    rs = [Rollout(g, [1], [2], reward=r) for g, r in ((0, 1.0), (0, 0.0), (0, 0.0), (1, 2.0), (1, 1.0))]
    load_advantage("grpo")(SimpleNamespace()).compute(rs)
    assert [r.advantage for r in rs] == group_advantages([1.0, 0.0, 0.0, 2.0, 1.0], [0, 0, 0, 1, 1])


def test_per_token_advantages_reach_the_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cfg = GRPOConfig(clip_c=None)
    batch = [Rollout(0, [5, 6, 7], [11, 12, 13], advantage=0.5), Rollout(0, [9], [14, 15], advantage=-1.0)]
    with torch.no_grad():
        logp, mask, _ = sequence_logprobs(model, [r.prompt_ids for r in batch],
                                          [r.response_ids for r in batch], 0)
    for r, i in zip(batch, range(2)):
        r.old_logprobs = (logp[i, -len(r.response_ids):] - 0.1).tolist()
    scalar, _ = grpo_loss(model, batch, cfg, 0)
    batch[0].token_advantages = [0.5, 0.5, 0.5]               # the same as broadcasting: the same loss
    same, _ = grpo_loss(model, batch, cfg, 0)
    assert float(same.detach()) == pytest.approx(float(scalar.detach()), abs=1e-7)
    batch[0].token_advantages = [2.0, -1.0, 0.25]             # per token: policy_loss on the [B, T] grid
    per_token, _ = grpo_loss(model, batch, cfg, 0)
    old = torch.tensor([[*batch[0].old_logprobs], [0.0, *batch[1].old_logprobs]])
    adv = torch.tensor([[2.0, -1.0, 0.25], [0.0, -1.0, -1.0]])
    want, _ = policy_loss(logp, old, adv, mask, cfg.clip_low, cfg.clip_high, None)
    assert float(per_token.detach()) == pytest.approx(float(want), abs=1e-6)
    assert float(per_token.detach()) != pytest.approx(float(scalar.detach()), abs=1e-4)
    batch[0].token_advantages = [1.0]
    with pytest.raises(ValueError, match="token advantages"):
        grpo_loss(model, batch, cfg, 0)


# -- the stage -----------------------------------------------------------------------------------

@pytest.fixture()
def gold_questions(tmp_path):
    """Questions whose gold answer is the digit the digits model samples most (4), so gold rewards
    and HAPO's history move."""
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Say four ({i}).", "answer": "4"}) + "\n"
                            for i in range(4)))
    return path


def _common(model, questions, reward):
    return ["rl", "--reward", reward, "--model", model, "-i", questions, "--n", "8", "--n-train", "4",
            "--batch-size", "2", "--max-new-tokens", "2", "--lr", "1e-3", "--no-progress"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("reward", ["majority", "gold", "self-certainty", "entropy", "hapo"])
def test_each_reward_end_to_end_resumes_bit_for_bit(digits_model_dir, gold_questions, tmp_path, reward):  # noqa: F811
    common = _common(digits_model_dir, gold_questions, reward) + ["--steps", "4", "--save-every", "1",
                                                                  "--lora-dropout", "0.1"]
    whole = run_cli(common + ["-o", tmp_path / "whole"])
    assert whole.exit_code == 0, whole.output
    assert f"rl: --reward {reward}" in whole.output
    first = run_cli(common + ["-o", tmp_path / "cut", "--stop-after", "2"])
    assert first.exit_code == 0 and "continue with --resume" in first.output
    again = run_cli(common + ["-o", tmp_path / "cut", "--resume"])
    assert again.exit_code == 0, again.output
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "rollouts.jsonl").read_text() == \
        (tmp_path / "cut" / "rollouts.jsonl").read_text()
    log = _lines(tmp_path / "whole" / "train_log.jsonl")
    assert log == _lines(tmp_path / "cut" / "train_log.jsonl")
    manifest = json.loads((tmp_path / "whole" / "ttx_manifest.json").read_text())
    assert manifest["stage"] == "rl" and manifest["options"]["reward"] == reward
    assert manifest["options"]["kl_coef"] == load_reward(reward).kl_default > 0
    recs = _lines(tmp_path / "whole" / "rollouts.jsonl")
    assert any(a != 0 for r in recs for a in r["advantages"]), "no learning signal in 4 steps"
    if reward in ("self-certainty", "entropy"):
        assert {"answer_diversity", "mean_entropy", "kl"} <= set(log[0])    # the collapse indicators
    if reward == "hapo":
        # h_i before each step = the shortest correct length of the earlier steps (None: unknown)
        seen: dict = {}
        for r in recs:
            assert r["history"] == seen.get(r["id"]), r
            right = [n for n, a in zip(r["lengths"], r["answers"]) if a == "4"]
            if right:
                seen[r["id"]] = min(right + ([seen[r["id"]]] if r["id"] in seen else []))
        assert seen and "history_mean" in log[-1]
        assert {int(v) for v in manifest["summary"]["plugin_state"]["reward"]["history"].values()} == \
            set(seen.values())


def test_ttrl_is_rl_with_the_majority_reward(digits_model_dir, gold_questions, tmp_path):  # noqa: F811
    args = ["--model", digits_model_dir, "-i", gold_questions, "--n", "8", "--n-train", "4",
            "--batch-size", "2", "--max-new-tokens", "2", "--lr", "1e-3", "--no-progress", "--steps", "2"]
    assert run_cli(["ttrl", *args, "-o", tmp_path / "ttrl"]).exit_code == 0
    assert run_cli(["rl", "--reward", "majority", *args, "-o", tmp_path / "rl"]).exit_code == 0
    a = load_file(str(tmp_path / "ttrl" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "rl" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ttrl" / "rollouts.jsonl").read_text() == \
        (tmp_path / "rl" / "rollouts.jsonl").read_text()


def test_resume_with_another_reward_is_refused(digits_model_dir, gold_questions, tmp_path):  # noqa: F811
    out = tmp_path / "cut"
    common = _common(digits_model_dir, gold_questions, "gold") + ["--steps", "3", "-o", out]
    assert run_cli(common + ["--stop-after", "1"]).exit_code == 0
    other = run_cli([a if a != "gold" else "hapo" for a in common] + ["--resume"])
    assert other.exit_code == 2 and "--reward" in other.output, other.output


def test_gold_rewards_refuse_records_without_answers_before_the_model_loads(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "b", "question": "2+2?"}\n'
                    '{"id": "c", "question": "3+3?"}\n')
    for reward in ("gold", "hapo"):
        out = tmp_path / reward
        result = run_cli(["rl", "--reward", reward, "--model", tmp_path / "no-such-model", "-i", path,
                          "-o", out])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "record 'b' has none" in lines[0] and "'answer'" in lines[0], result.output
        assert not out.exists()


def test_options_of_another_plugin_are_refused(tmp_path):
    result = run_cli(["rl", "--reward", "gold", "--hapo-weight", "0.5", "--model", tmp_path / "none",
                      "-i", tmp_path / "q.jsonl", "-o", tmp_path / "o"])
    assert result.exit_code == 2 and "field '--hapo-weight'" in result.output
    assert "--reward hapo" in result.output
    unknown = run_cli(["rl", "--reward", "nope", "-i", tmp_path / "q.jsonl", "-o", tmp_path / "o"])
    assert unknown.exit_code == 2


def test_help_and_recipes_load():
    import yaml

    from ttx.cli import cli
    from ttx.cli.options import option_names

    assert run_cli(["rl", "--help"]).exit_code == 0
    command = cli.get_command(None, "rl")
    names = option_names(command)
    recipes = sorted((REPO / "recipes").glob("rl-*.yaml"))
    assert {p.stem for p in recipes} >= {f"rl-{r}" for r in reward_names()}
    for recipe in recipes:
        assert f"ttx rl --config recipes/{recipe.name}" in recipe.read_text().splitlines()[1], recipe
        data = yaml.safe_load(recipe.read_text())
        ctx = command.make_context("rl", ["--config", str(recipe), "-i", "x", "-o", "y"],
                                   resilient_parsing=True)
        assert all(ctx.default_map[names[k.replace("-", "_")]] == v for k, v in data.items()), recipe


def test_etmr_and_ear_work_with_another_reward(digits_model_dir, gold_questions, tmp_path):  # noqa: F811
    out = tmp_path / "etmr"
    result = run_cli(_common(digits_model_dir, gold_questions, "entropy") + [
        "--etmr", "--etmr-trees", "2", "--etmr-forks", "1", "--etmr-branches", "2", "--ear",
        "--max-new-tokens", "3", "--steps", "1", "-o", out])
    assert result.exit_code == 0, result.output
    recs = _lines(out / "rollouts.jsonl")
    assert all(r["votes"] == 6 and len(r["trained_leaves"]) == 4 and "answer_diversity" in r for r in recs)


@pytest.mark.model
def test_hapo_on_the_default_model_writes_an_adapter_tts_run_uses(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ttx.data.arith import generate

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(p) + "\n" for p in generate(2, seed=0)))
    out = tmp_path / "hapo"
    result = run_cli(["rl", "--reward", "hapo", "-i", questions, "-o", out, "--n", "4", "--batch-size", "2",
                      "--max-new-tokens", "48", "--temperature", "0.7", "--lr", "1e-4", "--steps", "2",
                      "--no-progress"])
    assert result.exit_code == 0, result.output
    recs = _lines(out / "rollouts.jsonl")
    assert len(recs) == 4 and all("history" in r and len(r["lengths"]) == 4 for r in recs)
    assert all("history_known" in row for row in _lines(out / "train_log.jsonl"))
    manifest = json.loads((out / "ttx_manifest.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(manifest["options"]["base_model_folder"])
    PeftModel.from_pretrained(base, str(out))
    ran = run_cli(["tts-run", "--adapter", out, "-i", questions, "-o", tmp_path / "after.jsonl",
                   "--strategy", "greedy", "--max-new-tokens", "16", "--no-progress"])
    assert ran.exit_code == 0, ran.output
