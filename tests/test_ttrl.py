"""ttrl: GRPO's advantages and clipped objective, TTRL's majority rewards, ETMR trees and EAR on
scripted entropies, the stage end to end on a tiny model, exact resume, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli
from ttx.rl.ear import adv_clip, adv_reshape, reshape_factors
from ttx.rl.etmr import fork_positions, token_ratio, tree_rollouts
from ttx.rl.grpo import (
    GRPOConfig,
    Rollout,
    group_advantages,
    low_var_kl,
    policy_loss,
    sequence_logprobs,
    update_batches,
)
from ttx.rl.ttrl import gold_metrics, majority_rewards
from ttx.scoring.answers import vote_key, winner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- GRPO ----------------------------------------------------------------------------------------

def test_group_advantages_follow_verl():
    # verl compute_grpo_outcome_advantage (PRIME-RL/TTRL verl/verl/trainer/ppo/core_algos.py:113):
    # (r - mean) / (std + 1e-6) per group, torch.std unbiased; a group of one: mean 0, std 1
    rewards = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 5.0]
    groups = [0, 0, 0, 0, 1, 1, 1, 1, 2]
    std0 = math.sqrt(((0.5 ** 2) * 4) / 3)                  # Bessel: n - 1 = 3
    std1 = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)
    expected = [0.5 / (std0 + 1e-6)] * 2 + [-0.5 / (std0 + 1e-6)] * 2 \
        + [0.75 / (std1 + 1e-6)] + [-0.25 / (std1 + 1e-6)] * 3 + [5.0 / (1 + 1e-6)]
    assert group_advantages(rewards, groups) == pytest.approx(expected, rel=1e-6)
    assert group_advantages([1.0, 1.0, 1.0], [0, 0, 0]) == [0.0, 0.0, 0.0]   # no signal, no update


def test_clipped_objective_on_hand_computed_numbers():
    ratio = torch.tensor([[1.5, 0.5, 1.0, 4.0]])
    old = torch.zeros(1, 4)
    logp = torch.log(ratio).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_loss(logp, old, adv, mask, 0.2, 0.2, clip_c=3.0)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(-0.5, -0.8) = -0.5;
    # token 3: 1.0; token 4: max(4.0, 1.2) = 4.0, then the dual clip min(4.0, 3) = 3
    assert float(loss.detach()) == pytest.approx((-1.2 - 0.5 + 1.0 + 3.0) / 4)
    assert stats["clipfrac"] == pytest.approx(0.25)        # only token 1 takes the clipped term
    loss.backward()
    # d(-A ρ)/d logp = -A ρ where the unclipped term is taken; 0 where clipped
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 4, 1.0 / 4, 0.0])
    plain, _ = policy_loss(torch.log(ratio), old, adv, mask, 0.2, 0.2, clip_c=None)
    assert float(plain) == pytest.approx((-1.2 - 0.5 + 1.0 + 4.0) / 4)
    masked, _ = policy_loss(torch.log(ratio), old, adv, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert float(masked) == pytest.approx((-1.2 - 0.5) / 2)
    # k3: exp(d) - d - 1 with d = ref - logp = log 0.5
    assert float(low_var_kl(torch.log(torch.tensor(0.5)), torch.log(torch.tensor(0.25)))) == \
        pytest.approx(0.5 - math.log(0.5) - 1)


def test_padded_logprobs_and_entropy_equal_one_sequence_at_a_time(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    responses = [[11, 12], [13, 14, 15, 16]]
    logp, mask, ent = sequence_logprobs(model, prompts, responses, pad_id=0, temperature=0.7, entropy=True)
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    for i, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1:-1] / 0.7
        lp = torch.log_softmax(logits, -1)
        want = lp.gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        k = len(r)
        assert logp[i, -k:].tolist() == pytest.approx(want.tolist(), abs=1e-4)
        assert ent[i, -k:].tolist() == pytest.approx((-(lp.exp() * lp).sum(-1)).tolist(), abs=1e-4)


def test_updates_cut_groups_then_micro_batches():
    rs = [Rollout(group=g, prompt_ids=[1], response_ids=[2]) for g in (0, 0, 0, 1, 1, 1, 2, 2, 2)]
    ups = update_batches(rs, GRPOConfig(micro_batch_size=2, groups_per_update=2))
    assert [[len(m) for m in u] for u in ups] == [[2, 2, 2], [2, 1]]
    assert [r.group for m in ups[0] for r in m] == [0, 0, 0, 1, 1, 1]


def test_grpo_steps_raise_the_rewarded_response(tiny_model_dir, tmp_path):
    """The loop on the shared Trainer: a scripted group (two responses agree, two do not) moves
    probability toward the rewarded response and away from the others, and logs each step."""
    from transformers import AutoModelForCausalLM

    from ttx.rl.loop import LoopConfig, run_loop
    from ttx.train import TrainConfig, Trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt, good, bad = [5, 6, 7], [40, 41], [42, 43]
    responses = [good, good, bad, [44, 45]]
    rewards = [1.0, 1.0, 0.0, 0.0]

    def logp(resp):
        with torch.no_grad():
            return float(sequence_logprobs(model, [prompt], [resp], 0)[0].sum())

    before = (logp(good), logp(bad))
    trainer = Trainer(model, TrainConfig(output_dir=tmp_path, lr=1e-2, schedule="constant", grad_accum=2,
                                         max_grad_norm=None, progress=False), total_steps=3)
    def collect(step):
        return [Rollout(0, prompt, r, w) for r, w in zip(responses, rewards)], {"scripted": 1.0}

    ran = run_loop(trainer, model, GRPOConfig(micro_batch_size=2),
                   LoopConfig(steps=3, save_every=0, progress=False), pad_id=0, collect=collect)
    assert ran == {"start": 0, "done": 3, "stopped": False}
    assert logp(good) > before[0] + 1.0 and logp(good) - logp(bad) > before[0] - before[1] + 1.0
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["rollout_step"] for r in rows] == [1, 2, 3] and rows[0]["scripted"] == 1.0
    assert rows[0]["clipfrac"] == 0.0 and rows[0]["ppo_kl"] == pytest.approx(0.0, abs=1e-6)


# -- TTRL's reward ---------------------------------------------------------------------------------

def test_majority_rewards_on_a_scripted_group():
    texts = ["So the answer is 12.", "12", "The answer is \\boxed{12}", "I think 7", "no idea", "12.0"]
    vote = majority_rewards(texts)
    assert vote.label == "12" and vote.answers[3] == "7" and vote.answers[4] is None
    assert vote.rewards == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert vote.majority_ratio == pytest.approx(4 / 6)
    # a group of n_train = 4 (TTRL trains on the first of the votes): rewards 1, 1, 1, 0
    adv = group_advantages(vote.rewards[:4], [0] * 4)
    std = math.sqrt((3 * 0.25 ** 2 + 0.75 ** 2) / 3)
    assert adv == pytest.approx([0.25 / std] * 3 + [-0.75 / std], rel=1e-5)
    assert gold_metrics(vote, "12") == {"label_accuracy": 1.0, "reward_accuracy": 1.0,
                                        "ground_truth_ratio": pytest.approx(4 / 6), "pass_at_n": 1.0}
    wrong = gold_metrics(vote, "7")
    assert wrong["label_accuracy"] == 0.0 and wrong["reward_accuracy"] == pytest.approx(1 / 6)
    # "0.5" and "1/2" vote apart, but agreeing with the label is graded as math (TTRL's grader)
    assert majority_rewards(["0.5", "0.5", "1/2", "3"]).rewards == [1.0, 1.0, 1.0, 0.0]


def test_responses_without_an_answer_vote_as_one_class_or_not_at_all():
    texts = ["I am not sure about this one at all.", "no idea", "5", "6"]
    lm_eval = majority_rewards(texts, "lm-eval")          # the no-answer class wins and agrees with itself
    assert lm_eval.label is None and lm_eval.rewards == [1.0, 1.0, 0.0, 0.0]
    skip = majority_rewards(texts, "skip")                # no vote: "5" wins (seen first of the tie)
    assert skip.label == "5" and skip.rewards == [0.0, 0.0, 1.0, 0.0] and skip.majority_ratio == 0.25
    assert majority_rewards(["no idea", "Let me think about the apples."], "skip").rewards == [0.0, 0.0]


# -- ETTRL: ETMR and EAR -------------------------------------------------------------------------------

def test_fork_positions_and_token_ratio():
    assert fork_positions([0.1, 2.0, 0.5, 2.5, 1.0], 2) == [1, 3]
    assert fork_positions([0.3, 2.0, 2.0, 2.0], 2) == [1, 2]            # ties: the earliest
    assert fork_positions([1.0], 3) == [0]
    assert token_ratio(branches=2, forks=3) == pytest.approx(4 / 7)     # ETTRL: N = 3, B = 2


def test_tree_rollouts_fork_where_the_scripted_entropy_peaks(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = HFEngine(loaded=(model, tok))
    prompts = [[{"role": "user", "content": "Tom has 3 apples."}], [{"role": "user", "content": "Mia?"}]]
    peaks = {}

    def scripted(prompt_ids, response_ids):             # peaks at positions 1 and 4 of each root
        out = []
        for r in response_ids:
            out.append([5.0 if t in (1, 4) else 0.1 * t for t in range(len(r))])
            peaks[tuple(r)] = [1, 4]
        return out

    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, ignore_eos=True)
    leaves = tree_rollouts(engine, tok, prompts, params, trees=3, forks=2, branches=2, entropy_fn=scripted,
                           branch_seed=4)
    for per_prompt in leaves:
        assert len(per_prompt) == 3 * (1 + 2 * 2)                # R_tree = M (1 + B N)
        roots = [leaf for leaf in per_prompt if leaf.fork is None]
        assert [r.tree for r in roots] == [0, 1, 2] and all(r.generated == 6 for r in roots)
        for leaf in per_prompt:
            if leaf.fork is None:
                continue
            root = roots[leaf.tree]
            assert leaf.fork in (1, 4)
            assert leaf.response_ids[:leaf.fork] == root.response_ids[:leaf.fork]   # the prefix is kept
            assert leaf.generated == 6 - leaf.fork and len(leaf.response_ids) == 6  # the rest regenerated
        forks = sorted((leaf.tree, leaf.fork) for leaf in per_prompt if leaf.fork is not None)
        assert forks == sorted([(t, f) for t in range(3) for f in (1, 4)] * 2)
    generated = sum(leaf.generated for ls in leaves for leaf in ls)
    assert generated == 2 * 3 * (6 + 2 * (5 + 2))            # roots + branches, prefixes not regenerated


def test_ear_reshapes_by_relative_entropy():
    # Y_i = 1 + (avg H - H_i) / avg H: mean entropies 1, 2, 3 (avg 2) -> 1.5, 1, 0.5
    assert reshape_factors([1.0, 2.0, 3.0, 0.0, 0.0], [0, 0, 0, 1, 1]) == [1.5, 1.0, 0.5, 1.0, 1.0]
    rs = [Rollout(0, [1], [2, 3], advantage=a, entropies=h)
          for a, h in ((1.0, [1.0, 1.0]), (-1.0, [2.0, 2.0]), (2.0, [3.0, 3.0]))]
    adv_reshape(rs)
    assert [r.advantage for r in rs] == pytest.approx([1.5, -1.0, 1.0])
    clipped = [Rollout(0, [1], [2], advantage=a) for a in (3.0, -2.5, 1.0)]
    adv_clip(clipped, 2.0)
    assert [r.advantage for r in clipped] == [2.0, -2.0, 1.0]


# -- the stage ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_model_dir(tmp_path_factory, default_model_dir):
    """A tiny random Llama whose first token is mostly a digit (4 and 7 the likeliest), so the
    votes of a question disagree and majority rewards give non-zero advantages."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():                 # hidden unit 0 is constant; only digits and EOS read it
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        for d in range(10):
            model.lm_head.weight[tok.convert_tokens_to_ids(str(d)), 0] = {4: 1.55, 7: 1.5}.get(d, 1.35)
        model.lm_head.weight[tok.eos_token_id, 0] = 1.45
    folder = tmp_path_factory.mktemp("digits-llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture()
def questions(tmp_path):
    from ttx.data.arith import generate

    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate(4, seed=0)))
    return path


def _common(model, questions):
    return ["ttrl", "--model", model, "-i", questions, "--n", "8", "--n-train", "4", "--batch-size", "2",
            "--max-new-tokens", "1", "--lr", "1e-3", "--no-progress"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_rewards_follow_the_majority_and_the_adapter_loads(digits_model_dir, questions, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    result = run_cli(_common(digits_model_dir, questions) + ["-o", out, "--steps", "3"])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "ttx_manifest.json").read_text())["summary"]
    assert (s["rollout_steps"], s["updates"], s["questions_seen"]) == (3, 6, 6)   # 2 questions, 1 per update
    recs = _lines(out / "rollouts.jsonl")
    assert [r["step"] for r in recs] == [1, 1, 2, 2, 3, 3]
    assert any(a != 0 for r in recs for a in r["advantages"])
    for r in recs:
        keys = [vote_key(a) for a in r["answers"]]
        label_key = keys[winner(keys)]
        assert vote_key(r["label"]) == label_key and r["votes"] == 8 and r["trained_leaves"] == [0, 1, 2, 3]
        assert r["majority_ratio"] == pytest.approx(keys.count(label_key) / 8)
        assert r["rewards"] == [float(keys[i] == label_key) for i in r["trained_leaves"]]
        assert r["advantages"] == pytest.approx(group_advantages(r["rewards"], [0] * 4), abs=1e-5)
        assert r["label_accuracy"] == float(r["label"] == r["gold"])            # gold: logged, never used
    log = _lines(out / "train_log.jsonl")
    assert len(log) == 6 and [row["rollout_step"] for row in log] == [1, 1, 2, 2, 3, 3]
    assert {"label_accuracy", "reward_accuracy", "majority_ratio", "entropy", "rollout_tokens", "kl",
            "clipfrac"} <= set(log[0])
    assert not (out / "checkpoints").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(digits_model_dir), str(out))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    ran = run_cli(["tts-run", "--model", digits_model_dir, "--adapter", out, "-i", questions,
                   "-o", tmp_path / "after.jsonl", "--strategy", "majority", "--n", "4",
                   "--max-new-tokens", "1", "--no-progress"])
    assert ran.exit_code == 0, ran.output


def test_etmr_and_ear_end_to_end(digits_model_dir, questions, tmp_path):
    out = tmp_path / "etmr"
    result = run_cli(_common(digits_model_dir, questions)[:-1] + [
        "--etmr", "--etmr-trees", "2", "--etmr-forks", "1", "--etmr-branches", "2", "--ear",
        "--max-new-tokens", "3", "--steps", "2", "-o", out, "--no-progress"])
    assert result.exit_code == 0, result.output
    recs = _lines(out / "rollouts.jsonl")
    assert all(r["votes"] == 2 * (1 + 2 * 1) for r in recs)
    # a branch regenerates only what follows its fork: fewer tokens than 6 independent samples
    assert all(r["generated_tokens"] <= 6 * r["mean_response_tokens"] for r in recs)
    assert all(len(r["trained_leaves"]) == 4 and r["trained_leaves"] == sorted(r["trained_leaves"])
               for r in recs)


def test_full_finetuning_writes_a_model(digits_model_dir, questions, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    result = run_cli(_common(digits_model_dir, questions) + ["--full", "--steps", "1", "-o", out])
    assert result.exit_code == 0, result.output
    trained = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(digits_model_dir)
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)


def test_resume_gives_the_same_adapter_bit_for_bit(digits_model_dir, questions, tmp_path):
    common = _common(digits_model_dir, questions) + ["--steps", "4", "--lora-dropout", "0.1",
                                                     "--save-every", "1"]
    whole = run_cli(common + ["-o", tmp_path / "whole"])
    assert whole.exit_code == 0, whole.output
    first = run_cli(common + ["-o", tmp_path / "cut", "--stop-after", "2"])
    assert first.exit_code == 0 and "continue with --resume" in first.output
    assert not (tmp_path / "cut" / "adapter_model.safetensors").exists()
    with open(tmp_path / "cut" / "rollouts.jsonl", "a") as f:      # a record of a step after the checkpoint
        f.write(json.dumps({"step": 3, "id": "stale"}) + "\n")
    again = run_cli(common + ["-o", tmp_path / "cut", "--resume"])
    assert again.exit_code == 0, again.output
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "rollouts.jsonl").read_text() == \
        (tmp_path / "cut" / "rollouts.jsonl").read_text()
    assert _lines(tmp_path / "whole" / "train_log.jsonl") == _lines(tmp_path / "cut" / "train_log.jsonl")


def _bad(tmp_path, text):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, where", [
    ('{"question": "1+1?"}\n{"question": 3}\n', ":2: field 'question'"),
    ('{"question": "1+1?"}\nnot json\n', ":2: not valid JSON"),
    ('{"id": "a", "question": "1+1?", "answer": ["2"]}\n', ":1: field 'answer'"),
    ('{"id": "a", "question": "x"}\n{"id": "a", "question": "y"}\n', ":2: field 'id': duplicate id"),
    ('{"prompt": "1+1?"}\n', ":1: field 'question': missing"),
    ("\n", ": no records"),
])
def test_bad_input_is_one_line_and_writes_nothing(digits_model_dir, tmp_path, text, where):
    out = tmp_path / "out"
    result = run_cli(["ttrl", "--model", digits_model_dir, "-i", _bad(tmp_path, text), "-o", out])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ttx: error: ") and where in lines[0], result.output
    assert not out.exists()


def test_bad_options_and_outputs(digits_model_dir, questions, tmp_path):
    bad = run_cli(["ttrl", "--model", digits_model_dir, "-i", questions, "-o", tmp_path / "o", "--n", "4",
                   "--n-train", "5"])
    assert bad.exit_code == 2 and "field '--n-train'" in bad.output
    out = tmp_path / "adapter"
    assert run_cli(_common(digits_model_dir, questions) + ["-o", out, "--steps", "1"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = run_cli(_common(digits_model_dir, questions) + ["-o", out, "--steps", "1", "--lr", "1e-2"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    finished = run_cli(_common(digits_model_dir, questions) + ["-o", out, "--steps", "1", "--resume"])
    assert finished.exit_code == 2 and "finished" in finished.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before      # nothing lost
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = run_cli(_common(digits_model_dir, questions) + ["-o", other, "--overwrite"])
    assert refused.exit_code == 2 and (other / "notes.txt").read_text() == "keep me"
    replaced = run_cli(_common(digits_model_dir, questions) + ["-o", out, "--steps", "2", "--overwrite"])
    assert replaced.exit_code == 0
    assert json.loads((out / "ttx_manifest.json").read_text())["summary"]["rollout_steps"] == 2
    cut = tmp_path / "cut"
    assert run_cli(_common(digits_model_dir, questions) + ["-o", cut, "--steps", "3", "--stop-after", "1"]
                   ).exit_code == 0
    changed = run_cli(_common(digits_model_dir, questions) + ["-o", cut, "--steps", "3", "--resume",
                                                              "--lr", "1e-2"])
    assert changed.exit_code == 2 and "--resume with a different --lr" in changed.output


def test_help_and_recipe_load():
    import yaml

    from ttx.cli import cli
    from ttx.cli.options import option_names

    assert run_cli(["ttrl", "--help"]).exit_code == 0
    recipe = REPO / "recipes" / "ttrl.yaml"
    assert "ttx ttrl --config recipes/ttrl.yaml" in recipe.read_text().splitlines()[1]
    command = cli.get_command(None, "ttrl")
    names = option_names(command)
    data = yaml.safe_load(recipe.read_text())
    ctx = command.make_context("ttrl", ["--config", str(recipe), "-i", "x", "-o", "y"], resilient_parsing=True)
    assert all(ctx.default_map[names[k.replace("-", "_")]] == v for k, v in data.items())
