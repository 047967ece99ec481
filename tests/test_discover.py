"""`--reward discover` and `--advantage entropic` as ttx rl plug-ins, on scripted groups (no model)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.test_discover_reference import ref_entropic_adaptive_beta
from ttx.data.countdown import generate
from ttx.errors import TtxError
from ttx.io import write_jsonl
from ttx.rl.config import RLConfig
from ttx.rl.grpo import Rollout
from ttx.rl.plugins import Group, Problem, check_options, load_advantage, load_reward


def ref_entropic_fixed(rewards, beta):
    """test-time-training/discover tinker_cookbook/rl/train.py:62-71 (adv_estimator "entropic")."""
    rewards_g = torch.tensor(rewards)
    s_safe = rewards_g - rewards_g.max(dim=-1, keepdim=True)[0]
    e = torch.exp(beta * s_safe)
    k = e.shape[0]
    z = e if k == 1 else (e.sum() - e) / (k - 1)
    return (e / (z + 1e-12) - 1.0).tolist()


def _rollouts(rewards, groups):
    return [Rollout(group=g, prompt_ids=[1], response_ids=[2], reward=r) for r, g in zip(rewards, groups)]


def test_entropic_plugin_adaptive_and_dropped():
    plugin = load_advantage("entropic")(RLConfig(input="x", output="y", advantage="entropic"))
    rewards = [0.2, 0.5, 0.9, 0.1, 0.4, 0.4, 0.4, 0.4]
    rollouts = _rollouts(rewards, [0, 0, 0, 0, 1, 1, 1, 1])
    metrics = plugin.compute(rollouts)
    beta, ref = ref_entropic_adaptive_beta(rewards[:4])
    assert [r.advantage for r in rollouts] == ref + [0.0] * 4
    assert metrics == {"groups_dropped": 1.0, "entropic_beta": beta}


def test_entropic_plugin_fixed_beta():
    plugin = load_advantage("entropic")(RLConfig(input="x", output="y", advantage="entropic",
                                                 entropic_beta=2.0))
    rewards = [0.2, 0.5, 0.9, 0.1]
    rollouts = _rollouts(rewards, [0] * 4)
    plugin.compute(rollouts)
    assert [r.advantage for r in rollouts] == ref_entropic_fixed(rewards, 2.0)


def test_options_belong_to_their_plugins():
    with pytest.raises(TtxError, match="--discover-c"):
        check_options(RLConfig(input="x", output="y", reward="gold", discover_c=2.0))
    with pytest.raises(TtxError, match="--entropic-beta"):
        check_options(RLConfig(input="x", output="y", entropic_beta=1.0))
    check_options(RLConfig(input="x", output="y", reward="discover", advantage="entropic", discover_c=2.0,
                           entropic_beta=1.0))


@pytest.fixture
def countdown(tmp_path):
    path = tmp_path / "countdown.jsonl"
    write_jsonl(path, generate(3, seed=0))
    return path


def _plugin(path, **kw):
    cfg = RLConfig(input=str(path), output="y", reward="discover", advantage="entropic", **kw)
    plugin = load_reward("discover")(cfg)
    problems = [Problem(key=str(i), id=p["id"], question=p["question"]) for i, p in
                enumerate(generate(3, seed=0))]
    plugin.check(problems)
    return plugin, problems


def _group(problem, texts, step=0):
    return Group(step=step, problem=problem, prompt_ids=[1], response_ids=[[2]] * len(texts), texts=texts,
                 answers=[None] * len(texts))


def _step(plugin, problems, step, answers):
    """One scripted step: prompt, score and end_step for each problem; returns the prompts."""
    prompts = [plugin.prompt(p, step, p.question) for p in problems]
    groups = [_group(p, answers(p), step) for p in problems]
    scored = [plugin.score(g) for g in groups]
    return prompts, scored, plugin.end_step(step, groups, scored)


def test_discover_reward_buffer_and_prompts(countdown):
    plugin, problems = _plugin(countdown)
    p0 = problems[0]
    numbers, target = plugin.tasks["0"]
    assert [numbers, target] == [generate(3, seed=0)[0][k] for k in ("numbers", "target")]
    a, b = numbers[0], numbers[1]
    texts = [f"Answer: {a} + {b}", f"Answer: {a} * {b}", "no answer", f"Answer: {a}*{a}*{a}*{a}*{a}"]
    prompts, scored, metrics = _step(plugin, [p0], 0, lambda p: texts)
    assert prompts == [p0.question]                     # the empty start state: the question itself
    d = [abs(a + b - target), abs(a * b - target)]
    assert scored[0].rewards[:2] == [1 / (1 + d[0]), 1 / (1 + d[1])] and scored[0].rewards[2:] == [0.0, 0.0]
    buf = plugin.buffers["0"]
    assert sorted(s.text for s in buf.states) == sorted(["", f"{a}+{b}", f"{a}*{b}"])
    assert buf.T == 4 and buf.n == {0: 4}
    assert metrics["samples"] == 4.0 and metrics["best_so_far"] == max(scored[0].rewards)
    # the next step starts from PUCT's pick, shown in the prompt
    [pick] = buf.select(1)
    prompts, _, _ = _step(plugin, [p0], 1, lambda p: ["Answer: 1"])
    [message] = prompts[0]                               # built as the stage builds (chat messages)
    body = message["content"]
    assert message["role"] == "user" and pick.text and body.startswith(p0.question) and pick.text in body
    assert f"closer to {target}" in body


def test_discover_state_round_trips_exactly(countdown):
    def answers(p):
        return [f"Answer: {x} + {y}" for x in range(1, 4) for y in range(4, 6)] + ["nope"]

    plugin, problems = _plugin(countdown)
    for step in range(3):
        _step(plugin, problems, step, answers)
    saved = json.loads(json.dumps(plugin.state_dict()))      # as the checkpoint's state.json
    again, _ = _plugin(countdown)
    again.load_state_dict(saved)
    assert again.state_dict() == plugin.state_dict()
    for step in range(3, 5):
        assert _step(again, problems, step, answers) == _step(plugin, problems, step, answers)
    assert again.state_dict() == plugin.state_dict()


def test_discover_refuses_records_without_numbers(tmp_path):
    path = tmp_path / "q.jsonl"
    write_jsonl(path, [{"id": "a", "question": "reach 10", "target": 10}])
    plugin = load_reward("discover")(RLConfig(input=str(path), output="y", reward="discover"))
    with pytest.raises(TtxError, match=r"q.jsonl:1: field 'numbers'"):
        plugin.check([Problem(key="0", id="a", question="reach 10")])


def test_discover_non_finite_reward_is_named(countdown, monkeypatch):
    import ttx.data.countdown as cd

    plugin, problems = _plugin(countdown)
    plugin.prompt(problems[0], 0, problems[0].question)
    monkeypatch.setattr(cd, "score_response", lambda *a: cd.Score("1", 1.0, 0.0, math.nan))
    with pytest.raises(TtxError, match="reward of problem 'countdown-0-0', response 0 is nan"):
        plugin.score(_group(problems[0], ["Answer: 1"]))


# -- end to end on a tiny model -------------------------------------------------------------------

from tests.conftest import run_cli  # noqa: E402
from tests.test_ttrl import digits_model_dir  # noqa: E402,F401  (a tiny model that answers digits)


@pytest.fixture
def digit_problems(tmp_path):
    """Problems whose numbers hold the digits the tiny model favours (4, 7), so some one-token
    answers are valid and the rewards of a group differ."""
    path = tmp_path / "cd.jsonl"
    write_jsonl(path, [
        {"id": "a", "question": "Reach 11 with 4, 7, 2, 5.", "numbers": [4, 7, 2, 5], "target": 11},
        {"id": "b", "question": "Reach 20 with 7, 4, 1, 8.", "numbers": [7, 4, 1, 8], "target": 20}])
    return path


def _cli(model, problems):
    return ["rl", "--reward", "discover", "--advantage", "entropic", "--model", model, "-i", problems,
            "--n", "8", "--n-train", "8", "--batch-size", "2", "--max-new-tokens", "1", "--lr", "1e-2",
            "--steps", "4", "--save-every", "1", "--no-progress"]


@pytest.mark.usefixtures("one_torch_thread")
def test_end_to_end_resume_is_bit_exact(digits_model_dir, digit_problems, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    common = _cli(digits_model_dir, digit_problems)
    whole = run_cli(common + ["-o", tmp_path / "whole"])
    assert whole.exit_code == 0, whole.output
    log = [json.loads(x) for x in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    steps = {}
    for row in log:                         # the last row of each rollout step
        steps[row["rollout_step"]] = row
    rows = [steps[k] for k in sorted(steps)]
    assert [r["samples"] for r in rows] == [16.0, 32.0, 48.0, 64.0]
    best = [r["best_so_far"] for r in rows]
    assert best == sorted(best) and best[-1] > 0 and all(r["entropic_beta"] > 0 for r in rows)
    manifest = json.loads((tmp_path / "whole" / "ttx_manifest.json").read_text())
    buffers = manifest["summary"]["plugin_state"]["reward"]["buffers"]
    assert set(buffers) == {"0", "1"} and all(len(b["states"]) > 1 for b in buffers.values())
    recs = [json.loads(x) for x in (tmp_path / "whole" / "rollouts.jsonl").read_text().splitlines()]
    assert any(r["start"]["text"] for r in recs)       # later groups start from an archived answer

    first = run_cli(common + ["-o", tmp_path / "cut", "--stop-after", "2"])
    assert first.exit_code == 0 and "continue with --resume" in first.output
    refused = run_cli(common + ["-o", tmp_path / "cut", "--resume", "--discover-c", "2"])
    assert refused.exit_code == 2 and "different --discover-c" in refused.output
    again = run_cli(common + ["-o", tmp_path / "cut", "--resume"])
    assert again.exit_code == 0, again.output
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("rollouts.jsonl", "train_log.jsonl"):
        assert (tmp_path / "whole" / name).read_text() == (tmp_path / "cut" / name).read_text()
    assert json.loads((tmp_path / "cut" / "ttx_manifest.json").read_text())["summary"]["plugin_state"] == \
        manifest["summary"]["plugin_state"]


def test_bad_input_is_refused_before_a_model_loads(tmp_path):
    path = tmp_path / "q.jsonl"
    write_jsonl(path, [{"id": "a", "question": "reach 10", "numbers": [1, 2]}])
    result = run_cli(["rl", "--reward", "discover", "--model", tmp_path / "no-such-model", "-i", path,
                      "-o", tmp_path / "out"])
    assert result.exit_code == 2 and "q.jsonl:1: field 'target'" in result.output


def test_recipe_loads_as_option_defaults():
    import yaml

    from tests.conftest import REPO
    from ttx.cli import cli
    from ttx.cli.options import option_names

    recipe = REPO / "recipes" / "rl-discover.yaml"
    assert "ttx rl --config recipes/rl-discover.yaml" in recipe.read_text().splitlines()[1]
    command = cli.get_command(None, "rl")
    names = option_names(command)
    data = yaml.safe_load(recipe.read_text())
    ctx = command.make_context("rl", ["--config", str(recipe), "-i", "x.jsonl"], resilient_parsing=True)
    for key, value in data.items():
        assert ctx.default_map[names[key]] == value
