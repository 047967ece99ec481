"""Reward-model scorers on tiny random reward models built here: outcome (sequence
classification), process (causal LM with step tags or chat turns; token classification)."""

from __future__ import annotations

import json
from dataclasses import replace

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


def _one(rm, ids):
    with torch.no_grad():
        return rm.model(input_ids=torch.tensor([ids])).logits[0]


def test_outcome_model_scores_the_whole_trace(orm_dir):
    rm = RewardModel(str(orm_dir), SearchConfig())
    assert rm.kind == "orm"
    text = "\n\n".join(STEPS)
    chat = rm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": text}], tokenize=False)
    logit = _one(rm, rm.tokenizer(chat, add_special_tokens=False).input_ids)[0]
    [(score, steps)] = rm.score_texts([(QUESTION, text)])
    assert score == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5) and steps == [score]
    assert rm.score_texts([(QUESTION, "The answer is 9.")])[0][0] != pytest.approx(score)


@pytest.mark.parametrize("fmt", ["tag", "chat"])
def test_process_model_scores_each_step_from_its_prefix(tiny_model_dir, fmt):
    """Math-Shepherd (tag) and RLHFlow (chat) conventions: a step's score depends only on the
    steps up to it, and is P(good) against P(bad) at the step's position."""
    rm = RewardModel(str(tiny_model_dir), SearchConfig(prm_format=fmt, reward_model="x"))
    assert rm.kind == "prm" and rm.format == fmt
    [scores] = rm.score_paths([(QUESTION, STEPS)])
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    [prefix] = rm.score_paths([(QUESTION, STEPS[:2])])
    assert prefix == pytest.approx(scores[:2], abs=1e-5)
    ids, positions = rm._process_input(QUESTION, STEPS)
    logits = _one(rm, ids)[positions]
    pair = torch.softmax(logits[:, [rm.good_id, rm.bad_id]], -1)[:, 0]
    assert scores == pytest.approx(pair.tolist(), abs=1e-5)
    if fmt == "tag":           # Math-Shepherd's card: question, " ", steps each + " ки", BOS first
        from ttx.reward_inputs import tag_text

        text = tag_text(QUESTION, STEPS)
        assert ids == rm.tokenizer(text).input_ids
        assert text == QUESTION + " " + "\n".join(f"{s} ки" for s in STEPS)
        tag = rm.tokenizer("ки", add_special_tokens=False).input_ids
        assert all(ids[p] == tag[-1] for p in positions)
    else:                      # RLHFlow: read where the assistant's "+" is predicted
        plus = rm.tokenizer("+", add_special_tokens=False).input_ids[-1]
        assert all(ids[p + 1] == plus for p in positions)
    # --agg over the steps of a whole trace split at blank lines
    rm.agg = "min"
    [(value, steps)] = rm.score_texts([(QUESTION, "\n\n".join(STEPS))])
    assert value == pytest.approx(min(scores), abs=1e-5) and steps == pytest.approx(scores, abs=1e-5)


def test_batched_scores_equal_one_by_one(tiny_model_dir, orm_dir, token_prm_dir):
    """All candidates go through the model in padded batches; each score is what a forward of
    that sequence alone gives."""
    paths = [(QUESTION, STEPS[:k]) for k in (1, 3, 2)] + [("Q2?", ["a", "b c d e f g"])]
    for folder, search in ((tiny_model_dir, SearchConfig(prm_format="tag")),
                           (token_prm_dir, SearchConfig()), (orm_dir, SearchConfig())):
        batched = RewardModel(str(folder), replace(search, reward_batch_size=3))
        alone = RewardModel(str(folder), replace(search, reward_batch_size=1))
        for got, want in zip(batched.score_paths(paths), alone.score_paths(paths)):
            assert got == pytest.approx(want, abs=1e-5)
        assert batched.forwards == 2 and alone.forwards == 4           # ceil(4 / 3) vs 4


def test_qwen_style_token_head_reads_extra_0(token_prm_dir):
    """Qwen2.5-Math-PRM's convention (search-and-learn src/sal/models/reward_models.py:347-400):
    system, user, assistant steps joined by <extra_0> and one more at the end; P(label 1) at
    each <extra_0>. The tiny tokenizer has no <extra_0> token, so the tag is matched by text."""
    rm = RewardModel(str(token_prm_dir), SearchConfig())
    assert rm.format == "qwen" and rm.step_tag == "<extra_0>"
    [scores] = rm.score_paths([(QUESTION, STEPS)])
    ids, positions = rm._process_input(QUESTION, STEPS)
    assert len(positions) == 3
    assert scores == pytest.approx(torch.softmax(_one(rm, ids)[positions], -1)[:, 1].tolist(),
                                   abs=1e-5)


def test_reading_file_picks_the_convention(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "prm"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "ttx_reward.json").write_text(json.dumps(
        {"kind": "prm", "format": "chat", "good_token": "+", "bad_token": "-"}))
    rm = RewardModel(str(folder), SearchConfig())
    assert rm.format == "chat"


def test_bad_reward_models(tiny_model_dir, tmp_path):
    with pytest.raises(TtxError, match="no config.json"):
        RewardModel(str(tmp_path / "missing"), SearchConfig())
    from transformers import LlamaConfig, LlamaModel

    LlamaModel(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path / "b")
    with pytest.raises(TtxError, match="not a reward model"):
        RewardModel(str(tmp_path / "b"), SearchConfig())
    # a PRM that ships its own modelling code, and has no ttx class, is refused (ttx's own
    # Qwen2.5-Math-PRM and Skywork-PRM classes: tests/test_prm_models.py)
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(architectures=["InternLM2ForProcessRewardModel"],
                  auto_map={"AutoModel": "modeling_internlm2.InternLM2ForProcessRewardModel"})
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_internlm2.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(TtxError, match="never runs"):
        RewardModel(str(remote), SearchConfig())


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
        assert r["best_of_n"]["scorer"] == "reward-model"
        for t in r["traces"]:
            [(score, _)] = rm.score_texts([(r["question"], t["text"])])
            assert t["score"] == pytest.approx(score, abs=1e-5)
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
