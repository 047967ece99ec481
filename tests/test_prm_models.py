"""Qwen2.5-Math-PRM and Skywork-o1-Open-PRM through ttx's own classes (ttx.prm_models), against
their references run side by side on tiny random checkpoints saved in the references' formats.

The reference code below is test-only: it is what ttx is compared with, not shipped code.
- Qwen2.5-Math-PRM: the model folder's modeling_qwen2_rm.py `Qwen2ForProcessRewardModel` (the
  same head as vllm-project/vllm@002b4cf vllm/model_executor/models/qwen2_rm.py:57-67 `score`,
  83 `logits = self.score(hidden_states)`, 110-111 `num_labels = 2`) and the model card's quick
  start (huggingface.co/Qwen/Qwen2.5-Math-PRM-7B: messages, `<extra_0>` mask, make_step_rewards).
- Skywork-o1-Open-PRM: SkyworkAI/skywork-o1-prm-inference@719b56b model_utils/prm_model.py
  (ValueHead 20-57, PRM_MODEL.forward 114-171, post_init 208-217), model_utils/modeling_base.py
  (from_pretrained 112-275: AutoModelForCausalLM, then the v_head.* tensors of model.safetensors)
  and model_utils/io_utils.py (prepare_input 4-23, prepare_batch_input_for_model 25-41,
  derive_step_rewards 43-50), driven as its README's "huggingface inference" does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.errors import TtxError
from ttx.tts.reward import RewardModel
from ttx.tts.search import SearchConfig

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"
STEPS = ["Tom starts with 3 apples.", "He buys 5 more, so 3 + 5 = 8.", "The answer is \\boxed{8}."]
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _qwen2_config(vocab_size: int, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, **extra)


def _spread(module: nn.Module, seed: int, scale: float) -> None:
    """Head weights large enough that step scores spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _edit_config(folder, **fields) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config, indent=2))


# --------------------------------------------------------------- Qwen2.5-Math-PRM: the reference
def _reference_qwen_class():
    from transformers import Qwen2Model, Qwen2PreTrainedModel

    class RefQwen2ForProcessRewardModel(Qwen2PreTrainedModel):
        """modeling_qwen2_rm.py's class (its score head and forward; loss and extras left out)."""

        def __init__(self, config):
            super().__init__(config)
            self.num_labels = config.num_labels
            self.model = Qwen2Model(config)
            self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size),
                                       nn.ReLU(), nn.Linear(config.hidden_size, self.num_labels))
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None):
            outputs = self.model(input_ids, attention_mask=attention_mask)
            hidden_states = outputs[0]
            return (self.score(hidden_states),)

    return RefQwen2ForProcessRewardModel


def make_step_rewards(logits, token_masks):
    """The Qwen2.5-Math-PRM model card's make_step_rewards."""
    probabilities = F.softmax(logits, dim=-1)
    probabilities = probabilities * token_masks.unsqueeze(-1)
    all_scores_res = []
    for i in range(probabilities.size(0)):
        sample = probabilities[i]
        positive_probs = sample[sample != 0].view(-1, 2)[:, 1]
        all_scores_res.append(positive_probs.cpu().tolist())
    return all_scores_res


def qwen_card_scores(model, tokenizer, query, response):
    """The model card's quick start on one (query, steps)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query},
                {"role": "assistant", "content": "<extra_0>".join(response) + "<extra_0>"}]
    conversation_str = tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=False)
    input_ids = tokenizer.encode(conversation_str, return_tensors="pt")
    with torch.no_grad():
        outputs = model(input_ids=input_ids)
    step_sep_id = tokenizer.encode("<extra_0>")[0]
    token_masks = input_ids == step_sep_id
    return make_step_rewards(outputs[0], token_masks)[0]


@pytest.fixture(scope="module")
def qwen_prm_dir(tmp_path_factory, default_model_dir):
    """A tiny random checkpoint in Qwen2.5-Math-PRM's format: a qwen2 config naming
    Qwen2ForProcessRewardModel behind auto_map (with the folder's code beside it, which must
    never run), score.0 / score.2 head tensors, a tokenizer whose <extra_0> is one token."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("qwen-prm")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    torch.manual_seed(3)
    model = _reference_qwen_class()(_qwen2_config(len(tokenizer), num_labels=2))
    _spread(model.score, 3, 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _edit_config(folder, architectures=["Qwen2ForProcessRewardModel"],
                 auto_map={"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                           "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"})
    for name in ("modeling_qwen2_rm.py", "configuration_qwen2_rm.py"):
        (folder / name).write_text("raise SystemExit('remote code ran')\n")
    return folder


@pytest.fixture(scope="module")
def qwen_reference(qwen_prm_dir):
    from transformers import AutoTokenizer

    model = _reference_qwen_class().from_pretrained(qwen_prm_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(qwen_prm_dir)


def test_qwen_prm_loads_natively_and_scores_as_its_model_card(qwen_prm_dir, qwen_reference):
    from ttx.prm_models import Qwen2ForProcessRewardModel

    rm = RewardModel(str(qwen_prm_dir), SearchConfig(reward_model=str(qwen_prm_dir)))
    assert isinstance(rm.model, Qwen2ForProcessRewardModel)
    assert (rm.kind, rm.format, rm.step_tag) == ("prm", "qwen", "<extra_0>")
    paths = [(QUESTION, STEPS), (QUESTION, STEPS[:1]), ("What is 2 + 2?", ["2 + 2 = 4.", "4"])]
    got = rm.score_paths(paths)                       # one right-padded batch
    assert rm.forwards == 1
    for (q, steps), scores in zip(paths, got):
        want = qwen_card_scores(*qwen_reference, q, steps)
        assert len(want) == len(steps)
        assert scores == pytest.approx(want, abs=1e-5)
    assert max(got[0]) - min(got[0]) > 1e-3          # the head is not flat: the check can fail
    # a whole solution: split at blank lines, aggregated by --agg (last)
    [(score, steps)] = rm.score_texts([(QUESTION, "\n\n".join(STEPS))])
    assert steps == pytest.approx(got[0], abs=1e-6) and score == steps[-1]


# --------------------------------------------------------------- Skywork-o1-Open-PRM: the reference
class ValueHead(nn.Module):
    """prm_model.py:20-57 (config without summary_dropout_prob: dropout 0.1, off in eval)."""

    def __init__(self, config, **kwargs):
        super().__init__()
        summary_dropout_prob = getattr(config, "summary_dropout_prob",
                                       kwargs.pop("summary_dropout_prob", 0.1))
        self.dropout = nn.Dropout(summary_dropout_prob) if summary_dropout_prob else nn.Identity()
        self.summary = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states):
        output = self.dropout(hidden_states)
        if output.dtype != self.summary.weight.dtype:
            output = output.to(self.summary.weight.dtype)
        return self.summary(output)


class RefPrmModel(nn.Module):
    """PRM_MODEL: from_pretrained (modeling_base.py:112-275, post_init prm_model.py:208-217) and
    forward (prm_model.py:140-171, return_probs=True)."""

    def __init__(self, folder):
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        super().__init__()
        self.pretrained_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        self.v_head = ValueHead(self.pretrained_model.config)
        state_dict = load_file(str(folder / "model.safetensors"))
        for k in list(state_dict.keys()):
            if "v_head." in k:
                state_dict[k.replace("v_head.", "")] = state_dict.pop(k)
        self.v_head.load_state_dict(state_dict, strict=False)

    def forward(self, input_ids=None, attention_mask=None, return_probs=False):
        base_model_output = self.pretrained_model(input_ids=input_ids,
                                                  attention_mask=attention_mask,
                                                  output_hidden_states=True)
        last_hidden_state = base_model_output.hidden_states[-1]
        value = self.v_head(last_hidden_state).squeeze(-1)
        if return_probs:
            value = torch.nn.functional.sigmoid(value)
        return base_model_output.logits, base_model_output.loss, value


def prepare_input(problem, response, tokenizer, step_token):
    """io_utils.py:4-23."""
    prompt_ids = tokenizer.encode(tokenizer.bos_token + problem + "\n")
    response_ids = []
    steps = []
    reward_flags = [0] * len(prompt_ids)
    step_token_id = tokenizer.encode(step_token)[-1]
    for step in response.split(step_token):
        step_ids = tokenizer.encode(step) if step != "" else []
        step_ids += [step_token_id]
        step = step + step_token
        flag = [0] * len(step_ids)
        flag[-1] = 1
        response_ids.extend(step_ids)
        reward_flags.extend(flag)
        steps.append(step)
    return prompt_ids + response_ids, steps, reward_flags


def prepare_batch_input_for_model(input_ids, reward_flags, pad_token_id):
    """io_utils.py:25-41."""
    pad = torch.nn.utils.rnn.pad_sequence
    padded_input_ids = pad([torch.LongTensor(ids) for ids in input_ids], batch_first=True,
                           padding_value=pad_token_id)
    padded_attention_mask = pad([torch.LongTensor([1] * len(ids)) for ids in input_ids],
                                batch_first=True, padding_value=0)
    padded_reward_flags = pad([torch.LongTensor(f) for f in reward_flags], batch_first=True,
                              padding_value=0)
    return padded_input_ids, padded_attention_mask, padded_reward_flags


def derive_step_rewards(rewards, reward_flags):
    """io_utils.py:43-50."""
    batch_step_rewards = []
    for i in range(rewards.shape[0]):
        rewards_indices = torch.nonzero(reward_flags[i] == 1).view(-1)
        batch_step_rewards.append([rewards[i][j].item() for j in rewards_indices])
    return batch_step_rewards


def skywork_readme_scores(model, tokenizer, datas):
    """The README's "huggingface inference" on [(problem, response)], step_token "\\n"."""
    processed = [prepare_input(p, r, tokenizer=tokenizer, step_token="\n") for p, r in datas]
    input_ids, _, reward_flags = zip(*processed)
    input_ids, attention_mask, reward_flags = prepare_batch_input_for_model(
        input_ids, reward_flags, tokenizer.pad_token_id)
    with torch.no_grad():
        _, _, rewards = model(input_ids=input_ids, attention_mask=attention_mask,
                              return_probs=True)
    return derive_step_rewards(rewards, reward_flags)


@pytest.fixture(scope="module")
def skywork_prm_dir(tmp_path_factory, default_model_dir):
    """A tiny random checkpoint in Skywork-o1-Open-PRM's format: a qwen2 causal LM config naming
    Qwen2ForPrmModel, its weights (lm_head included) and v_head.summary.{weight,bias} in one
    model.safetensors (PRM_MODEL.state_dict, prm_model.py:187-201), a tokenizer with a BOS."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("skywork-prm")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer.bos_token = "<|endoftext|>"
    config = _qwen2_config(len(tokenizer), tie_word_embeddings=False,
                           pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(5)
    Qwen2ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    head = nn.Linear(config.hidden_size, 1)
    _spread(head, 5, 0.3)
    weights = load_file(str(folder / "model.safetensors"))
    assert "lm_head.weight" in weights
    weights.update({"v_head.summary.weight": head.weight.detach().clone(),
                    "v_head.summary.bias": head.bias.detach().clone()})
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _edit_config(folder, architectures=["Qwen2ForPrmModel"])
    return folder


@pytest.fixture(scope="module")
def skywork_reference(skywork_prm_dir):
    from transformers import AutoTokenizer

    return RefPrmModel(skywork_prm_dir).eval(), AutoTokenizer.from_pretrained(skywork_prm_dir)


def test_skywork_prm_loads_natively_and_scores_as_its_readme(skywork_prm_dir,
                                                             skywork_reference):
    from ttx.prm_models import Qwen2ForPrmModel

    rm = RewardModel(str(skywork_prm_dir), SearchConfig(reward_model=str(skywork_prm_dir)))
    assert isinstance(rm.model, Qwen2ForPrmModel)
    assert (rm.kind, rm.format, rm.step_tag) == ("prm", "skywork", "\n")
    paths = [(QUESTION, STEPS), (QUESTION, STEPS[:2]), ("What is 2 + 2?", ["2 + 2 = 4.", "4"])]
    got = rm.score_paths(paths)
    assert rm.forwards == 1
    # steps one per line: every reference step reward, in one reference batch
    want = skywork_readme_scores(*skywork_reference, [(q, "\n".join(s)) for q, s in paths])
    for scores, ref, (_, steps) in zip(got, want, paths):
        assert len(ref) == len(steps)
        assert scores == pytest.approx(ref, abs=1e-5)
    assert max(got[0]) - min(got[0]) > 1e-3


def test_skywork_multi_line_step_is_read_at_its_last_line(skywork_prm_dir, skywork_reference):
    """A ttx step of several lines is several steps to the model (io_utils.py:10 splits at every
    "\\n"); ttx's score of the step is the reference's reward at its last line."""
    steps = ["Tom starts with 3 apples.\nHe buys 5 more.", "3 + 5 = 8.", "So:\n\\boxed{8}"]
    rm = RewardModel(str(skywork_prm_dir), SearchConfig(reward_model=str(skywork_prm_dir)))
    [got] = rm.score_paths([(QUESTION, steps)])
    [ref] = skywork_readme_scores(*skywork_reference, [(QUESTION, "\n".join(steps))])
    assert len(ref) == 5
    assert got == pytest.approx([ref[1], ref[2], ref[4]], abs=1e-5)
    # search-and-learn's pieces (--prm-input): an open path's empty last piece is a lone step
    # token, as the reference gives an empty line (io_utils.py:11-15)
    sal = RewardModel(str(skywork_prm_dir), SearchConfig(reward_model=str(skywork_prm_dir),
                                                         prm_input="search-and-learn"))
    [(_, got)] = sal.score_texts([(QUESTION, "\n\n".join(STEPS[:2]) + "\n\n")])
    [ref] = skywork_readme_scores(*skywork_reference, [(QUESTION, "\n".join(STEPS[:2]) + "\n")])
    assert len(ref) == 3 and got == pytest.approx(ref, abs=1e-5)


def test_batched_native_scores_equal_one_by_one(qwen_prm_dir, skywork_prm_dir):
    paths = [(QUESTION, STEPS[:k]) for k in (1, 3, 2)] + [("Q2?", ["a", "b c d e f g"])]
    for folder in (qwen_prm_dir, skywork_prm_dir):
        search = SearchConfig(reward_model=str(folder))
        batched = RewardModel(str(folder), replace(search, reward_batch_size=3))
        alone = RewardModel(str(folder), replace(search, reward_batch_size=1))
        for got, want in zip(batched.score_paths(paths), alone.score_paths(paths)):
            assert got == pytest.approx(want, abs=1e-5)


def test_unknown_or_mismatched_prm_checkpoints_are_refused(tmp_path, qwen_prm_dir,
                                                           skywork_prm_dir, tiny_model_dir):
    # a known name over another family's config
    llama = tmp_path / "llama"
    shutil.copytree(tiny_model_dir, llama)
    _edit_config(llama, architectures=["Qwen2ForPrmModel"])
    with pytest.raises(TtxError, match="Qwen2ForPrmModel expects model_type qwen2, got 'llama'"):
        RewardModel(str(llama), SearchConfig())
    # Skywork's weights under Qwen's name: the score head is missing, named, not left random
    wrong = tmp_path / "wrong"
    shutil.copytree(skywork_prm_dir, wrong)
    _edit_config(wrong, architectures=["Qwen2ForProcessRewardModel"])
    with pytest.raises(TtxError, match=r"not a Qwen2ForProcessRewardModel checkpoint: no "
                                       r"score\.0\.bias"):
        RewardModel(str(wrong), SearchConfig())
    # another architecture behind auto_map stays refused; its code never runs
    remote = tmp_path / "remote"
    shutil.copytree(qwen_prm_dir, remote)
    _edit_config(remote, architectures=["InternLM2ForRewardModel"],
                 auto_map={"AutoModel": "modeling_qwen2_rm.InternLM2ForRewardModel"})
    with pytest.raises(TtxError, match="never runs"):
        RewardModel(str(remote), SearchConfig())
    # a Skywork checkpoint's tokenizer without a BOS: the reference's input cannot be built
    nobos = tmp_path / "nobos"
    shutil.copytree(skywork_prm_dir, nobos)
    tok = json.loads((nobos / "tokenizer_config.json").read_text())
    tok["bos_token"] = None
    (nobos / "tokenizer_config.json").write_text(json.dumps(tok))
    with pytest.raises(TtxError, match="bos_token"):
        RewardModel(str(nobos), SearchConfig())


def test_reading_file_and_cli_pick_skywork(tmp_path, tiny_model_dir, skywork_prm_dir,
                                           qwen_prm_dir):
    folder = tmp_path / "prm"
    shutil.copytree(skywork_prm_dir, folder)
    (folder / "ttx_reward.json").write_text(json.dumps({"kind": "prm", "format": "skywork"}))
    assert RewardModel(str(folder), SearchConfig()).format == "skywork"
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, 6)))
    beam = ["--strategy", "beam", "--step-tokens", "3", "--max-steps", "2"]
    for prm, style in ((skywork_prm_dir, beam), (qwen_prm_dir, ["--strategy", "best-of-n"])):
        out = tmp_path / "out.jsonl"
        result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out, *style,
                          "--n", "4", "--temperature", "1.0", "--max-new-tokens", "8",
                          "--reward-model", prm, "--no-progress"])
        assert result.exit_code == 0, result.output
        rm = RewardModel(str(prm), SearchConfig(reward_model=str(prm)))
        for r in map(json.loads, out.read_text().splitlines()):
            for t in r["traces"]:
                if style is beam:
                    assert len(t["step_scores"]) == t["steps"]
                    assert all(0 < s < 1 for s in t["step_scores"])
                else:
                    [(score, _)] = rm.score_texts([(r["question"], t["text"])])
                    assert t["score"] == pytest.approx(score, abs=1e-5)
