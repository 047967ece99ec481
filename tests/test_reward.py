"""Reward-model scorers on tiny random reward models built here: outcome (sequence
classification), process (causal LM with step tags or chat turns; token classification)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.errors import TtxError
from ttx.tts.reward import RewardModel
from ttx.tts.search import SearchConfig


def _tiny(folder, cls, default_model_dir, **extra):
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         pad_token_id=tokenizer.pad_token_id, **extra)
    torch.manual_seed(1)
    cls(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def orm_dir(tmp_path_factory, default_model_dir):
    from transformers import LlamaForSequenceClassification

    return _tiny(tmp_path_factory.mktemp("orm"), LlamaForSequenceClassification,
                 default_model_dir, num_labels=1)


@pytest.fixture(scope="module")
def token_prm_dir(tmp_path_factory, default_model_dir):
    from transformers import LlamaForTokenClassification

    return _tiny(tmp_path_factory.mktemp("token-prm"), LlamaForTokenClassification,
                 default_model_dir, num_labels=2)


QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"
STEPS = ["Tom starts with 3 apples.", "He buys 5 more, so 3 + 5 = 8.", "The answer is 8."]


def test_outcome_model_scores_the_whole_trace(orm_dir):
    rm = RewardModel(str(orm_dir), SearchConfig())
    assert rm.kind == "outcome"
    text = "\n\n".join(STEPS)
    chat = rm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": text}], tokenize=False)
    with torch.no_grad():
        logit = rm.model(input_ids=torch.tensor([rm.tokenizer(chat).input_ids])).logits[0, 0]
    score, steps = rm.score_text(QUESTION, text)
    assert score == pytest.approx(torch.sigmoid(logit).item(), abs=1e-6) and steps == [score]
    assert rm.score_text(QUESTION, "The answer is 9.")[0] != pytest.approx(score)


@pytest.mark.parametrize("fmt", ["tag", "chat"])
def test_process_model_scores_each_step_from_its_prefix(tiny_model_dir, fmt):
    """Math-Shepherd (tag) and RLHFlow (chat) conventions: a step's score depends only on the
    steps up to it, and is P(good) against P(bad) at the step's position."""
    rm = RewardModel(str(tiny_model_dir), SearchConfig(prm_format=fmt))
    assert rm.kind == "process"
    scores = rm.process(QUESTION, STEPS)
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    assert rm.process(QUESTION, STEPS[:2]) == pytest.approx(scores[:2], abs=1e-5)
    ids, positions = rm._positions(QUESTION, STEPS)
    with torch.no_grad():
        logits = rm.model(input_ids=torch.tensor([ids])).logits[0, positions]
    pair = torch.softmax(logits[:, [rm.good, rm.bad]], -1)[:, 0]
    assert scores == pytest.approx(pair.tolist(), abs=1e-5)
    if fmt == "tag":           # the tag closes each step
        tag = rm.tokenizer("ки", add_special_tokens=False).input_ids
        assert all(ids[p - len(tag) + 1:p + 1] == tag for p in positions)
    # --agg over the steps of a whole trace split at blank lines
    rm.search.agg = "min"
    assert rm.score_text(QUESTION, "\n\n".join(STEPS)) == (pytest.approx(min(scores), abs=1e-5),
                                                          pytest.approx(scores, abs=1e-5))


def test_token_classification_prm_and_bad_reward_models(token_prm_dir, tiny_model_dir, tmp_path):
    rm = RewardModel(str(token_prm_dir), SearchConfig(prm_step_tag="<extra_0>"))
    scores = rm.process(QUESTION, STEPS)
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    with pytest.raises(TtxError, match="must be exactly one"):
        RewardModel(str(tiny_model_dir), SearchConfig(prm_good_token="apples and pears"))
    with pytest.raises(TtxError, match="no config.json"):
        RewardModel(str(tmp_path / "missing"), SearchConfig())
    from transformers import LlamaConfig, LlamaModel

    LlamaModel(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path / "b")
    with pytest.raises(TtxError, match="not a reward model"):
        RewardModel(str(tmp_path / "b"), SearchConfig())


def test_best_of_n_and_beam_with_reward_models(tmp_path, tiny_model_dir, orm_dir):
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, 6)))
    out = tmp_path / "bon.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "best-of-n", "--n", "4", "--temperature", "1.0",
                      "--max-new-tokens", "8", "--reward-model", orm_dir, "--no-progress"])
    assert result.exit_code == 0, result.output
    rm = RewardModel(str(orm_dir), SearchConfig())
    for r in map(json.loads, out.read_text().splitlines()):
        assert r["reward_kind"] == "outcome"
        for t in r["traces"]:
            assert t["score"] == pytest.approx(rm.score_text(r["question"], t["text"])[0], abs=1e-5)
        assert r["pred"] == max(r["traces"], key=lambda t: t["score"])["pred"]
    out = tmp_path / "beam.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "beam", "--n", "4", "--temperature", "1.0", "--step-tokens",
                      "3", "--max-steps", "3", "--max-new-tokens", "12", "--reward-model",
                      tiny_model_dir, "--prm-good-token", "+", "--no-progress"])
    assert result.exit_code == 0, result.output
    for r in map(json.loads, out.read_text().splitlines()):
        for t in r["traces"]:
            assert len(t["step_scores"]) == t["steps"] and all(0 < s < 1 for s in t["step_scores"])
            assert t["score"] == t["step_scores"][-1]                       # --agg last


def test_prm_options_need_a_reward_model(tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "1+1?"}\n')
    result = run_cli(["tts-run", "-i", problems, "-o", "-", "--strategy", "beam", "--n", "4",
                      "--prm-step-tag", "ки"])
    assert result.exit_code == 2 and "needs --reward-model" in result.output
